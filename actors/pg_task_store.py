"""PgTaskStore: the TaskStore of a runtime on PostgreSQL (cluster mode), fenced by its lease.

Accepts what TaskStore accepts, with the same batching (one transaction per `Flush`, the
batch judged as one unit of work by store_batch, an outbox row per accepted write), but:
- `Wiring` -> connects to `Settings.database_url` and checks the database is a cluster
  database whose shards include the fence's; replies `Started`.
- every batch (and every operator lock) is ONE transaction that starts with
  `pg_store.lock_fence`: the shard's lease row locked `FOR UPDATE` and compared with the
  runtime's fence (shard, owner, epoch). A batch's transaction is `pg_store.write_batch`:
  three round trips for a batch of creates (BEGIN with the fence and the outbox counter;
  the batch's reads; its writes with COMMIT). If another holder has taken the shard, nothing is
  written and every request of the batch is answered `task_ingress_unavailable` — and so
  is every later one: an epoch never comes back, so this store is deposed for good.
- a request for a workspace of another shard is answered `task_ingress_unavailable`
  (another daemon owns it); so is a batch whose connection was lost (if its commit did
  land, a retry with the same request ID is answered as a replay).
The outbox row of an accepted write commits with it; the shard's audit chain is written by
PgAudit (actors/pg_audit.py), which chains it, or, after a crash, by the shard's next holder.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any, cast

import psycopg
from task_ingress.actors.base import failed_verdict, rejected_verdict
from task_ingress.actors.rules.shards import Fence, shard_of
from task_ingress.actors.storage import pg_store, store_ops
from task_ingress.actors.storage.pg_schema import configured_shards, ensure_store_schema
from task_ingress.actors.storage.pg_store import Fenced, QmarkConnection
from task_ingress.actors.storage.store_batch import StoreBatch
from task_ingress.actors.task_store import Applied, TaskStore
from task_ingress.messages.protocol import (
    Flush,
    InFlight,
    LockTask,
    QueryFailed,
    Started,
    TaskLocked,
    Verdict,
    Wiring,
)
from task_ingress.messages.reasons import Reason
from task_ingress.messages.requests import AnyRequest, IngressContext


def in_shard(flight: InFlight, fence: Fence, shards: int) -> bool:
    """True when the request's workspace belongs to the fence's shard."""
    return shard_of(flight.context.workspace, shards) == fence.shard


class PgTaskStore(pg_store.PgSession, TaskStore):
    """Owner of the tasks, runs, accepted-request and outbox rows of one shard's holding."""

    UNREACHABLE = "store.database_unreachable"
    chains = False  # its writes and Audit's records are two fenced transactions (outbox)

    def __init__(self) -> None:
        super().__init__()
        self.pg: psycopg.Connection[Any] | None = None
        self.fence: Fence | None = None
        self.shards = 0
        self.deposed = False
        """The lease row named another holding once: every later write is refused."""
        self.fenced_off = 0
        """Requests answered `task_ingress_unavailable` because the lease had moved."""
        self._next_outbox = 1

    def receiveMsg_Wiring(self, msg: Wiring, sender: Any) -> None:
        """Connect, check the cluster database and the fence's shard; reply Started."""
        try:
            s = msg.settings
            self.settings, self.audit, self.limits = s, msg.audit, s.limits
            if s.fence is None or not s.database_url:
                raise ValueError("a PostgreSQL store needs database_url and a fence")
            self.fence = Fence(*s.fence)
            self.pg = self._connect()
            shards = configured_shards(self.pg)
            if shards is None:
                raise ValueError("not a cluster database (no cluster_config): set up the "
                                 "shard leases first")
            if not 0 <= self.fence.shard < shards:
                raise ValueError(f"the fence names shard {self.fence.shard}, the database "
                                 f"has {shards} shards")
            self.shards = shards
            ensure_store_schema(self.pg)
            pg_store.ensure_outbox_counter(self.pg, self.fence.shard)
            self.send(sender, Started(ticket=msg.ticket, shards=shards))
        except Exception as exc:
            self.send(sender, Started(ticket=msg.ticket, error=f"task store: {exc!r}"))

    def _apply_batch(self, batch: list[InFlight]) -> list[Verdict]:
        fence = self.fence
        assert fence is not None
        ours = [f for f in batch if in_shard(f, fence, self.shards)]
        verdicts: dict[int, Verdict] = {
            id(f): rejected_verdict(f, Reason.TASK_INGRESS_UNAVAILABLE)
            for f in batch if not in_shard(f, fence, self.shards)}
        if ours:
            for verdict in self._apply_ours(ours, fence):
                verdicts[id(verdict.flight)] = verdict
        return [verdicts[id(f)] for f in batch]

    def _apply_ours(self, batch: list[InFlight], fence: Fence) -> list[Verdict]:
        """The batch (all of the fence's shard) in one fenced transaction."""
        ids = [f.context.request_id for f in batch]
        if self.deposed:
            return self._unavailable(batch, "store.fenced_off")
        conn = self._connection()
        if conn is None:
            return self._unavailable(batch, "store.database_unreachable")

        def work(qmark: sqlite3.Connection, next_outbox: int) -> tuple[list[Applied], int]:
            self._next_outbox = next_outbox
            results = self.apply_in_order(qmark, batch, time.time())
            boxes = [box for _, _, box in results if box is not None]
            return results, max(boxes, default=next_outbox - 1) + 1

        try:
            results = pg_store.write_batch(conn, fence, work)
        except Fenced as exc:
            self.deposed = True
            self.log.warning("store.deposed", shard=fence.shard, epoch=fence.epoch,
                             why=str(exc))
            return self._unavailable(batch, "store.fenced_off")
        except psycopg.Error as exc:
            if pg_store.lost(conn):
                return self._unavailable(batch, "store.connection_lost", error=repr(exc))
            self.log.error("store.commit_failed", error=repr(exc), request_ids=ids)
            return [failed_verdict(f) for f in batch]
        return [Verdict(flight=f, outcome=o, outbox_id=box) for f, o, box in results]

    def _unavailable(self, batch: list[InFlight], event: str, **extra: Any) -> list[Verdict]:
        if event == "store.fenced_off":
            self.fenced_off += len(batch)
        self.log.warning(event, outcome="rejected", reason=Reason.TASK_INGRESS_UNAVAILABLE.value,
                         request_ids=[f.context.request_id for f in batch], **extra)
        return [rejected_verdict(f, Reason.TASK_INGRESS_UNAVAILABLE) for f in batch]

    def load_batch(self, conn: sqlite3.Connection,
                   items: list[tuple[IngressContext, AnyRequest]]) -> StoreBatch:
        """`StoreBatch.load`, outbox ids numbered from the shard's counter."""
        return StoreBatch.load(conn, items, next_outbox=self._next_outbox)

    def _reader(self) -> sqlite3.Connection:
        """Reads (`GetTask`/`GetRun`) go through the store's connection, not fenced."""
        conn = self._connection()
        if conn is None:
            raise RuntimeError("the database cannot be reached")
        return cast(sqlite3.Connection, QmarkConnection(conn))

    def receiveMsg_LockTask(self, msg: LockTask, sender: Any) -> None:
        """Operator lock, committed at once under the fence (it is a write like any other)."""
        fence = self.fence
        try:
            conn = self._connection()
            if conn is None or fence is None:
                raise RuntimeError("the database cannot be reached")
            if self.deposed or shard_of(msg.workspace, self.shards) != fence.shard:
                raise Fenced(f"this runtime does not hold the shard of {msg.workspace!r}")
            with conn.transaction():
                pg_store.lock_fence(conn, fence)
                found = store_ops.set_lock(cast(sqlite3.Connection, QmarkConnection(conn)),
                                           msg.workspace, msg.task_id, msg.locked)
            self.send(msg.reply_to or sender, TaskLocked(ticket=msg.ticket, found=found))
        except Exception as exc:
            self.send(msg.reply_to or sender, QueryFailed(ticket=msg.ticket, error=repr(exc)))

    def receiveMsg_ActorExitRequest(self, msg: Any, sender: Any) -> None:
        """Shutdown: apply what is buffered (fenced, as always), then close."""
        if self.pending:
            self.receiveMsg_Flush(Flush(), sender)
        if self.pg is not None:
            self.pg.close()
            self.pg = None
