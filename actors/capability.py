"""Capability actor: peer cards per (workspace, channel, peer) and rule 4 (`task.write`).

Accepts:
- `Wiring` (from the runtime) -> remembers TaskStore and Audit; replies `Started`.
- `PresenceFlight` (from Presence) -> stores or drops the card, replies `PresenceApplied`
  to the caller: from then on the channel's requests see the change.
- `InFlights` (from Presence) -> rule 4 on each: those whose card grants `task.write`
  (claimed and backed by a non-empty proof) go on to TaskStore as one `InFlights`, the
  rest to Audit as `capability_denied` `Verdicts`.
- `CardsExpired` (from Presence's sweep or `Retire`) -> drops those cards (bounded memory);
  for a sweep, `Swept` to the router with what Presence and Capability still hold.
- `CountEntries` -> `EntryCount` (how many cards are held).
"""

from __future__ import annotations

from typing import Any

from task_ingress.actors.base import GateActor
from task_ingress.actors.rules import gate
from task_ingress.messages.peers import PeerCard
from task_ingress.messages.protocol import (
    CardsExpired,
    CountEntries,
    EntryCount,
    InFlight,
    InFlights,
    PresenceApplied,
    PresenceFlight,
    Probe,
    Rewire,
    Started,
    Swept,
    Wiring,
)
from task_ingress.messages.reasons import Reason


def card_grants_write(card: PeerCard | None) -> bool:
    """Rule 4 on a possibly missing card."""
    return card is not None and gate.grants_write(card.capabilities, card.proof)


class Capability(GateActor):
    """Owner of the current card of every visible peer."""

    def __init__(self) -> None:
        super().__init__()
        self.store: Any = None
        self.audit: Any = None
        self.cards: dict[tuple[str, str, str], PeerCard] = {}

    def receiveMsg_Wiring(self, msg: Wiring, sender: Any) -> None:
        """Remember neighbours."""
        self.store, self.audit = msg.store, msg.audit
        self.send(sender, Started(ticket=msg.ticket))

    def receiveMsg_PresenceFlight(self, msg: PresenceFlight, sender: Any) -> None:
        """Replace (greet) or drop (leave) the card; the change is now in effect."""
        change = msg.change
        key = (change.workspace, change.channel, change.peer_id)
        if change.card is None:
            self.cards.pop(key, None)
        else:
            self.cards[key] = change.card
        self.send(msg.reply_to, PresenceApplied(ticket=change.ticket))

    def receiveMsg_CardsExpired(self, msg: CardsExpired, sender: Any) -> None:
        """Presence forgot these peers (expired): their cards go too."""
        for key in msg.keys:
            self.cards.pop(key, None)
        if msg.reply_to is not None:
            self.send(msg.reply_to, Swept(ticket=msg.sweep, peers=msg.peers,
                                          cards=len(self.cards)))

    def receiveMsg_CountEntries(self, msg: CountEntries, sender: Any) -> None:
        """How many cards are held."""
        self.send(sender, EntryCount(ticket=msg.ticket, entries=len(self.cards)))

    def receiveMsg_Rewire(self, msg: Rewire, sender: Any) -> None:
        """The router restarted TaskStore: later requests go to the new one."""
        self.store = msg.store

    def receiveMsg_Probe(self, msg: Probe, sender: Any) -> None:
        """Pass the marker on behind every request already forwarded."""
        self.send(self.store, msg)

    def receiveMsg_InFlights(self, msg: InFlights, sender: Any) -> None:
        """Rule 4 on each request; the granted go on to TaskStore together."""
        self.forward_flights(msg.items, self._rule4, self.store)

    def _rule4(self, flight: InFlight) -> Reason | None:
        """Does the peer's current card grant `task.write`?"""
        ctx = flight.context
        card = self.cards.get((ctx.workspace, ctx.channel, ctx.peer_id))
        return None if card_grants_write(card) else Reason.CAPABILITY_DENIED
