"""IngressRouter actor: the entry point (rules 1 and 2) and the supervisor of channel actors.

Accepts:
- `Wiring` (from the runtime) -> remembers settings and the shared actors; `Started`.
- `SubmitBatch` (from the runtime's driver) -> for each item: a `Submission` with a
  rejection already decided (bad wire bytes, overload), a malformed context (rule 1) or a
  disabled task service (rule 2) goes to Audit (one `Verdicts` per batch); everything else
  is stamped with the driver's address and sent to the `ChannelIngress` of its
  (workspace, channel), spawned on first use, as one `InFlights` per channel.
  `PresenceChange`s go the same way, in order with their channel's requests.
- `Dones` (from Audit, one per group commit) -> regrouped per channel and forwarded to
  the channel actors.
- `GetTask` / `GetRun` / `LockTask` (from the runtime) -> passed to the current TaskStore
  with `reply_to` set, so queries survive a store restart.
- `ChildActorExited` (from Thespian) -> supervision:
  * a channel actor died: the next message of that channel spawns a fresh one, and a
    `Probe` goes down Presence -> Capability -> TaskStore -> Audit; when it comes back
    (`ProbeDone`), every request of the dead channel still unanswered was lost inside it
    and is answered `task_ingress_failed` (nothing of it was applied);
  * the TaskStore died: a new one is started and Capability rewired to it, then every
    channel actor gets a `Probe`, answers which requests it sent on before it
    (`ProbeSuspects`) and sends it down the pipeline. Suspects still unanswered when it
    comes back were lost in the dead store — unless Audit found their committed write in
    the outbox (`ProbeDone.drained`): those are answered accepted, with the record Audit
    chained for them; the rest `task_ingress_failed`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from task_ingress.actors.base import GateActor, failed_verdict
from task_ingress.actors.log import get_logger
from task_ingress.actors.rules import gate
from task_ingress.messages.outcomes import Outcome
from task_ingress.messages.protocol import (
    Dones,
    Drained,
    GetRun,
    GetTask,
    InFlight,
    InFlights,
    LockTask,
    PresenceChange,
    PresenceFlight,
    Probe,
    ProbeDone,
    ProbeSuspects,
    Replied,
    Rewire,
    Settings,
    Started,
    Submission,
    SubmitBatch,
    Sweep,
    Verdict,
    Verdicts,
    Wiring,
)
from task_ingress.messages.reasons import Reason

ChannelKey = tuple[str, str]
STORE_KEY: ChannelKey = ("", "task-store")  # never a channel: "" fails the grammar


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


@dataclass
class PendingProbe:
    """What the router knows of one probe: its suspects (once known) and whether it is back."""

    suspects: set[int] | None = None
    done: ProbeDone | None = None


class IngressRouter(GateActor):
    """Finds, spawns and supervises the ChannelIngress actors and the TaskStore."""

    def __init__(self) -> None:
        super().__init__()
        self.wiring: Wiring | None = None
        self.settings: Settings | None = None
        self.store: Any = None
        self.starting: tuple[Any, int] | None = None
        self.channels: dict[ChannelKey, Any] = {}
        self.keys: dict[str, ChannelKey] = {}
        # Admitted requests not yet answered (bounded by the runtime's in-flight caps).
        self.unanswered: dict[int, InFlight] = {}
        self.probes: dict[int, PendingProbe] = {}
        # Writes a dead store committed, as found in the outbox by whichever probe got there
        # first; shared by all probes of one failure, dropped when none is pending.
        self.recovered: dict[tuple[str, str, str, str], Drained] = {}
        self.probe_ids = itertools.count(1)
        self.stopping = False
        self.log = get_logger(actor="router")

    def receiveMsg_Wiring(self, msg: Wiring, sender: Any) -> None:
        """Remember the shared actors, start the TaskStore (our child); answer `Started` with
        its address once it has opened the store."""
        self.wiring, self.settings, self.audit = msg, msg.settings, msg.audit
        self.starting = (sender, msg.ticket)
        self._start_store()

    def _start_store(self) -> None:
        assert self.wiring is not None and self.settings is not None
        self.store = self.createActor(self.settings.store_actor_class)
        self.keys[str(self.store)] = STORE_KEY
        self.send(self.store, self.wiring.model_copy(update={"store": self.store}))

    def receiveMsg_Started(self, msg: Started, sender: Any) -> None:
        """The TaskStore is ready: report to whoever wired us (once)."""
        if self.starting is not None:
            to, ticket = self.starting
            self.starting = None
            self.send(to, Started(ticket=ticket, error=msg.error, address=self.store))
        elif msg.error:
            self.log.error("router.store_restart_failed", error=msg.error)

    def receiveMsg_SubmitBatch(self, msg: SubmitBatch, sender: Any) -> None:
        """Route every item of the batch; `sender` is where the answers go.

        Admitted requests go to their channel actor as one `InFlights` per channel; a
        channel's presence change first sends the requests that came before it, so each
        channel actor sees its items in the driver's order."""
        groups: dict[ChannelKey, list[InFlight]] = {}
        rejected: list[Verdict] = []
        for item in msg.items:
            if isinstance(item, PresenceChange):
                key = (item.workspace, item.channel)
                self._send_group(key, groups.pop(key, []), rejected)
                self.send(self._channel(*key), PresenceFlight(change=item, reply_to=sender))
                continue
            try:
                routed = self._route(item, sender)
            except Exception as exc:  # one bad item must not strand the rest of the batch
                self.log.error("router.route_failed", error=repr(exc),
                               request_id=gate.safe_field(item.context.request_id))
                flight = InFlight(submission=item, context=item.context, reply_to=sender)
                rejected.append(failed_verdict(flight))
                continue
            if isinstance(routed, Verdict):
                rejected.append(routed)
            else:
                key = (routed.context.workspace, routed.context.channel)
                groups.setdefault(key, []).append(routed)
        for key, flights in groups.items():
            self._send_group(key, flights, rejected)
        if rejected:
            self.send(self.audit, Verdicts(items=tuple(rejected)))

    def _send_group(self, key: ChannelKey, flights: list[InFlight], rejected: list[Verdict]
                    ) -> None:
        if not flights:
            return
        try:
            target = self._channel(*key)
        except Exception as exc:  # cannot start the channel actor: answer, never strand
            self.log.error("router.channel_start_failed", workspace=key[0], channel=key[1],
                           error=repr(exc))
            for flight in flights:
                self.unanswered.pop(flight.submission.ticket, None)
                rejected.append(failed_verdict(flight))
            return
        self.send(target, InFlights(items=tuple(flights)))

    def _route(self, sub: Submission, reply_to: Any) -> InFlight | Verdict:
        """A rejection decided here (as a Verdict), or the admitted request (as an InFlight,
        remembered as unanswered)."""
        assert self.wiring is not None and self.settings is not None
        ctx = gate.normalize_context(sub.context)
        reason = pre_gate_reason(sub, self.settings.tasks_enabled)
        if reason is not None:
            flight = InFlight(submission=sub, context=ctx, reply_to=reply_to)
            rejected = Outcome.rejected(gate.safe_field(ctx.request_id), sub.action, reason)
            return Verdict(flight=flight, outcome=rejected)
        # Audit reports Dones to us, so we know what a channel actor held if it dies.
        flight = InFlight(submission=sub, context=ctx, reply_to=reply_to,
                          router=self.myAddress, checked=True)
        self.unanswered[sub.ticket] = flight
        return flight

    def receiveMsg_Dones(self, msg: Dones, sender: Any) -> None:
        """Pass finished tickets on to their channel actors (if still the same ones)."""
        self._finish(msg.tickets)

    def _finish(self, tickets: tuple[int, ...]) -> None:
        by_channel: dict[ChannelKey, list[int]] = {}
        for ticket in tickets:
            flight = self.unanswered.pop(ticket, None)
            if flight is not None:
                key = (flight.context.workspace, flight.context.channel)
                by_channel.setdefault(key, []).append(ticket)
        for key, done in by_channel.items():
            target = self.channels.get(key)
            if target is not None:
                self.send(target, Dones(tickets=tuple(done)))

    def receiveMsg_Sweep(self, msg: Sweep, sender: Any) -> None:
        """Pass the driver's timer tick to Presence."""
        if self.wiring is not None:
            self.send(self.wiring.presence, msg)

    def receiveMsg_GetTask(self, msg: GetTask, sender: Any) -> None:
        """Pass to the current store; it answers the caller."""
        self.send(self.store, msg.model_copy(update={"reply_to": sender}))

    def receiveMsg_GetRun(self, msg: GetRun, sender: Any) -> None:
        """Pass to the current store; it answers the caller."""
        self.send(self.store, msg.model_copy(update={"reply_to": sender}))

    def receiveMsg_LockTask(self, msg: LockTask, sender: Any) -> None:
        """Pass to the current store; it answers the caller."""
        self.send(self.store, msg.model_copy(update={"reply_to": sender}))

    def receiveMsg_ChildActorExited(self, msg: Any, sender: Any) -> None:
        """A child died: restart it and find what it took with it."""
        key = self.keys.pop(str(msg.childAddress), None)
        if key is None or self.stopping or self.wiring is None:
            return
        if key == STORE_KEY:
            self._store_died()
            return
        self.channels.pop(key, None)
        suspects = {t for t, f in self.unanswered.items()
                    if (f.context.workspace, f.context.channel) == key}
        self.log.warning("router.channel_actor_died", workspace=key[0], channel=key[1],
                         unanswered=len(suspects))
        if suspects:
            probe_id = next(self.probe_ids)
            self.probes[probe_id] = PendingProbe(suspects=suspects)
            self.send(self.wiring.presence, Probe(probe_id=probe_id, reply_to=self.myAddress))

    def _store_died(self) -> None:
        assert self.wiring is not None
        self.log.error("router.store_died", unanswered=len(self.unanswered))
        self._start_store()
        # Rewire goes out before any probe: Capability sees it before the probe reaches it.
        self.send(self.wiring.capability, Rewire(store=self.store))
        for address in self.channels.values():
            probe_id = next(self.probe_ids)
            self.probes[probe_id] = PendingProbe()
            self.send(address, Probe(probe_id=probe_id, reply_to=self.myAddress))

    def receiveMsg_ProbeSuspects(self, msg: ProbeSuspects, sender: Any) -> None:
        """A channel actor's requests that went on before the probe."""
        probe = self.probes.get(msg.probe_id)
        if probe is not None:
            probe.suspects = set(msg.tickets)
            self._settle(msg.probe_id, probe)

    def receiveMsg_ProbeDone(self, msg: ProbeDone, sender: Any) -> None:
        """Everything sent before the probe is answered or recovered."""
        probe = self.probes.get(msg.probe_id)
        if probe is not None:
            probe.done = msg
            self._settle(msg.probe_id, probe)

    def _settle(self, probe_id: int, probe: PendingProbe) -> None:
        """With suspects known and the probe back: recover or fail what is still open."""
        if probe.suspects is None or probe.done is None:
            return
        del self.probes[probe_id]
        for d in probe.done.drained:
            self.recovered[(d.workspace, d.channel, d.peer_id, d.request_id)] = d
        lost: list[Verdict] = []
        for ticket in lost_tickets(probe.suspects, self.unanswered):
            flight = self.unanswered[ticket]
            ctx = flight.context
            found = self.recovered.pop(
                (ctx.workspace, ctx.channel, ctx.peer_id, ctx.request_id), None)
            if found is not None:
                # Committed by the dead store; Audit has just chained its record.
                outcome = Outcome(request_id=ctx.request_id, action=flight.submission.action,
                                  accepted=True, task_id=found.task_id, run_id=found.run_id)
                self.send(flight.reply_to, Replied(ticket=ticket, outcome=outcome))
                self._finish((ticket,))
                continue
            self.log.error("router.request_lost", request_id=ctx.request_id,
                           peer_id=ctx.peer_id, channel=ctx.channel)
            lost.append(failed_verdict(flight))
        if lost:
            self.send(self.audit, Verdicts(items=tuple(lost)))
        if not self.probes:
            self.recovered.clear()

    def receiveMsg_ActorExitRequest(self, msg: Any, sender: Any) -> None:
        """Shutdown: children exiting now are not failures."""
        self.stopping = True

    def _channel(self, workspace: str, channel: str) -> Any:
        key = (workspace, channel)
        address = self.channels.get(key)
        if address is None:
            assert self.wiring is not None and self.settings is not None
            address = self.createActor(self.settings.channel_actor_class)
            self.send(address, self.wiring)
            self.channels[key] = address
            self.keys[str(address)] = key
        return address
