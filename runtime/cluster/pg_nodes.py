"""Which daemons are alive (for fair shares) and which shards are free — PostgreSQL's clock.

Each cluster daemon upserts its row in `cluster_nodes` every keeper round; a row seen within
the lease TTL is a live daemon. A clean shutdown deletes its row; a killed daemon's row
simply ages out. This only decides how many shards each daemon *tries* to hold: safety never
depends on it (the lease and its epoch do that), so a wrong count costs balance, not
correctness.
"""

from __future__ import annotations

from typing import Any

import psycopg

SCHEMA = """
CREATE TABLE IF NOT EXISTS cluster_nodes (
    node text PRIMARY KEY,
    seen_at timestamptz NOT NULL,
    started_at timestamptz NOT NULL
);
"""


def ensure_nodes_schema(conn: psycopg.Connection[Any]) -> None:
    """Create the heartbeat table if missing (an advisory lock orders racing daemons)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(7316003)")
        conn.execute(SCHEMA)


def heartbeat(conn: psycopg.Connection[Any], node: str, ttl: float) -> dict[str, int]:
    """Record that `node` is alive; every live daemon (seen within `ttl`, itself included)
    with the number of shards it holds now."""
    conn.execute(
        "INSERT INTO cluster_nodes (node, seen_at, started_at) VALUES (%s, now(), now()) "
        "ON CONFLICT (node) DO UPDATE SET seen_at = now()", (node,))
    rows = conn.execute(
        "SELECT n.node, count(l.shard) FROM cluster_nodes n LEFT JOIN shard_leases l "
        "ON l.owner = n.node AND l.expires_at > now() "
        "WHERE n.seen_at > now() - make_interval(secs => %s) OR n.node = %s "
        "GROUP BY n.node", (ttl, node)).fetchall()
    return {str(n): int(c) for n, c in rows}


def leave(conn: psycopg.Connection[Any], node: str) -> None:
    """Forget `node` (a clean shutdown): the others' fair shares grow at once."""
    conn.execute("DELETE FROM cluster_nodes WHERE node = %s", (node,))


def free_shards(conn: psycopg.Connection[Any]) -> list[int]:
    """Shards nobody holds: free, or whose lease has expired."""
    rows = conn.execute(
        "SELECT shard FROM shard_leases WHERE owner = '' OR expires_at <= now() "
        "ORDER BY shard").fetchall()
    return [int(r[0]) for r in rows]
