"""PostgreSQL schema of the cluster store: the SQLite store's task tables, plus the fencing
record of every accepted request (the shard and epoch it committed under, in commit order),
the outbox, and the audit log as one keyed chain per shard.

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
-- An accepted write's audit fields (msgpack), written in the write's fenced transaction
-- and deleted in the fenced transaction that chains them: a crash between the two leaves
-- the row for the shard's next holder to chain (actors/pg_audit.py). Ids count per shard
-- (outbox_seq) and are never reused while a verdict may still name one.
CREATE TABLE IF NOT EXISTS outbox (
    shard integer NOT NULL DEFAULT current_setting('task_ingress.shard')::integer,
    id bigint NOT NULL,
    record bytea NOT NULL,
    PRIMARY KEY (shard, id)
);
CREATE TABLE IF NOT EXISTS outbox_seq (
    shard integer PRIMARY KEY,
    last bigint NOT NULL DEFAULT 0
);
-- One keyed hash chain per shard (SPEC 6): the SQLite store's record form and HMAC, seq
-- per shard. Only the shard's lease holder appends, under its fence.
CREATE TABLE IF NOT EXISTS audit (
    shard integer NOT NULL,
    seq bigint NOT NULL,
    at double precision NOT NULL,
    workspace text NOT NULL,
    channel text NOT NULL,
    peer_id text NOT NULL,
    actor text NOT NULL,
    request_id text NOT NULL,
    action text NOT NULL,
    outcome text NOT NULL,
    reason text,
    task_id text,
    run_id text,
    payload_size integer NOT NULL,
    replay boolean NOT NULL DEFAULT false,
    prev_hash text NOT NULL,
    hash text NOT NULL,
    trust text,
    PRIMARY KEY (shard, seq)
);
-- Each shard chain's id (random; its genesis hash is derived from it) and its head, with
-- an HMAC over (chain id, seq, head, at) under the audit key: the checkpoint of the file
-- store, rewritten in every append's transaction, so it always names the head exactly.
CREATE TABLE IF NOT EXISTS audit_chains (
    shard integer PRIMARY KEY,
    chain_id text NOT NULL,
    seq bigint NOT NULL,
    hash text NOT NULL,
    at double precision NOT NULL,
    mac text NOT NULL
);
-- The roster (actors/storage/pg_roster.py): written once, with the key, when the chains
-- are set up: every shard's chain id in shard order, MAC'd under the audit key, so a
-- shard whose chain was deleted whole (head row and all) is missed, not taken as unwritten.
CREATE TABLE IF NOT EXISTS audit_roster (
    id integer PRIMARY KEY CHECK (id = 1),
    chain_ids text[] NOT NULL,
    at double precision NOT NULL,
    mac text NOT NULL
);
"""


def ensure_store_schema(conn: psycopg.Connection[Any]) -> None:
    """Create the store tables if missing (several daemons may race: an advisory lock)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(7316002)")
        conn.execute(SCHEMA)


def configured_shards(conn: psycopg.Connection[Any]) -> int | None:
    """The cluster's shard count (`cluster_config`, set up by the lease table's
    ensure_schema), or None when the database is not set up for cluster mode."""
    exists = conn.execute("SELECT to_regclass('cluster_config') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return None
    row = conn.execute("SELECT value FROM cluster_config WHERE key = 'shards'").fetchone()
    return int(row[0]) if row else None
