"""The test PostgreSQL itself: it answers on loopback and each test gets its own database."""

from __future__ import annotations

import psycopg

from tests.cluster.pg_support import PostgresServer


def test_each_test_gets_an_empty_database_on_a_loopback_server(
    postgres: PostgresServer, database: str
) -> None:
    assert "127.0.0.1" in database
    with psycopg.connect(database) as conn:
        version = conn.execute("SHOW server_version").fetchone()
        tables = conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
    assert version is not None and version[0].startswith("15")
    assert tables == (0,)
