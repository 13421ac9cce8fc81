"""Reading a store file read-only: the connection, one consistent snapshot of the tables
verification needs, and the audit key.

Nothing here writes: the store is opened with a read-only URI, so every `task-ingress audit`
command can run beside a live daemon and never changes what it inspects.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from task_ingress.actors.rules.gate import safe_field
from task_ingress.actors.storage.auditlog import (
    KEY_ENV,
    find_key,
    key_path,
    read_meta,
    readable_columns,
)
from task_ingress.actors.storage.schema import decode_outbox


class StoreUnreadable(Exception):
    """The store file is missing or is not a task-ingress store (not: it fails verification)."""


class BadKey(ValueError):
    """A key the operator gave (`--key`, or the environment) is not hex: a usage error, never
    a failed verification."""


@dataclass(frozen=True)
class OutboxEntry:
    """A pending outbox row: an accepted write whose audit record is not chained yet."""

    id: int
    fields: dict[str, Any]


@dataclass(frozen=True)
class StoreSnapshot:
    """Everything verification reads from the store, taken in one read transaction."""

    audit_rows: Iterable[tuple[Any, ...]]
    """`AUDIT_COLUMNS` rows in seq order; consumed once, so a large audit is streamed."""
    tasks: dict[str, str]
    """task_id -> workspace."""
    runs: dict[str, tuple[str, str]]
    """run_id -> (task_id, workspace)."""
    accepted: list[tuple[str, str, str, str, str, str | None, str | None]]
    """(workspace, channel, peer_id, request_id, action, task_id, run_id) rows."""
    outbox: list[OutboxEntry]
    bad_outbox: list[int] = field(default_factory=list)
    """IDs of outbox rows whose record does not parse."""
    meta: dict[str, str] = field(default_factory=dict)
    """The `meta` rows: `store_id` (absent: a legacy, unkeyed store), migration facts."""


def readonly_uri(path: str) -> str:
    """A `file:` URI that opens the store read-only.

    With no `-wal` file beside it the store is fully checkpointed and no writer has it
    open, so `immutable=1` reads it without creating `-wal`/`-shm` files; otherwise the
    WAL must be read (a SIGKILLed writer leaves committed pages there) with `mode=ro`.
    """
    uri = Path(path).absolute().as_uri() + "?mode=ro"
    if not os.path.exists(path + "-wal"):
        uri += "&immutable=1"
    return uri


def store_file_problem(path: str) -> str | None:
    """Why `path` cannot be a store file (missing, a directory, empty), or None."""
    if os.path.isdir(path):
        return f"{path} is a directory, not a store file (give the .db file's path)"
    if not os.path.exists(path):
        return f"no store file at {path} (check the --store path)"
    if not os.path.isfile(path):
        return f"{path} is not a regular file (give the .db file's path)"
    if os.path.getsize(path) == 0:
        return f"{path} is an empty file, not a task-ingress store"
    return None


@contextmanager
def open_readonly(path: str) -> Iterator[sqlite3.Connection]:
    """A read-only connection to the store file; raises StoreUnreadable when it is absent,
    a directory or empty."""
    problem = store_file_problem(path)
    if problem is not None:
        raise StoreUnreadable(problem)
    try:
        conn = sqlite3.connect(readonly_uri(path), uri=True, timeout=30.0)
    except sqlite3.Error as exc:
        raise StoreUnreadable(f"cannot open {path} read-only: {exc}") from exc
    try:
        yield conn
    finally:
        conn.close()


@contextmanager
def snapshot(conn: sqlite3.Connection) -> Iterator[StoreSnapshot]:
    """The store as of one read transaction; the audit rows stream from a cursor."""
    try:
        conn.execute("BEGIN")
    except sqlite3.Error as exc:
        raise StoreUnreadable(f"not a readable task-ingress store: {exc}") from exc
    try:
        try:
            # Workspaces as the audit stores them (safe form: SPEC 2 allows format chars).
            tasks = {r[0]: safe_field(r[1]) for r in conn.execute(
                "SELECT task_id, workspace FROM tasks").fetchall()}
            runs = {r[0]: (r[1], safe_field(r[2])) for r in conn.execute(
                "SELECT run_id, task_id, workspace FROM runs").fetchall()}
            accepted = [(safe_field(r[0]), *r[1:]) for r in conn.execute(
                "SELECT workspace, channel, peer_id, request_id, action, task_id, run_id "
                "FROM accepted_requests").fetchall()]
            outbox_rows = conn.execute("SELECT id, record FROM outbox ORDER BY id").fetchall()
            meta = read_meta(conn)
            audit_rows = conn.execute(f"SELECT {readable_columns(conn)} FROM audit "
                                      "ORDER BY seq")
        except sqlite3.Error as exc:
            raise StoreUnreadable(f"not a readable task-ingress store: {exc}") from exc
        outbox, bad_outbox = _parse_outbox(outbox_rows)
        yield StoreSnapshot(audit_rows, tasks, runs, accepted, outbox, bad_outbox, meta)
    finally:
        conn.execute("COMMIT")


def read_snapshot(conn: sqlite3.Connection) -> StoreSnapshot:
    """Like `snapshot`, with the audit rows read into a list (callers may iterate twice)."""
    with snapshot(conn) as snap:
        rows = list(snap.audit_rows)
    return StoreSnapshot(rows, snap.tasks, snap.runs, snap.accepted, snap.outbox,
                         snap.bad_outbox, snap.meta)


def _parse_outbox(rows: list[tuple[Any, Any]]) -> tuple[list[OutboxEntry], list[int]]:
    outbox: list[OutboxEntry] = []
    bad: list[int] = []
    for outbox_id, blob in rows:
        fields = decode_outbox(blob)
        if fields is not None:
            outbox.append(OutboxEntry(int(outbox_id), fields))
        else:
            bad.append(int(outbox_id))
    return outbox, bad


def load_key(store_path: str, explicit: str | None = None) -> tuple[bytes | None, str | None]:
    """The audit key as the runtime finds it (`auditlog.find_key`: `explicit`, env
    TASK_INGRESS_AUDIT_KEY, else the key file `<store>.key`), as bytes.

    Returns (key, None), (None, None) when there is none, or (None, why) when the key file
    beside the store is unusable: that file is within reach of whoever can write the store,
    so a garbled one is a verification failure. Raises BadKey when a key the operator gave
    (`explicit` or the environment) is not hex: a usage error."""
    try:
        found = find_key(store_path, explicit)
    except OSError as exc:
        return None, f"key file {key_path(store_path)} is unreadable: {exc}"
    if found is None:
        return None, None
    text, source = found
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if key:
        return key, None
    if source == "the given key":
        raise BadKey("--key must be the audit key in hex (e.g. the content of <store>.key)")
    if source == f"${KEY_ENV}":
        raise BadKey(f"${KEY_ENV} must be the audit key in hex; fix or unset it")
    return None, f"key file {source} does not hold a hex key"
