"""Naive twins of the two protections, for the race tests to show what they catch.

Each twin is the production actor with ONE hook overridden, so everything else (wiring,
batching, the store's batch and its SQL, the outbox) is the real code:
- `NaiveChannelIngress`: nothing waits in the channel actor. Presence changes are not
  fenced behind in-flight requests and requests are not serialized: AGH's check-then-act.
- `NaiveTaskStore`: every request of a batch is judged against the state before the batch,
  then the acceptances are applied blindly (SPEC §4 says checks 6-8 and the write are one
  atomic step; this store breaks exactly that).
"""

from __future__ import annotations

import sqlite3

from task_ingress.actors.ingress import ChannelIngress
from task_ingress.actors.storage.store_batch import StoreBatch
from task_ingress.actors.task_store import Applied, TaskStore
from task_ingress.messages.protocol import InFlight, PresenceFlight


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
        """Judge every request against the state before the batch, then apply the
        acceptances without judging again (`StoreBatch.apply` applies onto whatever the
        state is by then: an update over another, a second application of a request)."""
        items = []
        for flight in batch:
            request = flight.submission.request
            assert request is not None
            items.append((flight, request))
        work = StoreBatch.load(conn, [(f.context, r) for f, r in items])
        judged = [(f, *work.judge(f.context, r, self.limits, now)) for f, r in items]
        applied: list[Applied] = []
        for flight, outcome, change in judged:
            box = None
            if change is not None:
                box = work.apply(change, self.outbox_record(flight, outcome))
            applied.append((flight, outcome, box))
        work.write(conn)
        return applied
