"""The Hold actor itself: it holds, releases in the order asked, and lets nothing overtake."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from task_ingress.messages import CreateTask, IngressContext
from task_ingress.messages.protocol import (
    InFlight,
    InFlights,
    Probe,
    Settings,
    Started,
    Submission,
    Wiring,
)
from task_ingress.messages.reasons import Action
from task_ingress.testing import Hold, HoldArm, HoldRelease, HoldState
from thespian.actors import Actor, ActorSystem


class Recorder(Actor):  # type: ignore[misc]
    """Stands in for TaskStore: remembers what reached it; "dump" returns the list."""

    def __init__(self) -> None:
        super().__init__()
        self.got: list[str] = []

    def receiveMessage(self, message: Any, sender: Any) -> None:
        if message == "dump":
            self.send(sender, list(self.got))
        elif isinstance(message, InFlights):
            self.got.extend(f.context.request_id for f in message.items)
        elif isinstance(message, Probe):
            self.got.append(f"probe-{message.probe_id}")


def flight(request_id: str) -> InFlight:
    ctx = IngressContext(workspace="ws", peer_id="pa", channel="ops", request_id=request_id)
    sub = Submission(ticket=1, context=ctx, request=CreateTask(title="t"),
                     action=Action.CREATE, payload_size=1, now=0.0)
    return InFlight(submission=sub, context=ctx, reply_to=None)


@pytest.fixture
def wired() -> Iterator[tuple[Any, Any, Any]]:
    asys = ActorSystem("simpleSystemBase", transientUnique=True)
    try:
        store, hold = asys.createActor(Recorder), asys.createActor(Hold)
        settings = Settings(store_path="unused", durable=False, local_peer_id="local",
                            greet_interval=30.0, tasks_enabled=True)
        assert isinstance(asys.ask(hold, Wiring(ticket=0, settings=settings, store=store), 5),
                          Started)
        yield asys, hold, store
    finally:
        asys.shutdown()


def test_hold_releases_in_the_order_asked_and_keeps_a_probe_behind_held_requests(
        wired: tuple[Any, Any, Any]) -> None:
    asys, hold, store = wired
    asys.tell(hold, flight("before"))
    state = asys.ask(hold, HoldArm(ticket=1), 5)
    assert isinstance(state, HoldState) and state.holding
    for rid in ("a", "b"):
        asys.tell(hold, flight(rid))
    asys.tell(hold, Probe(probe_id=7, reply_to=None))
    asys.tell(hold, flight("c"))
    assert asys.ask(store, "dump", 5) == ["before"]
    state = asys.ask(hold, HoldRelease(ticket=2, order=(1,)), 5)
    assert isinstance(state, HoldState) and state.held == ("a", "c")
    assert asys.ask(store, "dump", 5) == ["before", "b"]   # the probe still waits for "a"
    state = asys.ask(hold, HoldRelease(ticket=3, order=(1, 0)), 5)
    assert isinstance(state, HoldState) and state.held == () and not state.holding
    assert asys.ask(store, "dump", 5) == ["before", "b", "c", "a", "probe-7"]
    asys.tell(hold, flight("after"))
    assert asys.ask(store, "dump", 5)[-1] == "after"
