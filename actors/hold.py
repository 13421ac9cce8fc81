"""Race-test harness actors and seams; production never loads this module.

`Hold` sits between Capability and TaskStore when `Settings.hold_store` is on, so a test can
stop admitted requests right before the store and choose the moment (and order) in which
they reach it. Accepts:
- `Wiring` (from the runtime) -> remembers the real TaskStore; replies `Started`.
- `InFlights` (from Capability) -> each request forwarded to TaskStore singly, or held
  while armed.
- any other protocol message on its way to TaskStore (e.g. the router's `Probe` marker) ->
  forwarded, or, while requests are held, kept behind them so it never overtakes them.
- `HoldArm` / `HoldRelease` / `HoldQuery` (from the test, via the driver) -> `HoldState`.
- `ActorExitRequest` -> forwards whatever is still held, so nothing admitted is dropped.

`naive_apply_batch` is the `Settings.naive_store` seam: AGH's check-then-act store, which
judges every request of a batch against the state before the batch and then applies the
acceptances blindly. The race tests use it to prove they catch a non-atomic store.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from task_ingress.actors.base import GateActor
from task_ingress.actors.log import get_logger
from task_ingress.actors.storage import store_ops
from task_ingress.actors.storage.auditlog import audit_fields
from task_ingress.messages.base import InternalMessage
from task_ingress.messages.harness import HoldArm, HoldQuery, HoldRelease, HoldState
from task_ingress.messages.limits import Limits
from task_ingress.messages.outcomes import Outcome, Task
from task_ingress.messages.protocol import InFlight, InFlights, Started, Wiring
from task_ingress.messages.requests import CreateTask


class Hold(GateActor):
    """Holds store-bound requests on command; a pass-through otherwise."""

    def __init__(self) -> None:
        super().__init__()
        self.store: Any = None
        self.holding = False
        self.held: list[InFlight] = []
        self.behind: list[tuple[int, InternalMessage]] = []  # (held requests ahead, message)
        self.log = get_logger(actor="hold")

    def receiveMsg_Wiring(self, msg: Wiring, sender: Any) -> None:
        """Remember the real TaskStore (and Audit, for failures)."""
        self.store, self.audit = msg.store, msg.audit
        self.send(sender, Started(ticket=msg.ticket))

    def receiveMsg_InFlights(self, msg: InFlights, sender: Any) -> None:
        """Take a batch apart: the tests hold and release single requests."""
        for flight in msg.items:
            self.receiveMsg_InFlight(flight, sender)

    def receiveMsg_InFlight(self, msg: InFlight, sender: Any) -> None:
        """Pass to the store, or keep it while armed."""
        if self.holding:
            self.held.append(msg)
            self.log.info("hold.held", request_id=msg.context.request_id)
        else:
            self.send(self.store, msg)

    def receiveUnrecognizedMessage(self, message: Any, sender: Any) -> None:
        """Pass other store-bound protocol messages on, in order with the held requests."""
        if not isinstance(message, InternalMessage):
            super().receiveUnrecognizedMessage(message, sender)
        elif self.held:
            self.behind.append((len(self.held), message))
        else:
            self.send(self.store, message)

    def receiveMsg_HoldArm(self, msg: HoldArm, sender: Any) -> None:
        """Hold every store-bound request from now on."""
        self.holding = True
        self.send(sender, self._state(msg.ticket))

    def receiveMsg_HoldRelease(self, msg: HoldRelease, sender: Any) -> None:
        """Send the chosen held requests to the store back to back; stop holding when empty."""
        order = msg.order or tuple(range(len(self.held)))
        if sorted(set(order)) != sorted(order) or any(not 0 <= i < len(self.held) for i in order):
            raise ValueError(f"bad release order {order} for {len(self.held)} held")
        chosen = [self.held[i] for i in order]
        self.held = [f for i, f in enumerate(self.held) if i not in set(order)]
        self.holding = bool(self.held)
        for flight in chosen:
            self.send(self.store, flight)
        # A message that arrived behind held requests goes once none of those is held.
        ahead_left = [sum(1 for i in range(n) if i not in set(order)) for n, _ in self.behind]
        waiting = []
        for left, (_, message) in zip(ahead_left, self.behind, strict=True):
            if left:
                waiting.append((left, message))
            else:
                self.send(self.store, message)
        self.behind = waiting
        self.send(sender, self._state(msg.ticket))

    def receiveMsg_HoldQuery(self, msg: HoldQuery, sender: Any) -> None:
        """Report what is held."""
        self.send(sender, self._state(msg.ticket))

    def receiveMsg_ActorExitRequest(self, msg: Any, sender: Any) -> None:
        """Shutdown: let the store answer what is still held."""
        for flight in self.held:
            self.send(self.store, flight)
        for _, message in self.behind:
            self.send(self.store, message)
        self.held, self.behind = [], []

    def _state(self, ticket: int) -> HoldState:
        return HoldState(ticket=ticket, holding=self.holding,
                         held=tuple(f.context.request_id for f in self.held))


def start_hold(asys: Any, wiring: dict[str, Any]) -> Any:
    """Create and wire a `Hold` in front of `wiring["store"]`; return its address."""
    hold = asys.createActor(Hold)
    reply = asys.ask(hold, Wiring(ticket=0, **wiring), 60)
    if not isinstance(reply, Started) or reply.error:
        raise RuntimeError(f"hold actor did not start (reply {reply!r})")
    return hold


def naive_apply_batch(
    conn: sqlite3.Connection, batch: list[InFlight], limits: Limits, now: float
) -> list[tuple[InFlight, Outcome, int | None]]:
    """Check-then-act across a batch: judge all against the old state, then apply blindly.

    This is the bug the real store rules out (SPEC §4: checks 6-8 and the write are one
    atomic step); it exists so the race tests can show they would catch it.
    """
    judged: list[tuple[InFlight, Outcome, Task | None]] = []
    for flight in batch:
        request = flight.submission.request
        assert request is not None
        before = None
        if not isinstance(request, CreateTask):
            before = store_ops.load_task(conn, flight.context.workspace, request.task_id.strip())
        conn.execute("SAVEPOINT naive")
        try:
            outcome = store_ops.judge_and_apply(conn, flight.context, request, limits, now)
        finally:
            conn.execute("ROLLBACK TO naive")
            conn.execute("RELEASE naive")
        judged.append((flight, outcome, before))
    return [_blind_apply(conn, flight, outcome, before, now) for flight, outcome, before in judged]


def _blind_apply(
    conn: sqlite3.Connection, flight: InFlight, outcome: Outcome, before: Task | None,
    now: float,
) -> tuple[InFlight, Outcome, int | None]:
    if not outcome.accepted or outcome.replay:
        return flight, outcome, None
    ctx, request = flight.context, flight.submission.request
    run_id: str | None = None
    if isinstance(request, CreateTask):
        task_id = store_ops._create(conn, ctx, request, now)
    else:
        assert request is not None and before is not None
        task_id, run_id = store_ops._mutate(conn, ctx, request, before, now)
    conn.execute(
        "INSERT OR REPLACE INTO accepted_requests (workspace, channel, peer_id, request_id, "
        "action, task_id, run_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (ctx.workspace, ctx.channel, ctx.peer_id, ctx.request_id, outcome.action.value,
         task_id, run_id),
    )
    outcome = outcome.model_copy(update={"task_id": task_id, "run_id": run_id})
    cur = conn.execute("INSERT INTO outbox (record) VALUES (?)",
                       (json.dumps(audit_fields(flight, outcome)),))
    return flight, outcome, int(cur.lastrowid or 0)
