"""Idle channel actors are stopped by the sweep and come back on the next greet.

Idle: no visible peer, nothing queued or in flight, nothing sent to it since the router
asked (docs/race-freedom.md, "Reaping"). Everything after a reap behaves exactly as
before it: requests are `peer_not_found` until a greet, which starts a new actor first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from task_ingress.actors.ingress import ChannelIngress
from task_ingress.actors.router import IngressRouter, reap_candidates
from task_ingress.messages import CreateTask, IngressContext, Reason
from task_ingress.messages.protocol import (
    ChannelCount,
    InFlight,
    InFlights,
    PresenceChange,
    Retire,
    Retired,
    Settings,
    Started,
    Submission,
    SubmitBatch,
    Sweep,
    Swept,
    Wiring,
)
from task_ingress.messages.reasons import Action
from task_ingress.runtime import IngressRuntime
from task_ingress.testing import HOLD
from thespian.actors import Actor, ActorSystem

from tests.conftest import FakeClock, ctx, writer_card
from tests.race.race_harness import RaceHarness, outcome

INTERVAL = 30.0
EXPIRY = 2 * INTERVAL


def held(rt: IngressRuntime) -> tuple[int, int, int]:
    stats = rt.sweep()
    return stats.channel_actors, stats.presence_entries, stats.peer_cards


def settles_at(rt: IngressRuntime, expected: tuple[int, int, int], sweeps: int = 50) -> bool:
    """Whether the counts reach `expected` within a bounded number of sweeps: on a
    multiprocess base a reap (Retire -> Presence -> Retired -> stop) finishes after the sweep
    that started it has answered, so the next sweep is the first to count it."""
    return any(held(rt) == expected for _ in range(sweeps))


# ---- the pure candidate rule ------------------------------------------------------------
def test_candidates_are_live_unbusy_unasked_channels_without_a_greet_for_two_intervals(
) -> None:
    channels: dict[tuple[str, str], Any] = {("ws", c): object() for c in "abcdef"}
    channels[("ws", "f")] = None  # died: its slot waits for the next message
    last_greet = {("ws", "a"): 0.0, ("ws", "b"): 41.0, ("ws", "c"): 0.0, ("ws", "d"): 0.0}
    got = reap_candidates(channels, busy={("ws", "c")}, retiring={("ws", "d"): 1},
                          last_greet=last_greet, now=100.0, expiry=EXPIRY)
    assert got == [("ws", "a"), ("ws", "e")]  # b greeted 59 s ago; c busy; d asked; f dead


# ---- through the runtime ------------------------------------------------------------------
def test_channel_actors_cards_and_entries_return_to_zero_once_every_peer_expired(
    make_runtime: Callable[..., IngressRuntime], clock: FakeClock
) -> None:
    rt = make_runtime(greet_interval=INTERVAL)
    for c in range(8):
        for p in range(4):
            rt.greet("ws", f"ch-{c}", writer_card(f"peer-{c}-{p}"))
    assert held(rt) == (8, 32, 32)
    clock.advance(EXPIRY - 0.5)
    assert held(rt) == (8, 32, 32)  # all still visible: nothing is freed
    clock.advance(0.5)
    assert held(rt) == (0, 0, 0)


def test_a_channel_whose_peers_left_is_stopped_once_its_last_greet_is_two_intervals_old(
    make_runtime: Callable[..., IngressRuntime], clock: FakeClock
) -> None:
    rt = make_runtime(greet_interval=INTERVAL)
    rt.greet("ws", "ops", writer_card("peer-a"))
    rt.leave("ws", "ops", "peer-a")
    assert held(rt) == (1, 0, 0)
    clock.advance(EXPIRY)
    assert held(rt) == (0, 0, 0)


@pytest.mark.parametrize("base", [
    "simpleSystemBase", pytest.param("multiprocQueueBase", marks=pytest.mark.multiproc)])
def test_requests_greets_and_leaves_after_a_reap_behave_as_before_it(
    make_runtime: Callable[..., IngressRuntime], clock: FakeClock, base: str
) -> None:
    rt = make_runtime(greet_interval=INTERVAL, actor_base=base)
    rt.greet("ws", "ops", writer_card("peer-a"))
    first = rt.submit(ctx("r-1"), CreateTask(title="t"))
    assert first.accepted
    clock.advance(EXPIRY)
    assert settles_at(rt, (0, 0, 0))
    assert rt.submit(ctx("r-2"), CreateTask(title="t")).reason == Reason.PEER_NOT_FOUND
    rt.leave("ws", "ops", "peer-a")
    assert rt.submit(ctx("r-2"), CreateTask(title="t")).reason == Reason.PEER_NOT_FOUND
    rt.greet("ws", "ops", writer_card("peer-a"))
    assert settles_at(rt, (1, 1, 1))
    replay = rt.submit(ctx("r-1"), CreateTask(title="t"))  # the store remembers, not the actor
    assert replay.replay and replay.task_id == first.task_id
    assert rt.submit(ctx("r-3"), CreateTask(title="t")).accepted
    rt.leave("ws", "ops", "peer-a")
    assert rt.submit(ctx("r-4"), CreateTask(title="t")).reason == Reason.PEER_NOT_FOUND
    assert [(r.request_id, r.reason) for r in rt.audit()] == [
        ("r-1", None), ("r-2", Reason.PEER_NOT_FOUND), ("r-2", Reason.PEER_NOT_FOUND),
        ("r-1", None), ("r-3", None), ("r-4", Reason.PEER_NOT_FOUND)]


def test_a_channel_with_a_request_in_flight_is_not_stopped_even_with_its_peer_expired(
    make_runtime: Callable[..., IngressRuntime], clock: FakeClock
) -> None:
    rt = make_runtime(greet_interval=INTERVAL, store_proxy_class=HOLD)
    rt.greet("ws", "ops", writer_card("peer-a"))
    h = RaceHarness(rt)
    h.hold()
    pending = h.submit(ctx("r-1"), CreateTask(title="t"))
    assert h.held() == ("r-1",)
    clock.advance(EXPIRY)
    assert held(rt)[0] == 1  # the peer expired, but its channel still has r-1 in flight
    h.release()
    assert outcome(pending).accepted  # admitted before the expiry: it commits
    assert held(rt)[0] == 0


def test_a_channel_with_a_visible_peer_is_never_stopped(
    make_runtime: Callable[..., IngressRuntime], clock: FakeClock
) -> None:
    rt = make_runtime(greet_interval=INTERVAL)
    for step in range(10):  # a heartbeat every half interval, as AGH peers do
        rt.greet("ws", "ops", writer_card("peer-a"))
        clock.advance(INTERVAL / 2)
        assert held(rt) == (1, 1, 1)
        assert rt.submit(ctx(f"r-{step}"), CreateTask(title="t")).accepted


# ---- actor level: the parts a one-thread runtime cannot interleave ---------------------
class FakePresence(Actor):  # type: ignore[misc]
    """Keeps what reaches Presence; "answer" replies to the last Retire and Sweep as
    Presence and Capability would for a vacant channel; "seen" lists what came, "last"
    returns the last of it."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Any] = []

    def receiveMessage(self, msg: Any, sender: Any) -> None:
        if isinstance(msg, Wiring):
            self.send(sender, Started(ticket=msg.ticket))
        elif msg == "answer":
            retire = next(m for m in reversed(self.seen) if isinstance(m, Retire))
            sweep = next(m for m in reversed(self.seen) if isinstance(m, Sweep))
            self.send(retire.reply_to, Retired(workspace=retire.workspace,
                                               channel=retire.channel, nonce=retire.nonce,
                                               sweep=retire.sweep, vacant=True))
            self.send(sweep.reply_to, Swept(ticket=sweep.ticket, peers=0, cards=0))
        elif msg == "seen":
            self.send(sender, [type(m).__name__ for m in self.seen])
        elif msg == "last":
            self.send(sender, self.seen[-1])
        else:
            self.seen.append(msg)


@pytest.fixture
def asys() -> Iterator[Any]:
    system = ActorSystem("simpleSystemBase", transientUnique=True)
    try:
        yield system
    finally:
        system.shutdown()


def _settings(tmp_path: Path) -> Settings:
    return Settings(store_path=str(tmp_path / "s.db"), durable=False, local_peer_id="local",
                    greet_interval=INTERVAL, tasks_enabled=True)


def _greet(now: float, ticket: int) -> SubmitBatch:
    return SubmitBatch(items=(PresenceChange(ticket=ticket, workspace="ws", channel="ops",
                                             peer_id="peer-a", card=writer_card("peer-a"),
                                             now=now),))


def _count(asys: Any) -> ChannelCount:
    for _ in range(20):
        msg = asys.listen(1.0)
        if isinstance(msg, ChannelCount):
            return msg
    raise AssertionError("no ChannelCount")


@pytest.mark.parametrize("greet_meanwhile", [True, False])
def test_a_retire_answer_is_void_once_the_router_sent_the_channel_anything_after_it(
    asys: Any, tmp_path: Path, greet_meanwhile: bool
) -> None:
    presence = asys.createActor(FakePresence)
    router = asys.createActor(IngressRouter)
    wiring = Wiring(ticket=1, settings=_settings(tmp_path), presence=presence,
                    capability=presence, audit=presence)
    assert isinstance(asys.ask(router, wiring, 10), Started)
    asys.tell(router, _greet(0.0, 2))
    asys.tell(router, Sweep(now=EXPIRY, ticket=7))  # the channel is a candidate: Retire
    assert asys.ask(presence, "seen", 10) == ["PresenceFlight", "Sweep", "Retire"]
    if greet_meanwhile:  # a greet routed while the Retire is on its way
        asys.tell(router, _greet(EXPIRY, 3))
    asys.tell(presence, "answer")  # Presence found the channel vacant before that greet
    count = _count(asys)
    assert count.ticket == 7
    assert count.channel_actors == (1 if greet_meanwhile else 0)


def test_a_busy_channel_actor_answers_retire_itself_and_never_passes_it_on(
    asys: Any, tmp_path: Path
) -> None:
    presence = asys.createActor(FakePresence)
    channel = asys.createActor(ChannelIngress)
    asys.tell(channel, Wiring(ticket=1, settings=_settings(tmp_path), presence=presence))
    context = IngressContext(workspace="ws", peer_id="peer-a", channel="ops", request_id="r")
    sub = Submission(ticket=9, context=context, request=CreateTask(title="t"),
                     action=Action.CREATE, payload_size=1, now=0.0)
    asys.tell(channel, InFlights(items=(InFlight(submission=sub, context=context,
                                                 reply_to=None, checked=True),)))
    assert asys.ask(presence, "seen", 10) == ["InFlights"]  # in flight now
    asys.tell(channel, Retire(workspace="ws", channel="ops", nonce=4, sweep=1, now=0.0,
                              reply_to=presence))  # Retired comes back to reply_to
    assert asys.ask(presence, "seen", 10) == ["InFlights", "Retired"]
    assert asys.ask(presence, "last", 10) == Retired(workspace="ws", channel="ops", nonce=4,
                                                     sweep=1, vacant=False)
