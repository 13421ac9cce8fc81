"""TaskStore actor: the only writer of tasks and runs; store-side checks and writes are atomic.

Accepts:
- `Wiring` (from the runtime) -> opens the store file; replies `Started`.
- `InFlights` (from Capability) -> buffered, and the chain's head asked of Audit
  (`LeaseWanted`); on `ChainLease` every buffered request is judged (replay, rules 5-10)
  and applied in arrival order inside ONE transaction, a few statements per batch
  (store_batch.StoreBatch; a request that raises fails alone), together with the chained
  audit record of every outcome of the batch; after COMMIT (synchronous=FULL: the batch's
  one fsync) they go to Audit as one `Verdicts` message that gives the lease back,
  advanced. A failed commit turns the batch into `task_ingress_failed`, nothing applied and
  nothing chained (Audit chains those). docs/durability.md says why this is one writer of
  the chain at a time and what a crash leaves.
- A store that does not chain (`chains = False`: a test store) flushes on `Flush`
  (from itself) instead, writing an outbox row per accepted mutation that Audit chains;
  on a durable SQLite store such a batch commits with synchronous=NORMAL (no fsync):
  Audit's synchronous=FULL commit of its records fsyncs the one WAL file.
- `GetTask` / `GetRun` / `LockTask` (from the runtime, via the router, its parent and
  supervisor) -> `TaskFound` / `RunFound` / `TaskLocked` to the message's `reply_to`.
- `Flush` (from itself).
- `Probe` (from Capability) -> passed to Audit behind this store's verdicts: held while a
  lease is asked for, sent on after that batch.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from task_ingress.actors.base import GateActor, failed_verdict
from task_ingress.actors.log import get_logger
from task_ingress.actors.rules.chain import ChainKey
from task_ingress.actors.storage import store_ops
from task_ingress.actors.storage.auditlog import INSERT_AUDIT_ROW, audit_fields, chained_row
from task_ingress.actors.storage.schema import connect, encode_outbox
from task_ingress.actors.storage.store_batch import StoreBatch
from task_ingress.messages.limits import SPEC_LIMITS
from task_ingress.messages.outcomes import Outcome
from task_ingress.messages.protocol import (
    ChainLease,
    Flush,
    GetRun,
    GetTask,
    InFlight,
    InFlights,
    LeaseDropped,
    LeaseWanted,
    LockTask,
    Probe,
    QueryFailed,
    RunFound,
    Settings,
    Started,
    TaskFound,
    TaskLocked,
    Verdict,
    Verdicts,
    Wiring,
)
from task_ingress.messages.requests import AnyRequest, IngressContext

BATCH_SYNC = "NORMAL"
"""synchronous= of the store's batch commits on a durable store: in WAL mode, NORMAL
writes the frames without an fsync; Audit's FULL commit that follows makes them durable."""

Applied = tuple[InFlight, Outcome, int | None]
"""A request judged (and, when accepted, applied) in a batch: its outcome and outbox row id."""


def _request(flight: InFlight) -> AnyRequest:
    request = flight.submission.request
    assert request is not None, "the router admits only requests"
    return request


class TaskStore(GateActor):
    """Owner of the tasks, runs, accepted-request and outbox tables; appends the audit
    records of its batches under a lease of the chain Audit owns."""

    chains = True
    """Chain each batch's records in its own transaction under a `ChainLease` (one commit
    per batch). False: write outbox rows for Audit to chain (two commits per batch)."""

    def __init__(self) -> None:
        super().__init__()
        self.settings: Settings | None = None
        self.conn: sqlite3.Connection | None = None
        self.audit: Any = None
        self.limits = SPEC_LIMITS
        self.pending: list[InFlight] = []
        self.flush_queued = False
        self.key: ChainKey | None = None
        """The audit key when this store chains (set at Wiring), None when it does not."""
        self.lease_ids = 0
        self.lease_asked: int | None = None
        """The lease this store waits for; only that one is used (a stale one is dropped)."""
        self.lease: ChainLease | None = None
        """While a batch is applied under a lease: the head it chains from, then after."""
        self.held_probes: list[Probe] = []
        self.log = get_logger(actor="task_store")

    def receiveMsg_Wiring(self, msg: Wiring, sender: Any) -> None:
        """Open the store file (in this actor's own process) and remember Audit's address."""
        try:
            s = msg.settings
            self.settings, self.audit = s, msg.audit
            self.limits = s.limits
            if self.chains:
                try:
                    self.key = ChainKey.from_hex(s.audit_key)
                except ValueError:
                    raise ValueError("the audit key is missing or not hex") from None
            self.conn = connect(s.store_path, s.durable)
            if s.durable:
                # One fsync per batch, not two: see the module docstring.
                self.conn.execute(f"PRAGMA synchronous={self.batch_sync}")
            self.send(sender, Started(ticket=msg.ticket))
        except Exception as exc:
            self.send(sender, Started(ticket=msg.ticket, error=f"task store: {exc!r}"))

    @property
    def batch_sync(self) -> str:
        """synchronous= of its batch commits on a durable store: a chaining store's commit is
        the batch's only one and carries the fsync; an outbox batch leaves it to Audit's."""
        return "FULL" if self.key is not None else BATCH_SYNC

    def receiveMsg_InFlights(self, msg: InFlights, sender: Any) -> None:
        """Buffer admitted requests until the lease (or, not chaining, the Flush) behind them."""
        self.pending.extend(msg.items)
        if self.key is None:
            if not self.flush_queued:
                self.flush_queued = True
                self.send(self.myAddress, Flush())
        elif self.lease_asked is None:
            self.lease_ids += 1
            self.lease_asked = self.lease_ids
            self.send(self.audit, LeaseWanted(lease_id=self.lease_asked))

    def receiveMsg_ChainLease(self, msg: ChainLease, sender: Any) -> None:
        """The chain's head, lent: apply and chain everything buffered in one transaction,
        give the lease back with the verdicts, then pass on the probes held behind them."""
        if msg.lease_id != self.lease_asked:
            self.log.warning("store.stale_lease", lease_id=msg.lease_id)
            return
        self.lease_asked = None
        batch, self.pending = self.pending, []
        self.lease = msg
        verdicts: list[Verdict] | None = None
        try:
            verdicts = self._judged(batch)
        finally:
            # Whatever happened, the lease goes back: Audit commits nothing while it is out.
            if verdicts is None:  # _judged answers a bug itself: only a BaseException is here
                verdicts = [failed_verdict(f) for f in batch]
            back, self.lease = self.lease or msg, None
            self.send(self.audit, Verdicts(items=tuple(verdicts), lease=back,
                                           chained=back.seq != msg.seq))
            probes, self.held_probes = self.held_probes, []
            for probe in probes:
                self.send(self.audit, probe)

    def receiveMsg_Flush(self, msg: Flush, sender: Any) -> None:
        """Judge and apply the buffered requests in one transaction, then hand them to Audit."""
        self.flush_queued = False
        batch, self.pending = self.pending, []
        if batch:
            self.send(self.audit, Verdicts(items=tuple(self._judged(batch))))

    def _judged(self, batch: list[InFlight]) -> list[Verdict]:
        """`_apply_batch`, with a bug answered as a failure of the whole batch."""
        if not batch:
            return []
        try:
            return self._apply_batch(batch)
        except Exception as exc:  # a bug, not a disk error: answer everyone, apply nothing
            if self.conn is not None and self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            self.log.error("store.batch_failed", error=repr(exc),
                           request_ids=[f.context.request_id for f in batch])
            return [failed_verdict(f) for f in batch]

    def _apply_batch(self, batch: list[InFlight]) -> list[Verdict]:
        conn = self.conn
        assert conn is not None
        now = time.time()
        results: list[Applied] = []
        lease = self.lease
        try:
            conn.execute("BEGIN IMMEDIATE")
            results = self.apply_in_order(conn, batch, now)
            if lease is not None:
                lease = self._chain(conn, lease, results)
            # Built before COMMIT: a batch committed must give the lease back advanced, or
            # Audit would chain again from a head its records are already past.
            verdicts = [Verdict(flight=f, outcome=o, outbox_id=box) for f, o, box in results]
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self.log.error(
                "store.commit_failed", error=repr(exc),
                request_ids=[f.context.request_id for f in batch],
            )
            return [failed_verdict(f) for f in batch]
        self.lease = lease  # advanced only with the verdicts its records describe in hand
        return verdicts

    def _chain(self, conn: sqlite3.Connection, lease: ChainLease, results: list[Applied]
               ) -> ChainLease:
        """Append the batch's records after the lent head (inside its transaction); the
        lease advanced past them."""
        assert self.key is not None
        seq, head, at = lease.seq, lease.head, time.time()
        rows = []
        for flight, outcome, _ in results:
            seq += 1
            row, head = chained_row(self.key, flight, outcome, seq, head, at)
            rows.append(row)
        conn.executemany(INSERT_AUDIT_ROW, rows)
        return ChainLease(lease_id=lease.lease_id, seq=seq, head=head)

    def apply_in_order(
        self, conn: sqlite3.Connection, batch: list[InFlight], now: float
    ) -> list[Applied]:
        """The batch in arrival order as one unit of work (actors/storage/store_batch.py):
        one query per table loads what its requests can look at, each request is judged
        against that state with every earlier acceptance of the batch applied, and one
        `executemany` per table writes the lot. A request that raises (a bug) fails alone:
        judging applies nothing, so the batch goes on as if it had not been there.

        Runs inside the batch's transaction. The one hook a test twin overrides
        (task_ingress.testing.NaiveTaskStore)."""
        work = self.load_batch(conn, [(f.context, _request(f)) for f in batch])
        results = [self._judge_and_apply(work, flight, now) for flight in batch]
        work.write(conn)
        return results

    def load_batch(self, conn: sqlite3.Connection,
                   items: list[tuple[IngressContext, AnyRequest]]) -> StoreBatch:
        """What the batch's requests can look at (`StoreBatch.load`); the PostgreSQL store
        overrides it to number outbox rows from its own counter."""
        # Under a lease no outbox row is written: no need to read where their ids go on.
        return StoreBatch.load(conn, items, next_outbox=None if self.lease is None else 0)

    def _judge_and_apply(self, work: StoreBatch, flight: InFlight, now: float) -> Applied:
        """Judge one request; apply an acceptance to the batch with its outbox record."""
        try:
            outcome, change = work.judge(flight.context, _request(flight), self.limits, now)
            # Under a lease the batch chains its own records: no outbox row to drain.
            boxed = change is not None and self.lease is None
            record = self.outbox_record(flight, outcome) if boxed else None
        except Exception as exc:
            self.log.error(
                "store.request_failed", error=repr(exc), request_id=flight.context.request_id,
                peer_id=flight.context.peer_id, channel=flight.context.channel,
            )
            return flight, failed_verdict(flight).outcome, None
        box = None if change is None else work.apply(change, record)
        return flight, outcome, box

    @staticmethod
    def outbox_record(flight: InFlight, outcome: Outcome) -> bytes:
        """The outbox record of an accepted write: its audit fields, unchained.

        The row commits with the mutation: a crash before Audit chains it leaves the row
        behind, and Audit's start-up drain turns it into the record."""
        return encode_outbox(audit_fields(flight, outcome))

    def receiveMsg_Probe(self, msg: Probe, sender: Any) -> None:
        """Commit what is buffered, then pass the marker on behind its verdicts (behind the
        batch a lease was asked for, when one was)."""
        if self.lease_asked is not None:
            self.held_probes.append(msg)
            return
        self.receiveMsg_Flush(Flush(), sender)
        self.send(self.audit, msg)

    def _reader(self) -> sqlite3.Connection:
        """The connection `GetTask`/`GetRun` read through (a subclass may read elsewhere)."""
        assert self.conn is not None
        return self.conn

    def receiveMsg_GetTask(self, msg: GetTask, sender: Any) -> None:
        """Answer with the task (or None)."""
        try:
            task = store_ops.load_task(self._reader(), msg.workspace, msg.task_id)
            self.send(msg.reply_to or sender, TaskFound(ticket=msg.ticket, task=task))
        except Exception as exc:
            self.send(msg.reply_to or sender, QueryFailed(ticket=msg.ticket, error=repr(exc)))

    def receiveMsg_GetRun(self, msg: GetRun, sender: Any) -> None:
        """Answer with the run (or None)."""
        try:
            run = store_ops.load_run(self._reader(), msg.workspace, msg.run_id)
            self.send(msg.reply_to or sender, RunFound(ticket=msg.ticket, run=run))
        except Exception as exc:
            self.send(msg.reply_to or sender, QueryFailed(ticket=msg.ticket, error=repr(exc)))

    def receiveMsg_LockTask(self, msg: LockTask, sender: Any) -> None:
        """Operator lock: committed at once (it is not a peer write and is not audited).

        No Audit commit follows it to carry the fsync, so on a durable store this one
        commits with synchronous=FULL itself before the answer."""
        durable = self.settings is not None and self.settings.durable
        try:
            assert self.conn is not None
            if durable:
                self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.execute("BEGIN IMMEDIATE")
            found = store_ops.set_lock(self.conn, msg.workspace, msg.task_id, msg.locked)
            self.conn.execute("COMMIT")
            self.send(msg.reply_to or sender, TaskLocked(ticket=msg.ticket, found=found))
        except Exception as exc:
            if self.conn is not None and self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            self.send(msg.reply_to or sender, QueryFailed(ticket=msg.ticket, error=repr(exc)))
        finally:
            if durable and self.conn is not None:
                self.conn.execute(f"PRAGMA synchronous={self.batch_sync}")

    def receiveMsg_ActorExitRequest(self, msg: Any, sender: Any) -> None:
        """Shutdown: apply what is buffered so nothing admitted is lost, then close.

        No lease can be waited for now: the batch goes with outbox rows, after telling
        Audit that the lease asked for (if one was) will not be used, so it may chain them."""
        if self.lease_asked is not None:
            self.send(self.audit, LeaseDropped(lease_id=self.lease_asked))
            self.lease_asked = None
        if self.pending:
            self.receiveMsg_Flush(Flush(), sender)
        for probe in self.held_probes:
            self.send(self.audit, probe)
        self.held_probes = []
        if self.conn is not None:
            self.conn.close()
            self.conn = None

