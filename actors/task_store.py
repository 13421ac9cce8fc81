"""TaskStore actor: the only writer of tasks and runs; store-side checks and writes are atomic.

Accepts:
- `Wiring` (from the runtime) -> opens the store file; replies `Started`.
- `InFlights` (from Capability) -> buffered; on
  `Flush` every buffered request is judged (replay, rules 5-10) and applied in arrival
  order inside ONE transaction (one savepoint; a request that raises sends the batch
  through again with one savepoint each, so it fails alone), with an outbox row per accepted
  mutation; after COMMIT they go to Audit as one `Verdicts` message. A failed commit
  turns that batch's acceptances into `task_ingress_failed`, with nothing applied.
- `GetTask` / `GetRun` / `LockTask` (from the runtime, via the router, its parent and
  supervisor) -> `TaskFound` / `RunFound` / `TaskLocked` to the message's `reply_to`.
- `Flush` (from itself).
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from task_ingress.actors.base import GateActor, failed_verdict
from task_ingress.actors.log import get_logger
from task_ingress.actors.storage import store_ops
from task_ingress.actors.storage.auditlog import audit_fields
from task_ingress.actors.storage.schema import connect, encode_outbox
from task_ingress.messages.limits import SPEC_LIMITS
from task_ingress.messages.outcomes import Outcome
from task_ingress.messages.protocol import (
    Flush,
    GetRun,
    GetTask,
    InFlight,
    InFlights,
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

Applied = tuple[InFlight, Outcome, int | None]
"""A request judged (and, when accepted, applied) in a batch: its outcome and outbox row id."""


class InjectedCommitFailure(sqlite3.OperationalError):
    """Raised by the fault-injection seam (`Settings.fail_commit_at`) in place of a disk error."""


class TaskStore(GateActor):
    """Owner of the tasks, runs, accepted-request and outbox tables."""

    def __init__(self) -> None:
        super().__init__()
        self.settings: Settings | None = None
        self.conn: sqlite3.Connection | None = None
        self.audit: Any = None
        self.limits = SPEC_LIMITS
        self.pending: list[InFlight] = []
        self.flush_queued = False
        self.commits = 0
        self.log = get_logger(actor="task_store")

    def receiveMsg_Wiring(self, msg: Wiring, sender: Any) -> None:
        """Open the store file (in this actor's own process) and remember Audit's address."""
        try:
            s = msg.settings
            self.settings, self.audit = s, msg.audit
            self.limits = s.limits
            self.conn = connect(s.store_path, s.durable)
            self.send(sender, Started(ticket=msg.ticket))
        except Exception as exc:
            self.send(sender, Started(ticket=msg.ticket, error=f"task store: {exc!r}"))

    def receiveMsg_InFlights(self, msg: InFlights, sender: Any) -> None:
        """Buffer admitted requests until the Flush behind them."""
        self.pending.extend(msg.items)
        if not self.flush_queued:
            self.flush_queued = True
            self.send(self.myAddress, Flush())

    def receiveMsg_Flush(self, msg: Flush, sender: Any) -> None:
        """Judge and apply the buffered requests in one transaction, then hand them to Audit."""
        self.flush_queued = False
        batch, self.pending = self.pending, []
        if not batch:
            return
        try:
            verdicts = self._apply_batch(batch)
        except Exception as exc:  # a bug, not a disk error: answer everyone, apply nothing
            if self.conn is not None and self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            self.log.error("store.batch_failed", error=repr(exc),
                           request_ids=[f.context.request_id for f in batch])
            verdicts = [failed_verdict(f) for f in batch]
        self.send(self.audit, Verdicts(items=tuple(verdicts)))

    def _apply_batch(self, batch: list[InFlight]) -> list[Verdict]:
        conn = self.conn
        assert conn is not None
        now = time.time()
        results: list[Applied] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            results = self.apply_in_order(conn, batch, now)
            self.commits += 1
            if self.settings and self.commits == self.settings.fail_commit_at:
                raise InjectedCommitFailure("disk I/O error (injected)")
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self.log.error(
                "store.commit_failed", error=repr(exc),
                request_ids=[f.context.request_id for f in batch],
            )
            return [failed_verdict(f) for f in batch]
        return [Verdict(flight=f, outcome=o, outbox_id=box)
                for f, o, box in results]

    def apply_in_order(
        self, conn: sqlite3.Connection, batch: list[InFlight], now: float
    ) -> list[Applied]:
        """The batch in arrival order under ONE savepoint (fast path: two statements per
        batch, not per request). A request that raises a non-database error (a bug) sends the
        batch back to the savepoint and through the slow path, one savepoint per request, so
        that it alone fails and its neighbours are judged exactly as before.

        Runs inside the batch's transaction. The one hook a test twin overrides
        (task_ingress.testing.NaiveTaskStore)."""
        conn.execute("SAVEPOINT batch")
        try:
            results = [self._apply(conn, flight, now) for flight in batch]
        except sqlite3.Error:
            raise  # a database error fails the whole batch: the commit is suspect
        except Exception:
            conn.execute("ROLLBACK TO batch")
            conn.execute("RELEASE batch")
            return [self._apply_one(conn, flight, now) for flight in batch]
        conn.execute("RELEASE batch")
        return results

    def _apply(
        self, conn: sqlite3.Connection, flight: InFlight, now: float
    ) -> Applied:
        """Judge and apply one request, with its outbox row when it is an accepted write."""
        request = flight.submission.request
        assert request is not None
        outcome = store_ops.judge_and_apply(conn, flight.context, request, self.limits, now)
        return flight, outcome, self.outbox_row(conn, flight, outcome)

    @staticmethod
    def outbox_row(conn: sqlite3.Connection, flight: InFlight, outcome: Outcome) -> int | None:
        """The outbox row of an accepted write (its id), or None for anything else.

        The row commits with the mutation: a crash before Audit chains it leaves the row
        behind, and Audit's start-up drain turns it into the record."""
        if not outcome.accepted or outcome.replay:
            return None
        cur = conn.execute("INSERT INTO outbox (record) VALUES (?)",
                           (encode_outbox(audit_fields(flight, outcome)),))
        return int(cur.lastrowid or 0)

    def _apply_one(
        self, conn: sqlite3.Connection, flight: InFlight, now: float
    ) -> Applied:
        """One request under a savepoint: a failure undoes it alone, never its neighbours."""
        conn.execute("SAVEPOINT one")
        try:
            result = self._apply(conn, flight, now)
            conn.execute("RELEASE one")
            return result
        except sqlite3.Error:
            raise  # a database error fails the whole batch: the commit is suspect
        except Exception as exc:
            conn.execute("ROLLBACK TO one")
            conn.execute("RELEASE one")
            self.log.error(
                "store.request_failed", error=repr(exc), request_id=flight.context.request_id,
                peer_id=flight.context.peer_id, channel=flight.context.channel,
            )
            return flight, failed_verdict(flight).outcome, None

    def receiveMsg_Probe(self, msg: Probe, sender: Any) -> None:
        """Commit what is buffered, then pass the marker on behind its verdicts."""
        self.receiveMsg_Flush(Flush(), sender)
        self.send(self.audit, msg)

    def receiveMsg_GetTask(self, msg: GetTask, sender: Any) -> None:
        """Answer with the task (or None)."""
        try:
            assert self.conn is not None
            task = store_ops.load_task(self.conn, msg.workspace, msg.task_id)
            self.send(msg.reply_to or sender, TaskFound(ticket=msg.ticket, task=task))
        except Exception as exc:
            self.send(msg.reply_to or sender, QueryFailed(ticket=msg.ticket, error=repr(exc)))

    def receiveMsg_GetRun(self, msg: GetRun, sender: Any) -> None:
        """Answer with the run (or None)."""
        try:
            assert self.conn is not None
            run = store_ops.load_run(self.conn, msg.workspace, msg.run_id)
            self.send(msg.reply_to or sender, RunFound(ticket=msg.ticket, run=run))
        except Exception as exc:
            self.send(msg.reply_to or sender, QueryFailed(ticket=msg.ticket, error=repr(exc)))

    def receiveMsg_LockTask(self, msg: LockTask, sender: Any) -> None:
        """Operator lock: committed at once (it is not a peer write and is not audited)."""
        try:
            assert self.conn is not None
            self.conn.execute("BEGIN IMMEDIATE")
            found = store_ops.set_lock(self.conn, msg.workspace, msg.task_id, msg.locked)
            self.conn.execute("COMMIT")
            self.send(msg.reply_to or sender, TaskLocked(ticket=msg.ticket, found=found))
        except Exception as exc:
            if self.conn is not None and self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            self.send(msg.reply_to or sender, QueryFailed(ticket=msg.ticket, error=repr(exc)))

    def receiveMsg_ActorExitRequest(self, msg: Any, sender: Any) -> None:
        """Shutdown: apply what is buffered so nothing admitted is lost, then close."""
        if self.pending:
            self.receiveMsg_Flush(Flush(), sender)
        if self.conn is not None:
            self.conn.close()
            self.conn = None

