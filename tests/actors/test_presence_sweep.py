"""Peers that expire without leaving do not stay in memory: the sweep frees Presence's entry
and Capability's card, while visible peers keep both."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from task_ingress.actors.capability import Capability
from task_ingress.actors.presence import Presence
from task_ingress.messages import PeerCard
from task_ingress.messages.protocol import (
    CountEntries,
    EntryCount,
    PresenceApplied,
    PresenceChange,
    PresenceFlight,
    Settings,
    Started,
    Sweep,
    Wiring,
)
from thespian.actors import Actor, ActorSystem

GREET_INTERVAL = 10.0


class Caller(Actor):  # type: ignore[misc]
    """Stands in for the driver: counts the PresenceApplied answers; "count" returns it."""

    def __init__(self) -> None:
        super().__init__()
        self.applied = 0

    def receiveMessage(self, message: Any, sender: Any) -> None:
        if isinstance(message, PresenceApplied):
            self.applied += 1
        elif message == "count":
            self.send(sender, self.applied)


@pytest.fixture
def gate_pair() -> Iterator[tuple[Any, Any, Any, Any]]:
    asys = ActorSystem("simpleSystemBase", transientUnique=True)
    try:
        settings = Settings(store_path="unused.db", durable=False, local_peer_id="local",
                            greet_interval=GREET_INTERVAL, tasks_enabled=True)
        capability, presence = asys.createActor(Capability), asys.createActor(Presence)
        for address in (capability, presence):
            wiring = Wiring(ticket=0, settings=settings, capability=capability)
            assert isinstance(asys.ask(address, wiring, 5), Started)
        yield asys, presence, capability, asys.createActor(Caller)
    finally:
        asys.shutdown()


def greet(asys: Any, presence: Any, caller: Any, peer: str, now: float) -> None:
    change = PresenceChange(ticket=1, workspace="ws", channel="ops", peer_id=peer,
                            card=PeerCard(peer_id=peer, capabilities=["task.write"], proof="p"),
                            now=now)
    before = asys.ask(caller, "count", 5)
    asys.tell(presence, PresenceFlight(change=change, reply_to=caller))
    assert asys.ask(caller, "count", 5) == before + 1  # the card is in effect


def entries(asys: Any, address: Any) -> int:
    reply = asys.ask(address, CountEntries(ticket=7), 5)
    assert isinstance(reply, EntryCount)
    return reply.entries


def test_sweep_forgets_expired_peers_and_their_cards_but_keeps_visible_ones(
    gate_pair: tuple[Any, Any, Any, Any],
) -> None:
    asys, presence, capability, caller = gate_pair
    for i in range(5):
        greet(asys, presence, caller, f"old-{i}", now=0.0)
    greet(asys, presence, caller, "fresh", now=2 * GREET_INTERVAL)
    assert entries(asys, presence) == 6 and entries(asys, capability) == 6

    asys.tell(presence, Sweep(now=2 * GREET_INTERVAL + 1))

    assert entries(asys, presence) == 1
    assert entries(asys, capability) == 1  # only the visible peer's card is left


def test_sweep_before_expiry_frees_nothing(gate_pair: tuple[Any, Any, Any, Any]) -> None:
    asys, presence, capability, caller = gate_pair
    greet(asys, presence, caller, "p1", now=0.0)
    asys.tell(presence, Sweep(now=2 * GREET_INTERVAL - 0.5))
    assert entries(asys, presence) == 1 and entries(asys, capability) == 1
