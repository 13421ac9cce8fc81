"""The router holds a channel's Dones back while nothing in the channel actor can wait for
them, and hands them over with its next message there: an idle channel costs no message
per commit, and a fenced presence change or a queued request still gets its Dones at once."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from task_ingress.actors.router import IngressRouter, holds_dones
from task_ingress.messages import CreateTask, PeerCard
from task_ingress.messages.protocol import (
    Dones,
    InFlights,
    PresenceChange,
    PresenceFlight,
    Retire,
    Settings,
    Started,
    Submission,
    SubmitBatch,
    Sweep,
    Wiring,
)
from task_ingress.messages.reasons import Action
from thespian.actors import ChildActorExited

from tests.conftest import ctx

CHANNEL = ("ws", "ops")


class Recording(IngressRouter):
    """The router with `send` and `createActor` recorded (no actor system needed)."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[Any, Any]] = []
        self.made = itertools.count(1)

    @property
    def myAddress(self) -> Any:
        return "router"

    def send(self, target: Any, message: Any) -> None:
        self.sent.append((target, message))

    def createActor(self, *args: Any, **kwargs: Any) -> Any:
        return f"actor-{next(self.made)}"

    def to_channel(self) -> list[Any]:
        """What went to the channel actor since the last look."""
        address = self.channels[CHANNEL]
        found = [m for to, m in self.sent if to == address]
        self.sent.clear()
        return found


def presence(ticket: int, peer: str, greet: bool) -> PresenceChange:
    card = PeerCard(peer_id=peer, capabilities=["task.write"], proof="p") if greet else None
    return PresenceChange(ticket=ticket, workspace="ws", channel="ops", peer_id=peer,
                          card=card, now=0.0)


def request(ticket: int, peer: str = "peer-a") -> Submission:
    return Submission(ticket=ticket, context=ctx(f"r{ticket}", peer=peer),
                      request=CreateTask(title="t"), action=Action.CREATE, payload_size=1,
                      now=0.0)


@pytest.fixture
def router() -> Recording:
    """A wired router whose channel ws/ops has an actor (peer-a greeted)."""
    r = Recording()
    settings = Settings(store_path="unused.db", durable=False, local_peer_id="local",
                        greet_interval=10.0, tasks_enabled=True)
    r.receiveMsg_Wiring(Wiring(ticket=0, settings=settings, presence="presence",
                               capability="capability", audit="audit"), "driver")
    r.receiveMsg_Started(Started(ticket=0), r.store)
    r.receiveMsg_SubmitBatch(SubmitBatch(items=(presence(90, "peer-a", greet=True),)),
                             "driver")
    r.to_channel()
    return r


def test_an_idle_channels_dones_go_with_its_next_requests(router: Recording) -> None:
    router.receiveMsg_SubmitBatch(SubmitBatch(items=(request(1),)), "driver")
    assert [type(m) for m in router.to_channel()] == [InFlights]
    router.receiveMsg_Dones(Dones(tickets=(1,)), "audit")
    assert router.to_channel() == []
    router.receiveMsg_SubmitBatch(SubmitBatch(items=(request(2),)), "driver")
    [sent] = router.to_channel()
    assert isinstance(sent, InFlights)
    assert sent.dones == (1,)
    assert [f.submission.ticket for f in sent.items] == [2]


def test_a_channel_with_a_request_still_open_gets_its_dones_at_once(router: Recording) -> None:
    # peer-a's second request may be queued behind its first: it waits for that Dones.
    router.receiveMsg_SubmitBatch(SubmitBatch(items=(request(1), request(2))), "driver")
    router.to_channel()
    router.receiveMsg_Dones(Dones(tickets=(1,)), "audit")
    assert router.to_channel() == [Dones(tickets=(1,))]


def test_a_presence_change_routed_behind_a_request_gets_its_dones_at_once(
    router: Recording,
) -> None:
    # The leave waits at the fence until ticket 1 is done: holding that Dones back would
    # keep it waiting for a request that may never come.
    router.receiveMsg_SubmitBatch(SubmitBatch(items=(request(1),
                                                     presence(91, "peer-a", greet=False))),
                                  "driver")
    assert [type(m) for m in router.to_channel()] == [InFlights, PresenceFlight]
    router.receiveMsg_Dones(Dones(tickets=(1,)), "audit")
    assert router.to_channel() == [Dones(tickets=(1,))]
    # Once through, the channel is idle again: the next Dones may wait.
    router.receiveMsg_SubmitBatch(SubmitBatch(items=(request(2),)), "driver")
    router.to_channel()
    router.receiveMsg_Dones(Dones(tickets=(2,)), "audit")
    assert router.to_channel() == []


def test_held_dones_go_ahead_of_a_presence_change(router: Recording) -> None:
    router.receiveMsg_SubmitBatch(SubmitBatch(items=(request(1),)), "driver")
    router.receiveMsg_Dones(Dones(tickets=(1,)), "audit")
    router.to_channel()
    router.receiveMsg_SubmitBatch(SubmitBatch(items=(presence(91, "peer-a", greet=False),)),
                                  "driver")
    sent = router.to_channel()
    assert [type(m) for m in sent] == [Dones, PresenceFlight]
    assert sent[0] == Dones(tickets=(1,))


def test_held_dones_go_ahead_of_a_retire_so_an_idle_channel_can_be_reaped(
    router: Recording,
) -> None:
    router.receiveMsg_SubmitBatch(SubmitBatch(items=(request(1),)), "driver")
    router.receiveMsg_Dones(Dones(tickets=(1,)), "audit")
    router.to_channel()
    router.receiveMsg_Sweep(Sweep(now=1000.0, ticket=7), "driver")
    sent = router.to_channel()
    assert [type(m) for m in sent] == [Dones, Retire]
    assert sent[0] == Dones(tickets=(1,))


def test_a_dead_channel_actors_held_dones_are_dropped(router: Recording) -> None:
    router.receiveMsg_SubmitBatch(SubmitBatch(items=(request(1),)), "driver")
    router.receiveMsg_Dones(Dones(tickets=(1,)), "audit")
    router.receiveMsg_ChildActorExited(ChildActorExited(router.channels[CHANNEL]), None)
    router.sent.clear()
    router.receiveMsg_SubmitBatch(SubmitBatch(items=(request(2),)), "driver")
    # A fresh actor: its Wiring, then the request without the old actor's tickets.
    sent = router.to_channel()
    assert [type(m) for m in sent] == [Wiring, InFlights]
    assert sent[1].dones == ()


@pytest.mark.parametrize(("open_requests", "fenced", "held"), [
    (0, False, True),
    (0, True, False),
    (1, False, False),
    (3, True, False),
])
def test_holds_dones_only_when_nothing_can_wait_for_them(open_requests: int, fenced: bool,
                                                         held: bool) -> None:
    assert holds_dones(open_requests, fenced) is held
