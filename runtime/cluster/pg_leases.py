"""Shard leases in PostgreSQL: acquire, renew, release and status, each one statement.

One row per shard in `shard_leases`. Expiry is judged by PostgreSQL's clock alone
(`now()`), so daemons' clocks never compare with each other. The epoch only ever grows:
every acquire adds one, and a release keeps it, so an epoch names one holding exactly once
(the fencing token the store checks, actors/storage/pg_store.py).

Functions take a psycopg connection in autocommit mode; each call is its own transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from task_ingress.runtime.cluster.lease import Lease

SCHEMA = """
CREATE TABLE IF NOT EXISTS cluster_config (
    key text PRIMARY KEY,
    value text NOT NULL
);
CREATE TABLE IF NOT EXISTS shard_leases (
    shard integer PRIMARY KEY,
    owner text NOT NULL DEFAULT '',
    epoch bigint NOT NULL DEFAULT 0,
    expires_at timestamptz NOT NULL DEFAULT '-infinity',
    acquired_at timestamptz,
    renewed_at timestamptz
);
-- Every holding ever granted, for `cluster status` and the history checker: which owner
-- held which epoch of which shard, from when (clock_timestamp: after any lock wait).
CREATE TABLE IF NOT EXISTS lease_history (
    shard integer NOT NULL,
    epoch bigint NOT NULL,
    owner text NOT NULL,
    acquired_at timestamptz NOT NULL,
    PRIMARY KEY (shard, epoch)
);
"""


class ShardCountMismatch(RuntimeError):
    """The database was set up for another number of shards: workspaces would move."""


def ensure_schema(conn: psycopg.Connection[Any], shards: int) -> None:
    """Create the lease table with one row per shard; refuse another shard count.

    Safe to run from several daemons at once: an advisory lock orders them."""
    if shards < 1:
        raise ValueError(f"shards must be at least 1, not {shards}")
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(7316001)")
        conn.execute(SCHEMA)
        conn.execute(
            "INSERT INTO cluster_config (key, value) VALUES ('shards', %s) "
            "ON CONFLICT (key) DO NOTHING", (str(shards),))
        row = conn.execute("SELECT value FROM cluster_config WHERE key = 'shards'").fetchone()
        if row is None or int(row[0]) != shards:
            raise ShardCountMismatch(
                f"the database is set up for {row[0] if row else '?'} shards, not {shards}")
        conn.execute(
            "INSERT INTO shard_leases (shard) SELECT generate_series(0, %s - 1) "
            "ON CONFLICT (shard) DO NOTHING", (shards,))


def shard_count(conn: psycopg.Connection[Any]) -> int | None:
    """The configured number of shards, or None when the database is not set up."""
    exists = conn.execute("SELECT to_regclass('cluster_config') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return None
    row = conn.execute("SELECT value FROM cluster_config WHERE key = 'shards'").fetchone()
    return int(row[0]) if row else None


def acquire(conn: psycopg.Connection[Any], shard: int, owner: str, ttl: float,
            sent_at: float) -> Lease | None:
    """Take `shard` for `owner` if it is free or expired, with the next epoch; else None.

    `sent_at` is the caller's monotonic time taken before this call (see lease.py)."""
    row = conn.execute(
        "WITH taken AS (UPDATE shard_leases SET owner = %s, epoch = epoch + 1, "
        "expires_at = now() + make_interval(secs => %s), acquired_at = clock_timestamp(), "
        "renewed_at = now() "
        "WHERE shard = %s AND (owner = '' OR expires_at <= now()) "
        "RETURNING shard, epoch, owner, acquired_at) "
        "INSERT INTO lease_history SELECT shard, epoch, owner, acquired_at FROM taken "
        "RETURNING epoch",
        (owner, ttl, shard)).fetchone()
    return Lease(shard=shard, owner=owner, epoch=int(row[0]), renewed_at=sent_at) if row else None


def renew(conn: psycopg.Connection[Any], lease: Lease, ttl: float,
          sent_at: float) -> Lease | None:
    """Extend `lease` if its holder still holds it under the same epoch and it has not
    expired; the renewed lease, or None when it is lost."""
    row = conn.execute(
        "UPDATE shard_leases SET expires_at = now() + make_interval(secs => %s), "
        "renewed_at = now() "
        "WHERE shard = %s AND owner = %s AND epoch = %s AND expires_at > now() RETURNING epoch",
        (ttl, lease.shard, lease.owner, lease.epoch)).fetchone()
    return Lease(lease.shard, lease.owner, lease.epoch, sent_at) if row else None


def release(conn: psycopg.Connection[Any], lease: Lease) -> bool:
    """Give `lease` up at once (a clean shutdown), keeping its epoch; True if it was held."""
    row = conn.execute(
        "UPDATE shard_leases SET owner = '', expires_at = '-infinity' "
        "WHERE shard = %s AND owner = %s AND epoch = %s RETURNING shard",
        (lease.shard, lease.owner, lease.epoch)).fetchone()
    return row is not None


@dataclass(frozen=True)
class ShardStatus:
    """One shard as `cluster status` shows it; ages in seconds by the database's clock."""

    shard: int
    owner: str | None
    """None when the shard is free or its lease has expired."""
    epoch: int
    held_for: float | None
    """Seconds since the current owner acquired it."""
    renewed_ago: float | None
    """Seconds since the last renew."""
    expires_in: float | None
    """Seconds until the lease expires (None when not held)."""
    checked_at: datetime


def status(conn: psycopg.Connection[Any]) -> list[ShardStatus]:
    """Every shard's lease, ordered by shard."""
    rows = conn.execute(
        "SELECT shard, owner, epoch, expires_at > now() AND owner <> '', "
        "extract(epoch FROM now() - acquired_at), extract(epoch FROM now() - renewed_at), "
        "CASE WHEN isfinite(expires_at) THEN extract(epoch FROM expires_at - now()) END, now() "
        "FROM shard_leases ORDER BY shard").fetchall()
    out = []
    for shard, owner, epoch, held, held_for, renewed_ago, expires_in, now in rows:
        out.append(ShardStatus(
            shard=int(shard), owner=owner if held else None, epoch=int(epoch),
            held_for=float(held_for) if held and held_for is not None else None,
            renewed_ago=float(renewed_ago) if held and renewed_ago is not None else None,
            expires_in=float(expires_in) if held else None, checked_at=now))
    return out
