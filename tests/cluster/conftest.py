"""Fixtures for the cluster tests: one real PostgreSQL 15 per session, a database per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

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
