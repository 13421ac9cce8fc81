"""Peers that expire without leaving do not stay in memory: the sweep frees Presence's entry
and Capability's card, while visible peers keep both. `Retire` (an idle channel actor asking
to stop) is vacant only when no peer is visible in its channel."""

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
    Retire,
    Retired,
    Settings,
    Started,
    Sweep,
    Wiring,
)
from thespian.actors import Actor, ActorSystem

GREET_INTERVAL = 10.0


class Caller(Actor):  # type: ignore[misc]
    """Stands in for the driver and router: counts the PresenceApplied answers ("count"
    returns it) and keeps the last other message ("last" returns it)."""

    def __init__(self) -> None:
        super().__init__()
        self.applied = 0
        self.last: Any = None

    def receiveMessage(self, message: Any, sender: Any) -> None:
        if isinstance(message, PresenceApplied):
            self.applied += 1
        elif message == "count":
            self.send(sender, self.applied)
        elif message == "last":
            self.send(sender, self.last)
        else:
            self.last = message


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


def greet(asys: Any, presence: Any, caller: Any, peer: str, now: float, channel: str = "ops"
          ) -> None:
    change = PresenceChange(ticket=1, workspace="ws", channel=channel, peer_id=peer,
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


def retire(asys: Any, presence: Any, caller: Any, now: float) -> bool:
    asys.tell(presence, Retire(workspace="ws", channel="ops", nonce=3, sweep=2, now=now,
                               reply_to=caller))
    answer = asys.ask(caller, "last", 5)
    assert isinstance(answer, Retired) and (answer.nonce, answer.sweep) == (3, 2)
    return answer.vacant


def test_retire_is_vacant_only_once_no_peer_is_visible_and_then_frees_the_channel_entries(
    gate_pair: tuple[Any, Any, Any, Any],
) -> None:
    asys, presence, capability, caller = gate_pair
    greet(asys, presence, caller, "p1", now=0.0)
    greet(asys, presence, caller, "p2", now=5.0)
    greet(asys, presence, caller, "p3", now=0.0, channel="dev")
    assert not retire(asys, presence, caller, now=2 * GREET_INTERVAL)  # p2 still visible
    assert entries(asys, presence) == 3 and entries(asys, capability) == 3
    assert retire(asys, presence, caller, now=2 * GREET_INTERVAL + 5)
    # ops's expired entries and cards are gone; dev's (expired too) wait for the sweep.
    assert entries(asys, presence) == 1 and entries(asys, capability) == 1
