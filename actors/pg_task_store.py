"""PgTaskStore: the TaskStore of a runtime on PostgreSQL (cluster mode), fenced by its lease.

Accepts what TaskStore accepts, with the same batching (the batch judged as one unit of
work by store_batch, chained under PgAudit's `ChainLease`), but:
- `Wiring` -> connects to `Settings.database_url` and checks the database is a cluster
  database whose shards include the fence's; replies `Started`.
- every batch (and every operator lock) is ONE transaction that starts with
  `pg_store.lock_fence`: the shard's lease row locked `FOR UPDATE` and compared with the
  runtime's fence (shard, owner, epoch). Under a lease a batch's transaction is
  `pg_auditlog.write_chained`: three round trips for a batch of creates (BEGIN with the
  fence and the shard's head row, refused as `ChainMoved` unless it names the lent head;
  the batch's reads; its writes, the sealed record of every outcome of the batch and the
  head row moved, with COMMIT), and the lease goes back advanced. If another holder has
  taken the shard, nothing is written and every request of the batch is answered
  `task_ingress_unavailable` — and so is every later one: an epoch never comes back, so
  this store is deposed for good. A moved head row is answered the same way (not deposed:
  PgAudit, given the lease back unused, finds out whose records moved it).
- a request for a workspace of another shard is answered `task_ingress_unavailable`
  (another daemon owns it), and recorded in the batch; so is a batch whose connection was
  lost (if its commit did land, PgAudit reads its records back and answers as recorded).
- Without a lease (shutdown, or `chains = False`) a batch is `pg_store.write_batch`: an
  outbox row per accepted write commits with it, and PgAudit (actors/pg_audit.py) chains
  it, or, after a crash, the shard's next holder.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any, cast

import psycopg
from task_ingress.actors.base import failed_verdict, rejected_verdict
from task_ingress.actors.rules.chain import ChainKey
from task_ingress.actors.rules.shards import Fence, shard_of
from task_ingress.actors.storage import pg_auditlog, pg_store, store_ops
from task_ingress.actors.storage.auditlog import audit_fields
from task_ingress.actors.storage.pg_auditlog import ChainMoved
from task_ingress.actors.storage.pg_schema import configured_shards, ensure_store_schema
from task_ingress.actors.storage.pg_store import Fenced, QmarkConnection
from task_ingress.actors.storage.store_batch import StoreBatch
from task_ingress.actors.task_store import Applied, TaskStore
from task_ingress.messages.protocol import (
    ChainLease,
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
    chains = True
    """Chain each batch's records in its own fenced transaction under a `ChainLease`.
    False: write outbox rows that PgAudit chains in a second fenced transaction."""

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
            if self.chains:
                try:
                    self.key = ChainKey.from_hex(s.audit_key)
                except ValueError:
                    raise ValueError("the audit key is missing or not hex") from None
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
        if ours and self.lease is not None:
            return self._apply_chained(batch, ours, verdicts, fence)
        # Nothing of the shard under a lease: nothing written, the lease goes back unused
        # and PgAudit chains the batch's rejections itself.
        return self._merged(batch, verdicts, self._apply_ours(ours, fence) if ours else [])

    def _refused(self, batch: list[InFlight]) -> list[Verdict] | None:
        """The batch's answers when this store cannot write now (deposed, no database)."""
        if self.deposed:
            return self._unavailable(batch, "store.fenced_off")
        if self._connection() is None:
            return self._unavailable(batch, "store.database_unreachable")
        return None

    def _apply_chained(self, batch: list[InFlight], ours: list[InFlight],
                       others: dict[int, Verdict], fence: Fence) -> list[Verdict]:
        """The batch under the chain lease: its writes and the records of EVERY outcome
        (the other shards' rejections too, in batch order) in one fenced transaction
        (`pg_auditlog.write_chained`); the lease advanced past them once it committed.
        When it did not, the lease stays as lent and PgAudit handles the answers."""
        lease, key = self.lease, self.key
        assert lease is not None and key is not None
        refused = self._refused(ours)
        if refused is not None:
            return self._merged(batch, others, refused)
        conn = self.pg
        assert conn is not None

        def work(qmark: sqlite3.Connection) -> tuple[list[Verdict], list[dict[str, Any]]]:
            results = self.apply_in_order(qmark, ours, time.time())
            verdicts = self._merged(batch, others, [Verdict(flight=f, outcome=o)
                                                    for f, o, _ in results])
            return verdicts, [audit_fields(v.flight, v.outcome) for v in verdicts]

        try:
            verdicts, chain = pg_auditlog.write_chained(conn, fence, key, lease.seq,
                                                        lease.head, work)
        except (Fenced, ChainMoved, psycopg.Error) as exc:
            return self._merged(batch, others, self._not_written(ours, fence, conn, exc))
        self.lease = ChainLease(lease_id=lease.lease_id, seq=chain.seq, head=chain.head)
        return verdicts

    @staticmethod
    def _merged(batch: list[InFlight], others: dict[int, Verdict], ours: list[Verdict]
                ) -> list[Verdict]:
        verdicts = dict(others)
        for verdict in ours:
            verdicts[id(verdict.flight)] = verdict
        return [verdicts[id(f)] for f in batch]

    def _not_written(self, batch: list[InFlight], fence: Fence, conn: psycopg.Connection[Any],
                     exc: Exception) -> list[Verdict]:
        """The answers of a batch whose fenced transaction did not commit (or, its
        connection lost, may have: a retry with the same request ID is then a replay)."""
        if isinstance(exc, Fenced):
            self.deposed = True
            self.log.warning("store.deposed", shard=fence.shard, epoch=fence.epoch,
                             why=str(exc))
            return self._unavailable(batch, "store.fenced_off")
        if isinstance(exc, ChainMoved):
            # Not deposed: the lease row is still this holding's; PgAudit, given the lease
            # back unused, finds out whose records moved the head (pg_audit.py).
            return self._unavailable(batch, "store.chain_moved", why=str(exc))
        if pg_store.lost(conn):
            return self._unavailable(batch, "store.connection_lost", error=repr(exc))
        self.log.error("store.commit_failed", error=repr(exc),
                       request_ids=[f.context.request_id for f in batch])
        return [failed_verdict(f) for f in batch]

    def _apply_ours(self, batch: list[InFlight], fence: Fence) -> list[Verdict]:
        """The batch (all of the fence's shard) in one fenced transaction, an outbox row
        per accepted write (no lease: shutdown, or `chains = False`)."""
        refused = self._refused(batch)
        if refused is not None:
            return refused
        conn = self.pg
        assert conn is not None

        def work(qmark: sqlite3.Connection, next_outbox: int) -> tuple[list[Applied], int]:
            self._next_outbox = next_outbox
            results = self.apply_in_order(qmark, batch, time.time())
            boxes = [box for _, _, box in results if box is not None]
            return results, max(boxes, default=next_outbox - 1) + 1

        try:
            results = pg_store.write_batch(conn, fence, work)
        except (Fenced, psycopg.Error) as exc:
            return self._not_written(batch, fence, conn, exc)
        return [Verdict(flight=f, outcome=o, outbox_id=box) for f, o, box in results]

    def _unavailable(self, batch: list[InFlight], event: str, **extra: Any) -> list[Verdict]:
        if event in ("store.fenced_off", "store.chain_moved"):
            self.fenced_off += len(batch)
        self.log.warning(event, outcome="rejected", reason=Reason.TASK_INGRESS_UNAVAILABLE.value,
                         request_ids=[f.context.request_id for f in batch], **extra)
        return [rejected_verdict(f, Reason.TASK_INGRESS_UNAVAILABLE) for f in batch]

    def load_batch(self, conn: sqlite3.Connection,
                   items: list[tuple[IngressContext, AnyRequest]]) -> StoreBatch:
        """`StoreBatch.load`, outbox ids numbered from the shard's counter (under a lease
        no outbox row is written)."""
        return StoreBatch.load(conn, items,
                               next_outbox=self._next_outbox if self.lease is None else 0)

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
        """Shutdown: as TaskStore (the lease asked for dropped, what is buffered applied
        with outbox rows, fenced as always), then close."""
        super().receiveMsg_ActorExitRequest(msg, sender)
        if self.pg is not None:
            self.pg.close()
            self.pg = None
