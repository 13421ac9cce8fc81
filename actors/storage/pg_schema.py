"""PostgreSQL schema of the cluster store: the SQLite store's task tables, plus the fencing
record of every accepted request (the shard and epoch it committed under, in commit order).

The columns match actors/storage/schema.py so that store_ops' SQL runs unchanged. The lease
table itself belongs to runtime/cluster/pg_leases.py and is created there.
"""

from __future__ import annotations

from typing import Any

import psycopg

SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    task_id text PRIMARY KEY,
    workspace text NOT NULL,
    title text NOT NULL,
    description text NOT NULL,
    network_channel text NOT NULL DEFAULT '',
    status text NOT NULL DEFAULT 'open',
    priority integer,
    metadata text NOT NULL DEFAULT '{}',
    version integer NOT NULL DEFAULT 1,
    locked integer NOT NULL DEFAULT 0,
    cancel_reason text NOT NULL DEFAULT '',
    created_at double precision NOT NULL,
    updated_at double precision NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_workspace ON tasks (workspace);
CREATE TABLE IF NOT EXISTS runs (
    run_id text PRIMARY KEY,
    task_id text NOT NULL REFERENCES tasks(task_id),
    workspace text NOT NULL,
    status text NOT NULL DEFAULT 'queued',
    idempotency_key text NOT NULL,
    peer_id text NOT NULL,
    channel text NOT NULL,
    created_at double precision NOT NULL,
    UNIQUE (workspace, channel, peer_id, idempotency_key)
);
-- shard and epoch default to the fenced transaction's settings (pg_store.apply_fenced):
-- an insert outside a fenced transaction fails, and every accepted request names the
-- holding it committed under. seq is commit order within a shard, because the shard's
-- writes are serialized by its lease row lock.
CREATE TABLE IF NOT EXISTS accepted_requests (
    workspace text NOT NULL,
    channel text NOT NULL,
    peer_id text NOT NULL,
    request_id text NOT NULL,
    action text NOT NULL,
    task_id text,
    run_id text,
    shard integer NOT NULL DEFAULT current_setting('task_ingress.shard')::integer,
    epoch bigint NOT NULL DEFAULT current_setting('task_ingress.epoch')::bigint,
    seq bigserial NOT NULL,
    PRIMARY KEY (workspace, channel, peer_id, request_id)
);
"""


def ensure_store_schema(conn: psycopg.Connection[Any]) -> None:
    """Create the store tables if missing (several daemons may race: an advisory lock)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(7316002)")
        conn.execute(SCHEMA)
