"""Naive twins of the two protections, for the race tests to show what they catch.

Each twin is the production actor with ONE hook overridden, so everything else (wiring,
batching, the SQL, the outbox) is the real code:
- `NaiveChannelIngress`: nothing waits in the channel actor. Presence changes are not
  fenced behind in-flight requests and requests are not serialized: AGH's check-then-act.
- `NaiveTaskStore`: every request of a batch is judged against the state before the batch,
  then the acceptances are applied blindly (SPEC §4 says checks 6-8 and the write are one
  atomic step; this store breaks exactly that).
"""

from __future__ import annotations

import sqlite3

from task_ingress.actors.ingress import ChannelIngress
from task_ingress.actors.storage import store_ops
from task_ingress.actors.task_store import Applied, TaskStore
from task_ingress.messages.outcomes import Outcome, Task
from task_ingress.messages.protocol import InFlight, PresenceFlight
from task_ingress.messages.requests import CreateTask


class NaiveChannelIngress(ChannelIngress):
    """A channel actor without the fence: every queued item goes on at once."""

    def fence_allows(self, head: InFlight | PresenceFlight) -> bool:
        """Always: no presence change waits for requests, no request for another."""
        return True


class NaiveTaskStore(TaskStore):
    """A store that checks, then acts: judged against the old state, applied blindly."""

    def apply_in_order(
        self, conn: sqlite3.Connection, batch: list[InFlight], now: float
    ) -> list[Applied]:
        """Judge every request against the state before the batch (each judgement is rolled
        back), then apply the acceptances without judging again."""
        judged: list[tuple[InFlight, Outcome, Task | None]] = []
        for flight in batch:
            request = flight.submission.request
            assert request is not None
            before = None
            if not isinstance(request, CreateTask):
                before = store_ops.load_task(conn, flight.context.workspace,
                                             request.task_id.strip())
            conn.execute("SAVEPOINT naive")
            try:
                outcome = store_ops.judge_and_apply(conn, flight.context, request, self.limits,
                                                    now)
            finally:
                conn.execute("ROLLBACK TO naive")
                conn.execute("RELEASE naive")
            judged.append((flight, outcome, before))
        return [self._blind_apply(conn, flight, outcome, before, now)
                for flight, outcome, before in judged]

    def _blind_apply(self, conn: sqlite3.Connection, flight: InFlight, outcome: Outcome,
                     before: Task | None, now: float) -> Applied:
        """The write an acceptance judged against `before` would make, with the real SQL."""
        if not outcome.accepted or outcome.replay:
            return flight, outcome, None
        ctx, request = flight.context, flight.submission.request
        run_id: str | None = None
        if isinstance(request, CreateTask):
            task_id = store_ops._create(conn, ctx, request, now)
        else:
            assert request is not None and before is not None
            task_id, run_id = store_ops._mutate(conn, ctx, request, before, now)
        try:
            outcome = store_ops._accepted(conn, ctx, outcome.action, task_id, run_id)
        except sqlite3.IntegrityError:
            # A repeat applied a second time (the bug this store exists to show): the row of
            # its first application is already there.
            outcome = outcome.model_copy(update={"task_id": task_id, "run_id": run_id})
        return flight, outcome, self.outbox_row(conn, flight, outcome)
