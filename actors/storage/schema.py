"""SQLite schema of the store file, versioned with `PRAGMA user_version`.

Tasks, runs, accepted requests and the outbox belong to TaskStore; the audit table to
Audit. Both live in one file so that `audit verify --store PATH` sees everything.
"""

from __future__ import annotations

import json
import os
import sqlite3
from typing import Any

import msgpack

MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE IF NOT EXISTS tasks (
        task_id TEXT PRIMARY KEY,
        workspace TEXT NOT NULL,
        title TEXT NOT NULL,
        description TEXT NOT NULL,
        network_channel TEXT NOT NULL DEFAULT '',
        status TEXT NOT NULL DEFAULT 'open',
        priority INTEGER,
        metadata TEXT NOT NULL DEFAULT '{}',
        version INTEGER NOT NULL DEFAULT 1,
        locked INTEGER NOT NULL DEFAULT 0,
        cancel_reason TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE IF NOT EXISTS runs (
        run_id TEXT PRIMARY KEY,
        task_id TEXT NOT NULL REFERENCES tasks(task_id),
        workspace TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'queued',
        idempotency_key TEXT NOT NULL,
        peer_id TEXT NOT NULL,
        channel TEXT NOT NULL,
        created_at REAL NOT NULL,
        UNIQUE (workspace, channel, peer_id, idempotency_key)
    );
    CREATE TABLE IF NOT EXISTS accepted_requests (
        workspace TEXT NOT NULL,
        channel TEXT NOT NULL,
        peer_id TEXT NOT NULL,
        request_id TEXT NOT NULL,
        action TEXT NOT NULL,
        task_id TEXT,
        run_id TEXT,
        PRIMARY KEY (workspace, channel, peer_id, request_id)
    );
    CREATE TABLE IF NOT EXISTS outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        record TEXT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS audit (
        seq INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        workspace TEXT NOT NULL,
        channel TEXT NOT NULL,
        peer_id TEXT NOT NULL,
        actor TEXT NOT NULL,
        request_id TEXT NOT NULL,
        action TEXT NOT NULL,
        outcome TEXT NOT NULL,
        reason TEXT,
        task_id TEXT,
        run_id TEXT,
        payload_size INTEGER NOT NULL,
        replay INTEGER NOT NULL DEFAULT 0,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    );
    """,
    # The outbox holds msgpack bytes (encode_outbox), declared TEXT by version 1. SQLite
    # cannot change a column's type, so the table is rebuilt; its AUTOINCREMENT counter is
    # carried over, as an outbox id must never be reused while a verdict may still name it.
    2: """
    CREATE TABLE outbox_v2 (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        record BLOB NOT NULL
    );
    INSERT INTO outbox_v2 (id, record) SELECT id, record FROM outbox;
    DELETE FROM sqlite_sequence WHERE name = 'outbox_v2';
    INSERT INTO sqlite_sequence (name, seq)
        SELECT 'outbox_v2', seq FROM sqlite_sequence WHERE name = 'outbox';
    DROP TABLE outbox;
    ALTER TABLE outbox_v2 RENAME TO outbox;
    """,
    # AuditRecord.trust (SPEC §7): NULL in records chained before it existed.
    3: "ALTER TABLE audit ADD COLUMN trust TEXT",
    # The audit chain is keyed from here on: the store's random id (bound into the chain's
    # first prev_hash and every checkpoint) and how an unkeyed (version 1-3) chain was
    # re-chained live in `meta`. Audit fills it in (chainstart.open_chain), not the migration.
    4: """
    CREATE TABLE IF NOT EXISTS meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    """,
}
SCHEMA_VERSION = max(MIGRATIONS)


def encode_outbox(fields: dict[str, Any]) -> bytes:
    """An outbox row's record (the audit fields of one accepted write), as msgpack.

    msgpack, not JSON: the store writes one per accepted write on the hot path, and JSON
    encoding was 9 % of the runtime's CPU in the profile."""
    return bytes(msgpack.packb(fields, use_bin_type=True))


def decode_outbox(blob: object) -> dict[str, Any] | None:
    """An outbox record back to its fields: msgpack bytes, or JSON text (how rows were
    written before); None when it is neither (a damaged row)."""
    try:
        fields = msgpack.unpackb(blob, raw=False) if isinstance(blob, bytes) \
            else json.loads(blob)  # type: ignore[arg-type]
    except (TypeError, ValueError, msgpack.UnpackException):
        return None
    return fields if isinstance(fields, dict) else None


WAL_CHECKPOINT_PAGES = 4000
"""Pages the WAL file may hold before the commit that passes them checkpoints it into the
database (SQLite's default is 1,000). That commit stalls for the checkpoint: a copy of each
page the WAL holds and an fsync of the database, ~8-9 ms on the 2-vCPU VM of
docs/benchmarks.md and about as long for 4,000 frames as for 1,000, since under load most
frames are new versions of the same hot pages (the audit table's last page, the indexes'
upper levels). Small batches rewrite those pages often: at half the bench's peak rate
(~2 requests a batch) 1,000 pages meant ~5 checkpoints a second, and the requests queued
behind each stall set the half-peak p99. In-process, over alternating runs: median 13.2 ms
at 1,000 pages (10 runs), 10.5 at 4,000 (20), 10.1 at 10,000 (10); docs/benchmarks.md,
"Session 12". 4,000 keeps the WAL file at up to ~16 MB (4 KiB pages) beside the database
while it is open (docs/operating.md); 10,000 would keep ~40 MB for no clear gain."""


def connect(path: str, durable: bool) -> sqlite3.Connection:
    """Open the store file in WAL mode, autocommit off, and bring the schema up to date.

    `durable` selects synchronous=FULL (a reply means the commit is on disk); throwaway
    test stores use OFF. The connection belongs to the calling actor's thread/process.
    """
    create_private(path)
    conn = sqlite3.connect(path, isolation_level=None, timeout=30.0, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'OFF'}")
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
    migrate(conn)
    return conn


def create_private(path: str) -> None:
    """Create the store file, mode 0600, unless it exists. SQLite gives its -wal and -shm
    files the database file's mode, so they are private too; an existing file's mode is
    the operator's choice and left alone."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return
    os.close(fd)


def migrate(conn: sqlite3.Connection) -> None:
    """Apply every migration newer than the file's `user_version`, each atomically."""
    current = int(conn.execute("PRAGMA user_version").fetchone()[0])
    for version in sorted(v for v in MIGRATIONS if v > current):
        conn.execute("BEGIN IMMEDIATE")
        try:
            # user_version re-read under the write lock: another process may have migrated.
            if int(conn.execute("PRAGMA user_version").fetchone()[0]) < version:
                for statement in MIGRATIONS[version].split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version={version}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
