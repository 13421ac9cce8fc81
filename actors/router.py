"""IngressRouter actor: the entry point (rules 1 and 2) and the supervisor of channel actors.

Accepts:
- `Wiring` (from the runtime) -> remembers settings and the shared actors; `Started`.
- `SubmitBatch` (from the runtime's driver) -> for each item: a `Submission` with a
  rejection already decided (bad wire bytes, overload), a malformed context (rule 1) or a
  disabled task service (rule 2) goes to Audit (one `Verdicts` per batch); everything else
  is stamped with the driver's address and sent to the `ChannelIngress` of its
  (workspace, channel) as one `InFlights` per channel. `PresenceChange`s go the same way,
  in order with their channel's requests; a greet spawns the channel actor on first use
  (or is refused `overloaded` when `max_channels` actors exist). A channel without an actor
  has no visible peer: its requests are `peer_not_found` here and a leave there changes
  nothing (answered at once).
- `Dones` (from Audit, one per group commit) -> regrouped per channel and forwarded to
  the channel actors; a channel's are held back while nothing there waits for them (none
  of its requests is still unanswered, and no presence change was routed to it while one
  was: `holds_dones`) and go with the next message the router sends it (in its
  `InFlights`, or as a `Dones` just before anything else). An idle channel thus costs no
  message per commit.
- `Sweep` (from the driver's timer, or `IngressRuntime.sweep()`) -> passed to Presence
  (expiry), and a `Retire` to each channel actor that may be idle: nothing of it
  unanswered, no greet routed to it for 2 x greet_interval. `Retired(vacant=True)` for an
  actor sent nothing since stops it (docs/race-freedom.md, "Stopping idle channel
  actors"). When Presence's part (`Swept`, via Capability) and every `Retired` are back:
  `ChannelCount` to the driver.
- `GetTask` / `GetRun` / `LockTask` (from the runtime) -> passed to the current TaskStore
  with `reply_to` set, so queries survive a store restart.
- `ChildActorExited` (from Thespian) -> supervision:
  * a channel actor died: the next message of that channel spawns a fresh one (its slot
    stays, as peers may still be visible there), and a
    `Probe` goes down Presence -> Capability -> TaskStore -> Audit; when it comes back
    (`ProbeDone`), every request of the dead channel still unanswered was lost inside it
    and is answered `task_ingress_failed` (nothing of it was applied);
  * the TaskStore died: a new one is started and Capability rewired to it, then every
    channel actor gets a `Probe`, answers which requests it sent on before it
    (`ProbeSuspects`) and sends it down the pipeline. Suspects still unanswered when it
    comes back were lost in the dead store — unless their outcome was committed
    (`ProbeDone.drained`: a write Audit found in the outbox and chained, or a record the
    store chained under a lease Audit took back): those are answered with the outcome
    recorded; the rest `task_ingress_failed`. A probe still out when the store died (a
    channel actor died just before) may have died with it: it is sent again.
"""

from __future__ import annotations

import itertools
from collections.abc import Container
from dataclasses import dataclass
from typing import Any

from task_ingress.actors.base import (
    GateActor,
    failed_verdict,
    presence_verdict,
    rejected_verdict,
)
from task_ingress.actors.log import get_logger
from task_ingress.actors.rules import gate
from task_ingress.actors.rules.shards import shard_of
from task_ingress.actors.storage.auditlog import record_key
from task_ingress.messages.outcomes import Outcome
from task_ingress.messages.protocol import (
    ChannelCount,
    Dones,
    Drained,
    GetRun,
    GetTask,
    InFlight,
    InFlights,
    LockTask,
    PresenceApplied,
    PresenceChange,
    PresenceFlight,
    Probe,
    ProbeDone,
    ProbeSuspects,
    Replied,
    Retire,
    Retired,
    Rewire,
    Settings,
    Started,
    Submission,
    SubmitBatch,
    Sweep,
    Swept,
    Verdict,
    Verdicts,
    Wiring,
)
from task_ingress.messages.reasons import Action, Reason
from thespian.actors import ActorExitRequest

ChannelKey = tuple[str, str]
STORE_KEY: ChannelKey = ("", "task-store")  # never a channel: "" fails the grammar
MAX_PENDING_SWEEPS = 8
"""Sweeps whose answers are still out: past this the oldest is answered as it stands (a
lost answer must not make the router's own bookkeeping grow)."""


def pre_gate_reason(sub: Submission, tasks_enabled: bool,
                    serving: tuple[int, int] | None = None) -> Reason | None:
    """Rejections decided before any channel is involved: preset, rule 1, rule 2.

    `serving` (cluster mode): (the shard this runtime holds, the shard count); a request
    for a workspace of another shard is one this runtime's task service cannot take."""
    if sub.preset is not None:
        return sub.preset
    if sub.request is None or not (sub.checked or gate.check_context(sub.context) is None):
        return Reason.INVALID_REQUEST
    if not tasks_enabled:
        return Reason.TASK_INGRESS_UNAVAILABLE
    if serving is not None and shard_of(gate.trim(sub.context.workspace),
                                        serving[1]) != serving[0]:
        return Reason.TASK_INGRESS_UNAVAILABLE
    return None


def reap_candidates(
    channels: dict[ChannelKey, Any], busy: Container[ChannelKey],
    retiring: dict[ChannelKey, int],
    last_greet: dict[ChannelKey, float], now: float, expiry: float,
) -> list[ChannelKey]:
    """Channel actors worth asking to retire: alive, nothing of theirs unanswered, not
    already asked, and no greet routed to them for `expiry` (2 x greet_interval), so
    every peer they saw has expired or left. Presence makes the exact check (`Retire`);
    this only keeps busy channels from being asked every sweep."""
    return [key for key, address in channels.items()
            if address is not None and key not in busy and key not in retiring
            and now - last_greet.get(key, float("-inf")) >= expiry]


def holds_dones(open_requests: int, fenced: bool) -> bool:
    """Whether the router may hold a channel's `Dones` back until its next message there.

    Only when nothing in the channel actor can be waiting for them: every request routed
    there is answered (`open_requests` 0; so none is queued behind a busy peer or a full
    pipeline), and no presence change was routed there while a request was unanswered
    (`fenced`: it may wait at the fence for exactly these tickets)."""
    return open_requests == 0 and not fenced


def lost_tickets(suspects: set[int], unanswered: dict[int, InFlight]) -> list[int]:
    """Suspects still unanswered once the probe is back: they never left the dead actor."""
    return sorted(t for t in suspects if t in unanswered)


@dataclass
class PendingSweep:
    """One sweep in progress: who gets `ChannelCount`, and the answers still out."""

    ticket: int
    reply_to: Any
    outstanding: int = 0
    swept: Swept | None = None


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
        self.restarting = False
        # Channel actors by (workspace, channel); None: the actor died, the next message
        # of the channel starts a new one (its peers may still be visible).
        self.channels: dict[ChannelKey, Any] = {}
        self.keys: dict[str, ChannelKey] = {}
        # Per channel actor: the send counter at the last message we sent it (a `Retire`
        # answered for an older one is void), and the clock stamp of its last greet.
        self.last_send: dict[ChannelKey, int] = {}
        self.last_greet: dict[ChannelKey, float] = {}
        self.send_seq = itertools.count(1)
        self.sweeps: dict[int, PendingSweep] = {}
        self.sweep_ids = itertools.count(1)
        self.retiring: dict[ChannelKey, int] = {}  # channel -> the sweep that asked it
        # Admitted requests not yet answered (bounded by the runtime's in-flight caps).
        self.unanswered: dict[int, InFlight] = {}
        # Per channel: how many of `unanswered` are its; whether a presence change went to
        # it while one was; the answered tickets held back for its next message.
        self.open_requests: dict[ChannelKey, int] = {}
        self.fenced: set[ChannelKey] = set()
        self.held_dones: dict[ChannelKey, list[int]] = {}
        self.probes: dict[int, PendingProbe] = {}
        # Outcomes a dead store committed, as found (outbox rows, records under a taken-back
        # lease) by whichever probe got there first, by `record_key`; shared by all probes
        # of one failure, dropped when none is pending.
        self.recovered: dict[tuple[str, str, str, str], Drained] = {}
        self.probe_ids = itertools.count(1)
        self.stopping = False
        self.serving: tuple[int, int] | None = None
        """Cluster mode: (shard held, shard count), as the PostgreSQL TaskStore found it."""
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
        """The TaskStore is ready: report to whoever wired us (once); after a restart,
        rewire Capability to it and probe for what the dead one took along."""
        if msg.shards and self.settings is not None and self.settings.fence is not None:
            self.serving = (self.settings.fence[0], msg.shards)
        if self.starting is not None:
            to, ticket = self.starting
            self.starting = None
            self.send(to, Started(ticket=ticket, error=msg.error, address=self.store))
        elif msg.error:
            self.log.error("router.store_restart_failed", error=msg.error)
        elif self.restarting:
            self.restarting = False
            self._rewire_and_probe(sender)

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
                self._route_presence(PresenceFlight(change=item, reply_to=sender), rejected)
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

    def _route_presence(self, flight: PresenceFlight, rejected: list[Verdict]) -> None:
        """A greet or leave to its channel actor; a greet starts one (within the cap)."""
        assert self.settings is not None
        change = flight.change
        key = (change.workspace, change.channel)
        if key not in self.channels:
            if change.card is None:  # no actor, so no visible peer: nothing to leave
                self.send(flight.reply_to, PresenceApplied(ticket=change.ticket))
                return
            if len(self.channels) >= self.settings.max_channels:
                self.log.info("router.channel_cap", workspace=key[0], channel=key[1],
                              peer_id=change.peer_id, action="greet", outcome="rejected",
                              reason="overloaded", channels=len(self.channels))
                rejected.append(presence_verdict(flight, Reason.OVERLOADED))
                return
        target = self._started_channel(key)
        if target is None:
            rejected.append(presence_verdict(flight, Reason.TASK_INGRESS_FAILED))
            return
        if change.card is not None:
            self.last_greet[key] = change.now
        if self.open_requests.get(key):
            self.fenced.add(key)  # it may wait there for these requests' Dones
        self._to_channel(key, target, flight)

    def _to_channel(self, key: ChannelKey, address: Any, msg: Any) -> None:
        """Every send to a channel actor goes here: it voids a `Retire` answer under way,
        and the channel's held-back `Dones` go first (inside an `InFlights`)."""
        held = self.held_dones.pop(key, None)
        if held:
            if isinstance(msg, InFlights):
                msg = msg.replace(dones=tuple(held))
            elif isinstance(msg, Dones):
                msg = Dones(tickets=(*held, *msg.tickets))
            else:
                self.send(address, Dones(tickets=tuple(held)))
        self.last_send[key] = next(self.send_seq)
        self.send(address, msg)

    def _forget_channel(self, key: ChannelKey) -> None:
        """Its actor is gone: a new one starts with nothing in flight."""
        self.held_dones.pop(key, None)
        self.fenced.discard(key)

    def _send_group(self, key: ChannelKey, flights: list[InFlight], rejected: list[Verdict]
                    ) -> None:
        if not flights:
            return
        target = self._started_channel(key)
        if target is None:
            for flight in flights:
                if self.unanswered.pop(flight.submission.ticket, None) is not None:
                    self._closed_requests(key, 1)
                rejected.append(failed_verdict(flight))
            return
        self._to_channel(key, target, InFlights(items=tuple(flights)))

    def _route(self, sub: Submission, reply_to: Any) -> InFlight | Verdict:
        """A rejection decided here (as a Verdict), or the admitted request (as an InFlight,
        remembered as unanswered)."""
        assert self.wiring is not None and self.settings is not None
        ctx = sub.context if sub.checked else gate.normalize_context(sub.context)
        reason = pre_gate_reason(sub, self.settings.tasks_enabled, self.serving)
        if reason is not None:
            # A refused greet or leave has no request ID; its record still names the
            # derived actor when its identifiers are grammatical.
            presence_ok = sub.action in (Action.GREET, Action.LEAVE) and gate.check_presence(
                ctx.workspace, ctx.channel, ctx.peer_id) is None
            flight = InFlight(submission=sub, context=ctx, reply_to=reply_to,
                              checked=presence_ok)
            rejected = Outcome.rejected(gate.safe_field(ctx.request_id), sub.action, reason)
            return Verdict(flight=flight, outcome=rejected)
        if (ctx.workspace, ctx.channel) not in self.channels:
            # No channel actor: never greeted, or reaped once no peer was visible (and
            # every presence change sent it was applied), so rule 3 fails for sure.
            flight = InFlight(submission=sub, context=ctx, reply_to=reply_to, checked=True)
            return rejected_verdict(flight, Reason.PEER_NOT_FOUND)
        # Audit reports Dones to us, so we know what a channel actor held if it dies.
        flight = InFlight(submission=sub, context=ctx, reply_to=reply_to,
                          router=self.myAddress, checked=True)
        self.unanswered[sub.ticket] = flight
        key = (ctx.workspace, ctx.channel)
        self.open_requests[key] = self.open_requests.get(key, 0) + 1
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
            self._closed_requests(key, len(done))
            target = self.channels.get(key)
            if target is None:
                continue
            if holds_dones(self.open_requests.get(key, 0), key in self.fenced):
                self.held_dones.setdefault(key, []).extend(done)
            else:
                if not self.open_requests.get(key):
                    self.fenced.discard(key)  # these Dones let its presence change pass
                self._to_channel(key, target, Dones(tickets=tuple(done)))

    def _closed_requests(self, key: ChannelKey, count: int) -> None:
        left = self.open_requests.get(key, 0) - count
        if left > 0:
            self.open_requests[key] = left
        else:
            self.open_requests.pop(key, None)

    def receiveMsg_Sweep(self, msg: Sweep, sender: Any) -> None:
        """Expire peers (Presence) and ask the channel actors that may be idle to retire."""
        if self.wiring is None or self.settings is None or self.stopping:
            return
        sweep_id = next(self.sweep_ids)
        pending = PendingSweep(ticket=msg.ticket, reply_to=sender)
        self.sweeps[sweep_id] = pending
        if len(self.sweeps) > MAX_PENDING_SWEEPS:
            oldest = min(self.sweeps)
            self._answer_sweep(oldest, self.sweeps.pop(oldest))
        self.send(self.wiring.presence, Sweep(now=msg.now, ticket=sweep_id,
                                              reply_to=self.myAddress))
        # A channel with a request unanswered is busy: `open_requests` counts them.
        for key in reap_candidates(self.channels, self.open_requests.keys(), self.retiring,
                                   self.last_greet, msg.now, 2 * self.settings.greet_interval):
            held = self.held_dones.pop(key, None)
            if held:  # it is idle only once it knows: Retire checks its in-flight requests
                self.send(self.channels[key], Dones(tickets=tuple(held)))
            nonce = next(self.send_seq)
            self.last_send[key] = nonce
            self.retiring[key] = sweep_id
            pending.outstanding += 1
            self.send(self.channels[key], Retire(workspace=key[0], channel=key[1], nonce=nonce,
                                                 sweep=sweep_id, now=msg.now,
                                                 reply_to=self.myAddress))

    def receiveMsg_Retired(self, msg: Retired, sender: Any) -> None:
        """Stop a vacant channel actor, unless we sent it anything after the `Retire`."""
        key = (msg.workspace, msg.channel)
        if self.retiring.get(key) != msg.sweep:
            return  # its actor died meanwhile: already counted
        del self.retiring[key]
        address = self.channels.get(key)
        if msg.vacant and address is not None and self.last_send.get(key) == msg.nonce:
            self._reap(key, address)
        self._sweep_part_done(msg.sweep)

    def _reap(self, key: ChannelKey, address: Any) -> None:
        del self.channels[key]
        self._forget_channel(key)
        self.keys.pop(str(address), None)  # its exit is no failure
        self.last_send.pop(key, None)
        self.last_greet.pop(key, None)
        self.send(address, ActorExitRequest())
        self.log.info("router.channel_reaped", workspace=key[0], channel=key[1])

    def receiveMsg_Swept(self, msg: Swept, sender: Any) -> None:
        """Presence's part of a sweep is done (and Capability dropped the expired cards)."""
        pending = self.sweeps.get(msg.ticket)
        if pending is not None:
            pending.swept = msg
            self._sweep_part_done(msg.ticket, count=False)

    def _sweep_part_done(self, sweep_id: int, count: bool = True) -> None:
        pending = self.sweeps.get(sweep_id)
        if pending is None:
            return
        if count:
            pending.outstanding -= 1
        if pending.outstanding <= 0 and pending.swept is not None:
            self._answer_sweep(sweep_id, self.sweeps.pop(sweep_id))

    def _answer_sweep(self, sweep_id: int, pending: PendingSweep) -> None:
        swept = pending.swept
        live = sum(1 for address in self.channels.values() if address is not None)
        self.send(pending.reply_to, ChannelCount(
            ticket=pending.ticket, channel_actors=live,
            peers=swept.peers if swept else -1, cards=swept.cards if swept else -1))

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
        key = self._child_key(msg.childAddress)
        if key is None or self.stopping or self.wiring is None:
            return
        if key == STORE_KEY:
            self._store_died()
            return
        self.channels[key] = None  # the slot stays: its peers may still be visible
        self.last_send.pop(key, None)
        self._forget_channel(key)
        if key in self.retiring:
            self._sweep_part_done(self.retiring.pop(key))
        suspects = {t for t, f in self.unanswered.items()
                    if (f.context.workspace, f.context.channel) == key}
        self.log.warning("router.channel_actor_died", workspace=key[0], channel=key[1],
                         unanswered=len(suspects))
        if suspects:
            probe_id = next(self.probe_ids)
            self.probes[probe_id] = PendingProbe(suspects=suspects)
            self.send(self.wiring.presence, Probe(probe_id=probe_id, reply_to=self.myAddress))

    def _child_key(self, child: Any) -> ChannelKey | None:
        """Which of our children exited (forgotten from `keys`), or None when unknown.

        `keys` holds each child under the str of the address `createActor` returned. On
        simpleSystemBase an exit names that address; a multiprocess base names the child's
        final address, whose str differs (found only by `==`, which Thespian resolves)."""
        key = self.keys.pop(str(child), None)
        if key is not None:
            return key
        if self.store is not None and child == self.store:
            key = STORE_KEY
        else:
            key = next((k for k, address in self.channels.items() if address == child), None)
        if key is not None:
            self.keys = {name: k for name, k in self.keys.items() if k != key}
        return key

    def _store_died(self) -> None:
        self.log.error("router.store_died", unanswered=len(self.unanswered))
        self.restarting = True
        self._start_store()

    def _rewire_and_probe(self, store: Any) -> None:
        """The new store is up at `store` (the address it answered from: on a multiprocess
        base the one `createActor` gave cannot be sent on before the child has connected,
        and a probe sent ahead of a delayed Rewire would reach the dead store and be lost)."""
        assert self.wiring is not None
        # Rewire goes out before any probe: Capability sees it before the probe reaches it.
        self.send(self.wiring.capability, Rewire(store=store))
        # Audit takes back a chain lease the dead store held (also done at the probe).
        self.send(self.audit, Rewire(store=store))
        # A probe still out may have died with the store (a channel actor died just
        # before): it goes again, behind the Rewire. A second ProbeDone finds it settled.
        for probe_id, probe in self.probes.items():
            if probe.done is None:
                self.send(self.wiring.presence, Probe(probe_id=probe_id,
                                                      reply_to=self.myAddress))
        for key, address in self.channels.items():
            if address is None:
                continue
            probe_id = next(self.probe_ids)
            self.probes[probe_id] = PendingProbe()
            self._to_channel(key, address, Probe(probe_id=probe_id, reply_to=self.myAddress))

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
            self.recovered[d.key] = d
        lost: list[Verdict] = []
        for ticket in lost_tickets(probe.suspects, self.unanswered):
            flight = self.unanswered[ticket]
            ctx = flight.context
            found = self.recovered.pop(record_key(ctx), None)
            if found is not None:
                # Committed by the dead store, with its record: the outcome it recorded.
                outcome = found.outcome(ctx.request_id, flight.submission.action)
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

    def _started_channel(self, key: ChannelKey) -> Any | None:
        """The channel's actor (started if need be), or None, logged, when it cannot be
        started: the caller answers what it holds for the channel, never strands it."""
        try:
            return self._channel(*key)
        except Exception as exc:
            self.log.error("router.channel_start_failed", workspace=key[0], channel=key[1],
                           error=repr(exc))
            return None

    def _channel(self, workspace: str, channel: str) -> Any:
        """The channel's actor, started if it has none (first greet, or after it died)."""
        key = (workspace, channel)
        address = self.channels.get(key)
        if address is None:
            assert self.wiring is not None and self.settings is not None
            address = self.createActor(self.settings.channel_actor_class)
            self.channels[key] = address
            self._to_channel(key, address, self.wiring)
            self.keys[str(address)] = key
        return address
