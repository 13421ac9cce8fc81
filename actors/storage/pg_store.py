"""The fenced write: a request judged and applied in PostgreSQL only under the lease epoch
it was started with, checked in the same transaction as the write.

Isolation: explicit row locks, not SERIALIZABLE. Every write transaction first locks its
shard's lease row `FOR UPDATE`; that one lock (a) fences — the row's owner and epoch must
still be the caller's, and a takeover's UPDATE of the row waits for the transaction or is
seen by it, never interleaves — and (b) serializes all writes of a shard, exactly as
SQLite's single writer serializes the embedded store. Workspaces never span shards, so
store_batch's read-then-write checks run under READ COMMITTED with no concurrent writer of the
rows they read, and no serialization failure ever needs a retry before the answer.

A holder paused inside a write transaction would keep the lease row locked and stall a
takeover: store sessions run with `idle_in_transaction_session_timeout`, so PostgreSQL ends
such a session (and rolls it back) within the lease TTL's margin.

That timeout is armed only when the server sends ReadyForQuery, and every message it reads
disarms it. psycopg's `executemany` runs in pipeline mode and ends with Sync then Flush: the
Flush disarms the timer armed by the Sync's ReadyForQuery and, answering no ReadyForQuery
itself, never re-arms it. A client that goes silent right there (paused, partitioned) left
its session "idle in transaction" with no timeout, holding the lease row, until TCP gave up.
So fenced transactions never use pipeline mode: `execute_rows` sends a batch as one
multi-row INSERT (or one statement per row), each ending in ReadyForQuery.

Round trips, not PostgreSQL's work, were the cost of a fenced transaction (docs/cluster.md,
"Where one daemon's time goes"): a batch of one cost nine store statements and seven audit
statements, each a message and a wait, while the server spent about 0.03 ms on each. A
`FencedTransaction` therefore sends its statements in as few messages as the work allows: BEGIN,
the fence's lock and the reads that need nothing from the client in one; the writes, held
back until the end, with COMMIT in another. Each is one simple-protocol query (parameters
bound client-side, several statements in one Query message): it ends in ReadyForQuery, like
any single statement, so the idle timeout stays armed; statements in one message still run
one after the other, so the lock is taken before anything else runs.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, TypeVar, cast

import psycopg
from psycopg.pq import TransactionStatus
from task_ingress.actors.rules.shards import Fence, shard_of
from task_ingress.actors.storage import store_batch, store_ops
from task_ingress.messages.limits import Limits
from task_ingress.messages.outcomes import Outcome, Run, Task
from task_ingress.messages.reasons import Reason
from task_ingress.messages.requests import AnyRequest, IngressContext


class QmarkConnection:
    """store_ops' and store_batch's SQL (SQLite `?` placeholders) on a psycopg connection
    (`%s`).

    Both are written against sqlite3.Connection; they only call `execute(sql, params)` and
    `executemany(sql, rows)` and read `fetchone()`/`fetchall()`/`rowcount` of the result,
    which psycopg's cursor also has."""

    def __init__(self, conn: psycopg.Connection[Any],
                 writes: FencedTransaction | None = None) -> None:
        self.conn = conn
        self.writes = writes
        """Where `executemany` queues its rows (sent with the COMMIT); None: sent at once."""
        self._sql: dict[str, str] = {}

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> psycopg.Cursor[Any]:
        """Run one statement with `?` placeholders (after any queued writes: a read sees
        them)."""
        if self.writes is not None:
            self.writes.flush()
        return self.conn.execute(self._translate(sql), params)

    def executemany(self, sql: str, rows: Iterable[tuple[Any, ...]]) -> None:
        """Run one statement with `?` placeholders once per row (a batch of one's writes),
        without pipeline mode (`execute_rows`), or queue it on the transaction."""
        if self.writes is not None:
            self.writes.write_rows(self._translate(sql), list(rows))
        else:
            execute_rows(self.conn, self._translate(sql), list(rows))

    def _translate(self, sql: str) -> str:
        translated = self._sql.get(sql)
        if translated is None:
            translated = self._sql[sql] = sql.replace("%", "%%").replace("?", "%s")
        return translated


_VALUES = re.compile(r"^(INSERT\s.*\bVALUES\s*)(\(.*\))\s*$", re.DOTALL | re.IGNORECASE)
MAX_ROWS_PER_INSERT = 500
"""Rows per multi-row INSERT (PostgreSQL takes at most 65,535 parameters a statement)."""


Statement = tuple[str, Sequence[Any]]
"""One SQL statement (`%s` placeholders) and its parameters."""


def row_statements(sql: str, rows: Sequence[Sequence[Any]]) -> list[Statement]:
    """`sql` (`%s` placeholders) once per row as statements: an `INSERT ... VALUES (...)`
    as multi-row INSERTs, anything else one statement per row."""
    match = _VALUES.match(sql)
    if match is None:
        return [(sql, row) for row in rows]
    head, values = match.groups()
    return [(head + ", ".join([values] * len(chunk)), [value for row in chunk for value in row])
            for chunk in (rows[start:start + MAX_ROWS_PER_INSERT]
                          for start in range(0, len(rows), MAX_ROWS_PER_INSERT))]


def execute_rows(conn: psycopg.Connection[Any], sql: str, rows: Sequence[Sequence[Any]]) -> None:
    """`sql` (`%s` placeholders) once per row, never in pipeline mode (see the module's
    docstring): `row_statements`, one message each."""
    for statement, params in row_statements(sql, rows):
        conn.execute(statement, params)


class Fenced(Exception):
    """The lease row no longer names the caller's holding (a takeover happened)."""


def connect_store(url: str, idle_in_transaction_timeout: float,
                  connect_timeout: float = 10.0) -> psycopg.Connection[Any]:
    """An autocommit connection for fenced writes (transactions are explicit)."""
    conn = psycopg.connect(url, autocommit=True, connect_timeout=max(1, int(connect_timeout)))
    conn.execute(
        "SELECT set_config('idle_in_transaction_session_timeout', %s, false)",
        (str(max(1, int(idle_in_transaction_timeout * 1000))),))
    return conn


def lost(conn: psycopg.Connection[Any] | None) -> bool:
    """True when the connection is gone (closed, or broken by a server or network error):
    what it was committing may or may not have landed."""
    return conn is None or conn.closed or conn.broken


class PgSession:
    """The PostgreSQL connection of a fenced actor (PgTaskStore, PgAudit): connect, and
    reconnect when the last connection was lost. The actor sets `settings` and `log`;
    `UNREACHABLE` names the log event of a database that cannot be reached now."""

    UNREACHABLE = "database_unreachable"
    pg: psycopg.Connection[Any] | None
    settings: Any
    log: Any

    def _connect(self) -> psycopg.Connection[Any]:
        assert self.settings is not None
        return connect_store(self.settings.database_url, self.settings.database_idle_timeout)

    def _connection(self) -> psycopg.Connection[Any] | None:
        """The connection, reconnected when the last one was lost; None (logged) when the
        database cannot be reached now: the caller answers `task_ingress_unavailable` and
        the next request tries again."""
        if not lost(self.pg):
            return self.pg
        if self.pg is not None:
            self.pg.close()
        try:
            self.pg = self._connect()
        except psycopg.Error as exc:
            self.pg = None
            self.log.error(self.UNREACHABLE, error=repr(exc))
        return self.pg


def fence_statement(fence: Fence) -> Statement:
    """lock_fence's statement: the shard's lease row, locked, with the transaction-local
    settings of its shard and epoch (a refused fence's rolled-back transaction keeps none)."""
    return ("SELECT owner, epoch, set_config('task_ingress.shard', %s, true), "
            "set_config('task_ingress.epoch', %s, true) FROM shard_leases WHERE shard = %s "
            "FOR UPDATE", (str(fence.shard), str(fence.epoch), fence.shard))


def check_fence(row: Sequence[Any] | None, fence: Fence) -> None:
    """Raise `Fenced` unless the lease row (`fence_statement`'s) names `fence`'s holding."""
    if row is None or row[0] != fence.owner or int(row[1]) != fence.epoch:
        raise Fenced(f"shard {fence.shard} is held by {row[0] if row else '?'} under epoch "
                     f"{row[1] if row else '?'}, not by {fence.owner} under {fence.epoch}")


def lock_fence(conn: psycopg.Connection[Any], fence: Fence) -> None:
    """The first statement of every fenced transaction: lock the shard's lease row and
    raise `Fenced` unless it still names `fence`'s owner and epoch.

    Until the transaction ends, a takeover's UPDATE of the row waits, so nothing the
    transaction writes can commit after another holder took the shard. Also sets the
    transaction's shard and epoch, which the fenced tables' column defaults read."""
    sql, params = fence_statement(fence)
    check_fence(conn.execute(sql, params).fetchone(), fence)


class FencedTransaction:
    """A fenced transaction in two messages (module docstring): `begin` sends BEGIN, the
    fence and the caller's first reads; `write_rows`/`write` hold writes back; leaving the
    `with` block sends them with COMMIT, or, on an exception, rolls back.

    Reads in between (`QmarkConnection(conn, tx).execute`) are messages of their own, after
    any writes held back (`flush`). Nothing else may use the connection meanwhile."""

    def __init__(self, conn: psycopg.Connection[Any], fence: Fence) -> None:
        self.conn = conn
        self.fence = fence
        self._cursor = psycopg.ClientCursor(conn)
        self._writes: list[Statement] = []
        self._begun = False

    def begin(self, *reads: Statement) -> list[list[tuple[Any, ...]]]:
        """BEGIN, lock_fence, then `reads` (run under the lock), in one message; the rows of
        each read. Raises `Fenced` (the caller's `with` then rolls back) like lock_fence."""
        assert not self._begun, "one begin per transaction"
        self._begun = True
        results = self._send([("BEGIN", ()), fence_statement(self.fence), *reads])
        fence_rows = results[1][1]
        check_fence(fence_rows[0] if fence_rows else None, self.fence)
        return [rows for _, rows in results[2:]]

    def write(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Queue one statement (`%s` placeholders) to send with the COMMIT."""
        self._writes.append((sql, params))

    def write_rows(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Queue `sql` once per row (`row_statements`) to send with the COMMIT."""
        self._writes.extend(row_statements(sql, rows))

    def flush(self) -> None:
        """Send the writes held back now (before a read that must see them)."""
        if self._writes:
            writes, self._writes = self._writes, []
            self._send(writes)

    def qmark(self) -> QmarkConnection:
        """store_ops'/store_batch's connection for this transaction: reads at once, writes
        held back for the COMMIT."""
        return QmarkConnection(self.conn, self)

    def _send(self, statements: list[Statement]) -> list[tuple[str, list[tuple[Any, ...]]]]:
        """One message: (command status, rows) of each statement."""
        cursor = self._cursor
        cursor.execute("; ".join(sql for sql, _ in statements),
                       [value for _, params in statements for value in params])
        results: list[tuple[str, list[tuple[Any, ...]]]] = []
        while True:
            rows = cursor.fetchall() if cursor.description is not None else []
            results.append((cursor.statusmessage or "", rows))
            if not cursor.nextset():
                return results

    def __enter__(self) -> FencedTransaction:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if kind is None and self._begun:
            try:
                writes, self._writes = self._writes, []
                status = self._send([*writes, ("COMMIT", ())])[-1][0]
            except BaseException:
                self._rollback()
                raise
            if status != "COMMIT":  # "ROLLBACK": the transaction had failed, nothing landed
                raise psycopg.DatabaseError(f"COMMIT answered {status!r}")
            return
        self._rollback()

    def _rollback(self) -> None:
        if not lost(self.conn) and self.conn.info.transaction_status != TransactionStatus.IDLE:
            # The caller reports the error that brought it here.
            with contextlib.suppress(psycopg.Error):
                self.conn.execute("ROLLBACK")


R = TypeVar("R")


def write_batch(conn: psycopg.Connection[Any], fence: Fence,
                work: Callable[[sqlite3.Connection, int], tuple[R, int]]) -> R:
    """A store batch's fenced transaction, in three messages for a batch of creates: BEGIN,
    the fence and the shard's outbox counter; `work`'s reads (store_batch's load); its writes,
    the counter's advance and COMMIT.

    `work(conn, next_outbox)` judges the batch on `conn` (writes there are held back),
    numbering outbox rows from `next_outbox`, and returns (its result, the first outbox id it
    left free). Raises `Fenced` or psycopg's errors; on any, nothing is written."""
    with FencedTransaction(conn, fence) as tx:
        (counter,) = tx.begin(("SELECT last FROM outbox_seq WHERE shard = %s", (fence.shard,)))
        next_outbox = int(counter[0][0]) + 1 if counter else 1
        result, free = work(cast(sqlite3.Connection, tx.qmark()), next_outbox)
        if free > next_outbox:
            # Ids below `free` are taken, never reused, even once chained.
            tx.write("UPDATE outbox_seq SET last = %s WHERE shard = %s AND last < %s",
                     (free - 1, fence.shard, free - 1))
    return result


def ensure_outbox_counter(conn: psycopg.Connection[Any], shard: int) -> None:
    """The shard's outbox id counter row (a no-op once it exists)."""
    conn.execute("INSERT INTO outbox_seq (shard) VALUES (%s) ON CONFLICT (shard) DO NOTHING",
                 (shard,))


def apply_fenced(
    conn: psycopg.Connection[Any],
    fence: Fence,
    shards: int,
    ctx: IngressContext,
    request: AnyRequest,
    limits: Limits,
    now: float,
) -> Outcome:
    """Judge and apply `request` in one transaction that first checks `fence` is current.

    `task_ingress_unavailable` when the shard is not the fence's, the lease row names another
    owner or epoch, or the database went away (the request may be retried with its ID: if it
    did commit, the retry is a replay); `task_ingress_failed` on any other store error."""
    action = request.action
    if shard_of(ctx.workspace, shards) != fence.shard:
        return Outcome.rejected(ctx.request_id, action, Reason.TASK_INGRESS_UNAVAILABLE)
    try:
        with conn.transaction():
            lock_fence(conn, fence)
            return store_batch.judge_and_apply(
                cast(sqlite3.Connection, QmarkConnection(conn)), ctx, request, limits, now)
    except Fenced:
        return Outcome.rejected(ctx.request_id, action, Reason.TASK_INGRESS_UNAVAILABLE)
    except psycopg.Error:
        if lost(conn):
            return Outcome.rejected(ctx.request_id, action, Reason.TASK_INGRESS_UNAVAILABLE)
        return Outcome.failed(ctx.request_id, action)


def get_task(conn: psycopg.Connection[Any], workspace: str, task_id: str) -> Task | None:
    """The task with this ID in this workspace."""
    return store_ops.load_task(cast(sqlite3.Connection, QmarkConnection(conn)), workspace, task_id)


def get_run(conn: psycopg.Connection[Any], workspace: str, run_id: str) -> Run | None:
    """The run with this ID in this workspace."""
    return store_ops.load_run(cast(sqlite3.Connection, QmarkConnection(conn)), workspace, run_id)
