"""Presence actor: who is visible as a remote peer in each (workspace, channel).

Accepts:
- `Wiring` (from the runtime) -> remembers Capability and Audit; replies `Started`.
- `PresenceFlight` (from a ChannelIngress, already fenced) -> applies the greet or leave,
  forwards to Capability (which replies `PresenceApplied`). Going through the same two
  hops as requests is what orders a card change before the channel's next check. A greet
  that would make its peer visible in more than `max_channels_per_peer` channels is
  refused instead: `overloaded`, to Audit as a `greet` record (which answers the caller).
- `InFlights` (from a ChannelIngress) -> rule 3 on each: the rejected go to Audit as
  `peer_not_found` `Verdicts`; the visible wait for our self-sent `Flush`, which arrives
  behind every channel's batch already queued, and go on to Capability as ONE `InFlights`
  (so one driver batch crosses Capability and TaskStore as one message). Anything else
  bound for Capability (a presence change, a probe, `CardsExpired`) first sends them, so
  Capability sees everything in the order it was judged here.
- `Flush` (from itself) -> forwards the merged requests.
- `Sweep` (from the router, on the runtime's timer) -> forgets expired peers so memory stays
  bounded, and tells Capability (`CardsExpired`) to drop their cards; Capability
  acknowledges the sweep to the router.
- `Retire` (from an idle ChannelIngress the router wants to stop) -> `Retired` to the
  router: vacant when no peer is visible in that channel (its expired entries go now).
- `CountEntries` -> `EntryCount` (how many greets are remembered).

Time comes stamped on each message (the runtime owns the injectable clock) and never runs
backwards here: a later message with an earlier stamp is judged at the latest time seen.
"""

from __future__ import annotations

from typing import Any

from task_ingress.actors.base import GateActor, presence_verdict
from task_ingress.actors.log import get_logger
from task_ingress.messages.protocol import (
    CardsExpired,
    CountEntries,
    EntryCount,
    Flush,
    InFlight,
    InFlights,
    PresenceFlight,
    Probe,
    Retire,
    Retired,
    Settings,
    Started,
    Sweep,
    Verdicts,
    Wiring,
)
from task_ingress.messages.reasons import Reason

PresenceKey = tuple[str, str, str]
ChannelKey = tuple[str, str]


def is_visible(last_greet: float | None, now: float, greet_interval: float) -> bool:
    """Visible from a greet until `2 x greet_interval` has passed (SPEC §3/§5)."""
    return last_greet is not None and now - last_greet < 2 * greet_interval


def is_remote(peer_id: str, local_peer_id: str) -> bool:
    """Only remote peers write: the daemon's own peer is never admitted through ingress."""
    return peer_id != local_peer_id


def expired_keys(
    greets: dict[PresenceKey, float], now: float, greet_interval: float
) -> list[PresenceKey]:
    """Keys whose last greet is too old to make them visible at `now`."""
    return [k for k, t in greets.items() if not is_visible(t, now, greet_interval)]


def over_channel_cap(key: PresenceKey, channels_of_peer: set[ChannelKey],
                     greets: dict[PresenceKey, float], now: float, greet_interval: float,
                     cap: int) -> bool:
    """Would a greet of `key` make its peer visible in more than `cap` channels?

    A re-greet of a channel the peer is visible in only refreshes it, so it always passes;
    entries that expired but were not swept yet do not count."""
    if is_visible(greets.get(key), now, greet_interval):
        return False
    peer = key[2]
    visible = sum(1 for ws, ch in channels_of_peer
                  if is_visible(greets.get((ws, ch, peer)), now, greet_interval))
    return visible >= cap


class Presence(GateActor):
    """Owner of last-greet times per (workspace, channel, peer)."""

    def __init__(self) -> None:
        super().__init__()
        self.settings: Settings | None = None
        self.capability: Any = None
        self.audit: Any = None
        self.greets: dict[PresenceKey, float] = {}
        # Indexes of `greets`: the peers of each channel (for `Retire`) and the channels of
        # each peer ID (for the per-peer channel cap). Kept in step by _add and _drop.
        self.by_channel: dict[ChannelKey, set[str]] = {}
        self.by_peer: dict[str, set[ChannelKey]] = {}
        self.now = float("-inf")
        # Visible requests of every channel, merged until our own Flush comes round: the
        # channel actors' batches of one driver batch reach Capability and TaskStore as ONE
        # message. Anything else bound for Capability first sends these, so Capability sees
        # everything in exactly the order we judged it.
        self.passed: list[InFlight] = []
        self.forward_queued = False
        self.log = get_logger(actor="presence")

    def receiveMsg_Wiring(self, msg: Wiring, sender: Any) -> None:
        """Remember settings and neighbours."""
        self.settings, self.capability, self.audit = msg.settings, msg.capability, msg.audit
        self.send(sender, Started(ticket=msg.ticket))

    def _advance(self, stamp: float) -> float:
        self.now = max(self.now, stamp)
        return self.now

    def _add(self, key: PresenceKey, now: float) -> None:
        self.greets[key] = now
        self.by_channel.setdefault((key[0], key[1]), set()).add(key[2])
        self.by_peer.setdefault(key[2], set()).add((key[0], key[1]))

    def _drop(self, key: PresenceKey) -> None:
        if self.greets.pop(key, None) is None:
            return
        channel = (key[0], key[1])
        _discard(self.by_channel, channel, key[2])
        _discard(self.by_peer, key[2], channel)

    def receiveMsg_PresenceFlight(self, msg: PresenceFlight, sender: Any) -> None:
        """Apply a greet (refresh) or leave (forget), then let Capability apply the card;
        or refuse a greet over the per-peer channel cap (Audit answers the caller)."""
        assert self.settings is not None
        change = msg.change
        key = (change.workspace, change.channel, change.peer_id)
        now = self._advance(change.now)
        if change.card is None:
            self._drop(key)
        elif over_channel_cap(key, self.by_peer.get(change.peer_id, set()), self.greets, now,
                              self.settings.greet_interval, self.settings.max_channels_per_peer):
            self.log.info("presence.channel_cap", peer_id=change.peer_id,
                          channel=change.channel, workspace=change.workspace,
                          action="greet", outcome="rejected", reason="overloaded")
            self.send(self.audit, Verdicts(items=(presence_verdict(msg, Reason.OVERLOADED),)))
            return
        else:
            self._add(key, now)
        self.log.info(
            "presence.changed", peer_id=change.peer_id, channel=change.channel,
            workspace=change.workspace, change="leave" if change.card is None else "greet",
        )
        self._forward()
        self.send(self.capability, msg)

    def receiveMsg_InFlights(self, msg: InFlights, sender: Any) -> None:
        """Rule 3 on each request, in order; the visible wait for our Flush (merging)."""
        self.passed.extend(self.judge_flights(msg.items, self._rule3))
        if self.passed and not self.forward_queued:
            self.forward_queued = True
            self.send(self.myAddress, Flush())

    def receiveMsg_Flush(self, msg: Flush, sender: Any) -> None:
        """Every channel batch that arrived before this goes on to Capability as one."""
        self.forward_queued = False
        self._forward()

    def _forward(self) -> None:
        if self.passed:
            self.send(self.capability, InFlights(items=tuple(self.passed)))
            self.passed = []

    def _rule3(self, flight: InFlight) -> Reason | None:
        """Is the peer visible as a remote peer in this (workspace, channel)?"""
        assert self.settings is not None
        ctx = flight.context
        now = self._advance(flight.submission.now)
        last = self.greets.get((ctx.workspace, ctx.channel, ctx.peer_id))
        visible = is_visible(last, now, self.settings.greet_interval) and is_remote(
            ctx.peer_id, self.settings.local_peer_id
        )
        return None if visible else Reason.PEER_NOT_FOUND

    def receiveMsg_Probe(self, msg: Probe, sender: Any) -> None:
        """Pass the marker on behind every request already judged."""
        self._forward()
        self.send(self.capability, msg)

    def receiveMsg_Sweep(self, msg: Sweep, sender: Any) -> None:
        """Forget expired peers (their visibility is already gone; this frees memory)."""
        assert self.settings is not None
        now = self._advance(msg.now)
        gone = expired_keys(self.greets, now, self.settings.greet_interval)
        for key in gone:
            self._drop(key)
            self.log.info("presence.expired", workspace=key[0], channel=key[1], peer_id=key[2])
        if gone or msg.reply_to is not None:
            self._forward()  # requests judged visible before the sweep still need their card
            # Through Capability, so the sweep is acknowledged only once the cards are gone.
            self.send(self.capability, CardsExpired(keys=tuple(gone), sweep=msg.ticket,
                                                    peers=len(self.greets),
                                                    reply_to=msg.reply_to))

    def receiveMsg_Retire(self, msg: Retire, sender: Any) -> None:
        """May the channel's actor stop? Vacant when no peer is visible in it at `now`.

        It comes from the channel actor itself, behind every presence change that actor
        forwarded, so every greet the router sent that channel before `Retire` is already
        applied here. The entries of a vacant channel are expired ones: they go now."""
        assert self.settings is not None
        now = self._advance(msg.now)
        channel = (msg.workspace, msg.channel)
        keys = [(msg.workspace, msg.channel, peer) for peer in self.by_channel.get(channel, ())]
        vacant = not any(is_visible(self.greets[k], now, self.settings.greet_interval)
                         for k in keys)
        if vacant and keys:
            for key in keys:
                self._drop(key)
            self._forward()
            self.send(self.capability, CardsExpired(keys=tuple(keys)))
        self.send(msg.reply_to, Retired(workspace=msg.workspace, channel=msg.channel,
                                        nonce=msg.nonce, sweep=msg.sweep, vacant=vacant))

    def receiveMsg_ActorExitRequest(self, msg: Any, sender: Any) -> None:
        """Shutdown: what was judged visible still goes on, so it gets an answer."""
        self._forward()

    def receiveMsg_CountEntries(self, msg: CountEntries, sender: Any) -> None:
        """How many (workspace, channel, peer) greets are remembered."""
        self.send(sender, EntryCount(ticket=msg.ticket, entries=len(self.greets)))


def _discard(index: dict[Any, set[Any]], key: Any, value: Any) -> None:
    """Remove `value` from `index[key]`, and the key once its set is empty (memory)."""
    values = index.get(key)
    if values is not None:
        values.discard(value)
        if not values:
            del index[key]
