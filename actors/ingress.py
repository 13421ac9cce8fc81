"""ChannelIngress actor: one per (workspace, channel); orders a channel's writes and presence.

Accepts:
- `Wiring` (from the router) -> remembers Presence, Audit and the pipeline depth.
- `InFlights` (from the router: one message per channel per driver batch) -> queued in
  arrival order; started through Presence while fewer than `channel_pipeline` requests of
  the channel, and none of the same peer, are in flight (1 = strictly one request at a
  time, end to end); the requests one pump starts go to Presence as one `InFlights`.
  Admitted requests stay in arrival order all the way to the store: every hop to
  TaskStore is one sender-receiver pair.
- `PresenceFlight` (from the router) -> the fence: a greet or leave waits at the head of
  the queue until NO request of the channel is in flight, then goes to Presence; requests
  behind it wait for it. So a change never lands between a request's checks and its
  commit, and every later request is checked after it.
- `Dones` (from Audit via the router) -> requests are answered; start what the queue
  allows. The router holds a channel's `Dones` back while nothing here waits for them
  (none of the channel's requests is unanswered and no presence change was routed here
  behind one) and hands them over with its next message: as `InFlights.dones`, taken
  before the items, or as a `Dones` ahead of anything else.
- `Retire` (from the router's sweep) -> with nothing queued or in flight, passed on to
  Presence behind every presence change already sent there (Presence answers whether the
  channel is vacant); otherwise answered `Retired(vacant=False)` at once.

The queue is bounded by the runtime's per-channel in-flight cap (excess is rejected
`overloaded` before it is sent here), so nothing here grows without bound.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from task_ingress.actors.base import GateActor
from task_ingress.actors.log import get_logger
from task_ingress.messages.protocol import (
    Dones,
    InFlight,
    InFlights,
    PresenceFlight,
    Probe,
    ProbeSuspects,
    Retire,
    Retired,
    Wiring,
)


def may_start(head: InFlight | PresenceFlight, in_flight: dict[int, str], pipeline: int) -> bool:
    """The fence rule: a presence change needs an idle channel; a request a free slot and no
    other request of its own peer in flight.

    The per-peer rule matters: were a peer's second request checked while its first still
    waits on the store, the second could see the peer expired (and say so) before the first
    commits as accepted — an accepted write after the expiry was observable.
    """
    if isinstance(head, PresenceFlight):
        return not in_flight
    return len(in_flight) < pipeline and head.context.peer_id not in in_flight.values()


class ChannelIngress(GateActor):
    """Serializes a channel's presence changes with its writes."""

    def __init__(self) -> None:
        super().__init__()
        self.presence: Any = None
        self.in_flight: dict[int, str] = {}  # ticket -> peer
        self.pipeline = 1
        self.queue: deque[InFlight | PresenceFlight] = deque()
        self.log = get_logger(actor="channel_ingress")

    def receiveMsg_Wiring(self, msg: Wiring, sender: Any) -> None:
        """Remember Presence and Audit (the router does not wait for an answer)."""
        self.presence, self.audit = msg.presence, msg.audit
        self.pipeline = max(1, msg.settings.channel_pipeline)

    def receiveMsg_InFlights(self, msg: InFlights, sender: Any) -> None:
        """Take the answered tickets it carries, then start the requests now, or queue them
        behind what must go first."""
        if msg.dones:
            self._answered(msg.dones)
        self.queue.extend(msg.items)
        self._pump()

    def receiveMsg_PresenceFlight(self, msg: PresenceFlight, sender: Any) -> None:
        """Fence a presence change behind the channel's in-flight requests."""
        self.queue.append(msg)
        self._pump()

    def receiveMsg_Dones(self, msg: Dones, sender: Any) -> None:
        """Requests of this channel are answered; start what the queue allows."""
        self._answered(msg.tickets)
        self._pump()

    def _answered(self, tickets: tuple[int, ...]) -> None:
        for ticket in tickets:
            if ticket not in self.in_flight:
                self.log.warning("ingress.unexpected_done", ticket=ticket)
            self.in_flight.pop(ticket, None)

    def receiveMsg_Probe(self, msg: Probe, sender: Any) -> None:
        """Tell the router which requests went on before the marker, then send it after them
        (not behind the queue: what is still queued here is not a suspect)."""
        self.send(sender, ProbeSuspects(probe_id=msg.probe_id, tickets=tuple(self.in_flight)))
        self.send(self.presence, msg)

    def receiveMsg_Retire(self, msg: Retire, sender: Any) -> None:
        """The router would stop this actor: only if idle, and Presence finds no peer here."""
        if self.queue or self.in_flight:
            self.send(msg.reply_to, Retired(workspace=msg.workspace, channel=msg.channel,
                                            nonce=msg.nonce, sweep=msg.sweep, vacant=False))
            return
        self.send(self.presence, msg)

    def _pump(self) -> None:
        """Start what the fence allows; requests started together travel as one message."""
        started: list[InFlight] = []
        while self.queue and self.fence_allows(self.queue[0]):
            item = self.queue.popleft()
            if isinstance(item, PresenceFlight):
                # Only a fence that lets a change pass a busy channel gets here with requests
                # started: they go first, in arrival order.
                self._start(started)
                started = []
                self.send(self.presence, item)
                continue
            started.append(item)
            self.in_flight[item.submission.ticket] = item.context.peer_id
        self._start(started)

    def fence_allows(self, head: InFlight | PresenceFlight) -> bool:
        """Whether the head of the queue may go on now: the fence rule, `may_start`.

        The one hook a test twin overrides (task_ingress.testing.NaiveChannelIngress)."""
        return may_start(head, self.in_flight, self.pipeline)

    def _start(self, flights: list[InFlight]) -> None:
        if flights:
            self.send(self.presence, InFlights(items=tuple(flights)))
