"""Fixtures for the cluster tests: one real PostgreSQL 15 per session, a database per test."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from task_ingress.runtime.cluster.nats_cluster import NatsCluster
from task_ingress.runtime.nats.identity import generate_key, save_key

from tests.cluster.pg_support import PostgresServer, find_bin_dir


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server on loopback for the whole session, always stopped and removed."""
    pytest.importorskip("psycopg", reason="psycopg (the `cluster` extra) is not installed")
    bin_dir = find_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL 15 binaries not found (apt-get install postgresql-15)")
    server = PostgresServer(bin_dir)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def database(postgres: PostgresServer) -> str:
    """The URL of a fresh, empty database in the session's server."""
    return postgres.new_database()


@pytest.fixture
def nats_cluster() -> Iterator[NatsCluster]:
    """Three routed nats-servers on loopback (one token), always stopped."""
    cluster = NatsCluster(3)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture
def cluster_dir(tmp_path: Path) -> Path:
    """A directory with the cluster's shared key (its AGH identity), its audit key (hex,
    handed to every daemon in TASK_INGRESS_AUDIT_KEY) and trust file."""
    save_key(str(tmp_path / "cluster.key"), generate_key())
    (tmp_path / "audit.key").write_text(secrets.token_hex(32))
    return tmp_path
