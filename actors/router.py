"""IngressRouter actor: the entry point; rule 1 and 2, then the channel's own actor.

Accepts:
- `Wiring` (from the runtime) -> remembers settings and the shared actors; `Started`.
- `SubmitBatch` (from the runtime's driver) -> for each item: a `Submission` with a
  rejection already decided (bad wire bytes, overload), a malformed context (rule 1) or a
  disabled task service (rule 2) goes straight to Audit as a `Verdict`; everything else is
  stamped with the driver's address and sent to the `ChannelIngress` of its
  (workspace, channel), spawned on first use. `PresenceChange`s go the same way.
"""

from __future__ import annotations

from typing import Any

from actors import gate
from actors.base import GateActor, failed_verdict
from actors.ingress import ChannelIngress
from actors.log import get_logger
from messages.outcomes import Outcome
from messages.protocol import (
    InFlight,
    PresenceChange,
    PresenceFlight,
    Settings,
    Started,
    Submission,
    SubmitBatch,
    Verdict,
    Wiring,
)
from messages.reasons import Reason


def pre_gate_reason(sub: Submission, tasks_enabled: bool) -> Reason | None:
    """Rejections decided before any channel is involved: preset, rule 1, rule 2."""
    if sub.preset is not None:
        return sub.preset
    if sub.request is None or gate.check_context(sub.context) is not None:
        return Reason.INVALID_REQUEST
    if not tasks_enabled:
        return Reason.TASK_INGRESS_UNAVAILABLE
    return None


class IngressRouter(GateActor):
    """Finds or spawns one ChannelIngress per (workspace, channel)."""

    def __init__(self) -> None:
        super().__init__()
        self.wiring: Wiring | None = None
        self.settings: Settings | None = None
        self.channels: dict[tuple[str, str], Any] = {}

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
            else:
                try:
                    self._route(item, sender)
                except Exception as exc:  # one bad item must not strand the rest of the batch
                    get_logger(actor="router").error(
                        "router.route_failed", error=repr(exc),
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
        self.send(target, InFlight(submission=sub, context=ctx, reply_to=reply_to,
                                   channel_actor=target))

    def _channel(self, workspace: str, channel: str) -> Any:
        key = (workspace, channel)
        address = self.channels.get(key)
        if address is None:
            assert self.wiring is not None
            address = self.createActor(ChannelIngress)
            self.send(address, self.wiring)
            self.channels[key] = address
        return address
