"""IngressRouter actor: the entry point (rules 1 and 2) and the supervisor of channel actors.

Accepts:
- `Wiring` (from the runtime) -> remembers settings and the shared actors; `Started`.
- `SubmitBatch` (from the runtime's driver) -> for each item: a `Submission` with a
  rejection already decided (bad wire bytes, overload), a malformed context (rule 1) or a
  disabled task service (rule 2) goes straight to Audit as a `Verdict`; everything else is
  stamped with the driver's address and sent to the `ChannelIngress` of its
  (workspace, channel), spawned on first use. `PresenceChange`s go the same way.
- `Done` (from Audit) -> forwarded to the request's channel actor.
- `ChildActorExited` (from Thespian) -> a channel actor died: the next message of that
  channel spawns a fresh one, and a `Probe` goes down the pipeline; when it comes back
  (`ProbeDone`), every request of the dead channel still unanswered was lost inside it
  and is answered `task_ingress_failed` (nothing of it was applied).
"""

from __future__ import annotations

import itertools
from typing import Any

from actors import gate
from actors.base import GateActor, failed_verdict
from actors.ingress import ChannelIngress
from actors.log import get_logger
from messages.outcomes import Outcome
from messages.protocol import (
    Done,
    InFlight,
    PresenceChange,
    PresenceFlight,
    Probe,
    ProbeDone,
    Settings,
    Started,
    Submission,
    SubmitBatch,
    Verdict,
    Wiring,
)
from messages.reasons import Reason

ChannelKey = tuple[str, str]


def pre_gate_reason(sub: Submission, tasks_enabled: bool) -> Reason | None:
    """Rejections decided before any channel is involved: preset, rule 1, rule 2."""
    if sub.preset is not None:
        return sub.preset
    if sub.request is None or gate.check_context(sub.context) is not None:
        return Reason.INVALID_REQUEST
    if not tasks_enabled:
        return Reason.TASK_INGRESS_UNAVAILABLE
    return None


def lost_tickets(suspects: set[int], unanswered: dict[int, InFlight]) -> list[int]:
    """Suspects still unanswered once the probe is back: they never left the dead actor."""
    return sorted(t for t in suspects if t in unanswered)


class IngressRouter(GateActor):
    """Finds, spawns and supervises one ChannelIngress per (workspace, channel)."""

    def __init__(self) -> None:
        super().__init__()
        self.wiring: Wiring | None = None
        self.settings: Settings | None = None
        self.channels: dict[ChannelKey, Any] = {}
        self.keys: dict[str, ChannelKey] = {}
        # Admitted requests not yet answered (bounded by the runtime's in-flight caps).
        self.unanswered: dict[int, InFlight] = {}
        self.probes: dict[int, set[int]] = {}
        self.probe_ids = itertools.count(1)
        self.stopping = False
        self.log = get_logger(actor="router")

    def receiveMsg_Wiring(self, msg: Wiring, sender: Any) -> None:
        """Remember the shared actors; channel actors get the same wiring."""
        self.wiring, self.settings, self.audit = msg, msg.settings, msg.audit
        self.send(sender, Started(ticket=msg.ticket))

    def receiveMsg_SubmitBatch(self, msg: SubmitBatch, sender: Any) -> None:
        """Route every item of the batch; `sender` is where the answers go."""
        for item in msg.items:
            if isinstance(item, PresenceChange):
                target = self._channel(item.workspace, item.channel)
                self.send(target, PresenceFlight(change=item, reply_to=sender))
                continue
            try:
                self._route(item, sender)
            except Exception as exc:  # one bad item must not strand the rest of the batch
                self.log.error("router.route_failed", error=repr(exc),
                               request_id=gate.safe_field(item.context.request_id))
                flight = InFlight(submission=item, context=item.context, reply_to=sender)
                self.send(self.audit, failed_verdict(flight))

    def _route(self, sub: Submission, reply_to: Any) -> None:
        assert self.wiring is not None and self.settings is not None
        ctx = gate.normalize_context(sub.context)
        reason = pre_gate_reason(sub, self.settings.tasks_enabled)
        if reason is not None:
            flight = InFlight(submission=sub, context=ctx, reply_to=reply_to)
            rejected = Outcome(
                request_id=gate.safe_field(ctx.request_id), action=sub.action, accepted=False,
                reason=reason,
            )
            self.send(self.wiring.audit, Verdict(flight=flight, outcome=rejected))
            return
        target = self._channel(ctx.workspace, ctx.channel)
        # Audit reports Done to us, so we know what a channel actor held if it dies.
        # model_construct: every field was validated already; this is the per-request path.
        flight = InFlight.model_construct(submission=sub, context=ctx, reply_to=reply_to,
                                          channel_actor=self.myAddress)
        self.unanswered[sub.ticket] = flight
        self.send(target, flight)

    def receiveMsg_Done(self, msg: Done, sender: Any) -> None:
        """Pass Done to the channel actor of the request (if it is still the same one)."""
        flight = self.unanswered.pop(msg.ticket, None)
        if flight is None:
            return
        target = self.channels.get((flight.context.workspace, flight.context.channel))
        if target is not None:
            self.send(target, msg)

    def receiveMsg_ChildActorExited(self, msg: Any, sender: Any) -> None:
        """A channel actor died: replace it lazily and find what it took with it."""
        key = self.keys.pop(str(msg.childAddress), None)
        if key is None or self.stopping:
            return
        self.channels.pop(key, None)
        suspects = {t for t, f in self.unanswered.items()
                    if (f.context.workspace, f.context.channel) == key}
        self.log.warning("router.channel_actor_died", workspace=key[0], channel=key[1],
                         unanswered=len(suspects))
        if suspects and self.wiring is not None:
            probe_id = next(self.probe_ids)
            self.probes[probe_id] = suspects
            self.send(self.wiring.presence, Probe(probe_id=probe_id, reply_to=self.myAddress))

    def receiveMsg_ProbeDone(self, msg: ProbeDone, sender: Any) -> None:
        """Everything sent before the probe is answered: the rest was lost in the dead actor."""
        for ticket in lost_tickets(self.probes.pop(msg.probe_id, set()), self.unanswered):
            flight = self.unanswered[ticket]
            self.log.error("router.request_lost", request_id=flight.context.request_id,
                           peer_id=flight.context.peer_id, channel=flight.context.channel)
            self.send(self.audit, failed_verdict(flight))

    def receiveMsg_ActorExitRequest(self, msg: Any, sender: Any) -> None:
        """Shutdown: children exiting now are not failures."""
        self.stopping = True

    def _channel(self, workspace: str, channel: str) -> Any:
        key = (workspace, channel)
        address = self.channels.get(key)
        if address is None:
            assert self.wiring is not None
            address = self.createActor(ChannelIngress)
            self.send(address, self.wiring)
            self.channels[key] = address
            self.keys[str(address)] = key
        return address
