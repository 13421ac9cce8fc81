"""Presence merges channel batches until its own Flush; whatever else it sends Capability
(a presence change, a probe, CardsExpired) goes out only after the requests it already
judged visible, so Capability sees everything in the order Presence judged it."""

from __future__ import annotations

from typing import Any

import pytest
from task_ingress.actors.presence import Presence
from task_ingress.messages import CreateTask, PeerCard
from task_ingress.messages.protocol import (
    CardsExpired,
    Flush,
    InFlight,
    InFlights,
    PresenceChange,
    PresenceFlight,
    Probe,
    Settings,
    Submission,
    Sweep,
    Wiring,
)
from task_ingress.messages.reasons import Action

from tests.conftest import ctx

INTERVAL = 10.0
CAPABILITY = "capability"


class Recording(Presence):
    """Presence with `send` recorded instead of delivered (no actor system needed)."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[Any, Any]] = []

    @property
    def myAddress(self) -> Any:
        return "presence"

    def send(self, target: Any, message: Any) -> None:
        self.sent.append((target, message))


def greet(peer: str, now: float) -> PresenceFlight:
    card = PeerCard(peer_id=peer, capabilities=["task.write"], proof="p")
    change = PresenceChange(ticket=0, workspace="ws", channel="ops", peer_id=peer, card=card,
                            now=now)
    return PresenceFlight(change=change, reply_to=None)


def request(peer: str, now: float) -> InFlights:
    sub = Submission(ticket=1, context=ctx("r1", peer=peer), request=CreateTask(title="t"),
                     action=Action.CREATE, payload_size=1, now=now)
    return InFlights(items=(InFlight(submission=sub, context=sub.context, reply_to=None),))


@pytest.fixture
def presence() -> Recording:
    actor = Recording()
    settings = Settings(store_path="unused.db", durable=False, local_peer_id="local",
                        greet_interval=INTERVAL, tasks_enabled=True)
    actor.receiveMsg_Wiring(Wiring(ticket=0, settings=settings, capability=CAPABILITY,
                                   audit="audit"), None)
    actor.receiveMsg_PresenceFlight(greet("peer-a", now=0.0), None)
    actor.sent.clear()
    return actor


def to_capability(actor: Recording) -> list[type]:
    return [type(m) for target, m in actor.sent if target == CAPABILITY]


def test_visible_requests_wait_for_presences_own_flush(presence: Recording) -> None:
    presence.receiveMsg_InFlights(request("peer-a", now=1.0), None)
    assert to_capability(presence) == []  # merged until the Flush comes round
    presence.receiveMsg_Flush(Flush(), None)
    assert to_capability(presence) == [InFlights]


def test_expired_cards_are_dropped_only_after_requests_judged_visible_before(
    presence: Recording,
) -> None:
    presence.receiveMsg_InFlights(request("peer-a", now=2 * INTERVAL - 1), None)
    presence.receiveMsg_Sweep(Sweep(now=2 * INTERVAL + 1), None)  # peer-a expires now
    assert to_capability(presence) == [InFlights, CardsExpired]


def test_presence_changes_and_probes_go_after_requests_already_judged(
    presence: Recording,
) -> None:
    presence.receiveMsg_InFlights(request("peer-a", now=1.0), None)
    presence.receiveMsg_PresenceFlight(greet("peer-b", now=1.0), None)
    presence.receiveMsg_InFlights(request("peer-a", now=1.0), None)
    presence.receiveMsg_Probe(Probe(probe_id=1, reply_to=None), None)
    assert to_capability(presence) == [InFlights, PresenceFlight, InFlights, Probe]
