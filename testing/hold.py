"""`Hold`: the race tests' store proxy, which stops requests right before the store.

A runtime started with `RuntimeConfig(store_proxy_class=HOLD)` puts it between Capability
and TaskStore, so a test can stop admitted requests right before the store and choose the
moment (and order) in which they reach it. Accepts:
- `Wiring` (from the runtime) -> remembers the real TaskStore; replies `Started`.
- `InFlights` (from Capability; `InFlight` from a test) -> forwarded to TaskStore, or
  each request held while armed.
- any other protocol message on its way to TaskStore (e.g. the router's `Probe` marker) ->
  forwarded, or, while requests are held, kept behind them so it never overtakes them.
- `HoldArm` / `HoldRelease` / `HoldQuery` (from the test, via the driver) -> `HoldState`.
- `ActorExitRequest` -> forwards whatever is still held, so nothing admitted is dropped.
"""

from __future__ import annotations

from typing import Any

from task_ingress.actors.base import GateActor
from task_ingress.actors.log import get_logger
from task_ingress.messages.base import InternalMessage
from task_ingress.messages.frozen import FrozenMessage
from task_ingress.messages.protocol import InFlight, InFlights, Started, Wiring
from task_ingress.testing.messages import HoldArm, HoldQuery, HoldRelease, HoldState


class Hold(GateActor):
    """Holds store-bound requests on command; a pass-through otherwise."""

    def __init__(self) -> None:
        super().__init__()
        self.store: Any = None
        self.holding = False
        self.held: list[InFlight] = []
        # (held requests ahead, message)
        self.behind: list[tuple[int, InternalMessage | FrozenMessage]] = []
        self.log = get_logger(actor="hold")

    def receiveMsg_Wiring(self, msg: Wiring, sender: Any) -> None:
        """Remember the real TaskStore (and Audit, for failures)."""
        self.store, self.audit = msg.store, msg.audit
        self.send(sender, Started(ticket=msg.ticket))

    def receiveMsg_InFlights(self, msg: InFlights, sender: Any) -> None:
        """Pass the batch to the store, or, while armed, keep each request of it: the tests
        hold and release single requests."""
        if not self.holding:
            self.send(self.store, msg)
            return
        for flight in msg.items:
            self.held.append(flight)
            self.log.info("hold.held", request_id=flight.context.request_id)

    def receiveMsg_InFlight(self, msg: InFlight, sender: Any) -> None:
        """One request (a test's): as a batch of one."""
        self.receiveMsg_InFlights(InFlights(items=(msg,)), sender)

    def receiveUnrecognizedMessage(self, message: Any, sender: Any) -> None:
        """Pass other store-bound protocol messages on, in order with the held requests."""
        if not isinstance(message, InternalMessage | FrozenMessage):
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
        """Send the chosen held requests to the store as one batch; stop holding when empty."""
        order = msg.order or tuple(range(len(self.held)))
        if sorted(set(order)) != sorted(order) or any(not 0 <= i < len(self.held) for i in order):
            raise ValueError(f"bad release order {order} for {len(self.held)} held")
        chosen = [self.held[i] for i in order]
        self.held = [f for i, f in enumerate(self.held) if i not in set(order)]
        self.holding = bool(self.held)
        self._forward(chosen)
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
        self._forward(self.held)
        for _, message in self.behind:
            self.send(self.store, message)
        self.held, self.behind = [], []

    def _forward(self, flights: list[InFlight]) -> None:
        """Requests to the store as one message: it judges them in one batch, in order."""
        if flights:
            self.send(self.store, InFlights(items=tuple(flights)))

    def _state(self, ticket: int) -> HoldState:
        return HoldState(ticket=ticket, holding=self.holding,
                         held=tuple(f.context.request_id for f in self.held))
