"""`IngressRuntime.statistics()`: what is queued and in flight, and what the last sweep
counted as held, as a frozen snapshot."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import pytest
from task_ingress.messages import CreateTask
from task_ingress.runtime import IngressRuntime, RuntimeConfig, RuntimeStatistics
from task_ingress.runtime import driver as driver_module
from task_ingress.runtime.config import PROCESS_MODES
from task_ingress.testing import HOLD

from tests.actors.test_supervision import submit_as_one_batch
from tests.conftest import FakeClock, ctx, writer_card
from tests.race.race_harness import RaceHarness, outcome


def test_held_requests_count_as_in_flight_until_answered(
    make_runtime: Callable[..., IngressRuntime]
) -> None:
    rt = make_runtime(store_proxy_class=HOLD)
    peers = ("peer-a", "peer-b", "peer-c")  # a channel has one request per peer in flight
    for peer in peers:
        rt.greet("ws", "ops", writer_card(peer))
    stats = rt.statistics()
    assert (stats.calls_waiting, stats.requests_in_flight) == (0, 0)
    h = RaceHarness(rt)
    h.hold()
    pending = [h.submit(ctx("r-1", peer), CreateTask(title="t")) for peer in peers]
    assert len(h.held()) == 3
    assert rt.statistics().requests_in_flight == 3
    h.release()
    assert all(outcome(f).accepted for f in pending)
    assert rt.statistics().requests_in_flight == 0


def test_a_runtime_not_running_reports_nothing_and_the_record_is_frozen() -> None:
    rt = IngressRuntime(RuntimeConfig())
    stats = rt.statistics()
    assert stats == RuntimeStatistics(calls_waiting=0, requests_in_flight=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.calls_waiting = 1  # type: ignore[misc]


def test_a_runtime_is_alive_only_between_start_and_close() -> None:
    rt = IngressRuntime(RuntimeConfig())
    assert not rt.alive()
    with rt:
        assert rt.alive()
    assert not rt.alive()


@pytest.mark.parametrize("mode", PROCESS_MODES)
def test_the_held_counts_are_those_of_the_last_sweep(
    make_runtime: Callable[..., IngressRuntime], clock: FakeClock, mode: str
) -> None:
    rt = make_runtime(greet_interval=30.0, process_mode=mode)
    for channel in ("ops", "dev", "qa"):
        rt.greet("ws", channel, writer_card("peer-a"))
    rt.greet("ws", "ops", writer_card("peer-b"))
    swept = rt.sweep()
    assert (swept.channel_actors, swept.presence_entries, swept.peer_cards) == (3, 4, 4)
    assert rt.statistics() == swept
    clock.advance(60.0)
    swept = rt.sweep()
    assert (swept.channel_actors, swept.presence_entries, swept.peer_cards) == (0, 0, 0)


@pytest.mark.parametrize("mode", PROCESS_MODES)
def test_the_timer_sweep_refreshes_the_held_counts_of_an_idle_runtime(
    make_runtime: Callable[..., IngressRuntime], monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    monkeypatch.setattr(driver_module, "SWEEP_EVERY", 0.0)  # every driver round, not 1 s
    rt = make_runtime(process_mode=mode)
    for channel in ("ops", "dev", "qa"):
        rt.greet("ws", channel, writer_card("peer-a"))
    # No further call: only the timer's sweep, whose answer the idle driver must read (an
    # answer left unread would pile up, one a second, in the actor system).
    deadline = time.monotonic() + 30.0
    while rt.statistics().peer_cards != 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    stats = rt.statistics()
    assert (stats.channel_actors, stats.presence_entries, stats.peer_cards) == (3, 3, 3)


@pytest.mark.parametrize("mode", PROCESS_MODES)
def test_dispatch_totals_count_every_call_once_and_every_hand_off_once(
    make_runtime: Callable[..., IngressRuntime], mode: str
) -> None:
    rt = make_runtime(process_mode=mode)
    start = rt.statistics()
    peers = ("peer-a", "peer-b", "peer-c")
    for peer in peers:  # one at a time: each greet its own hand-off
        rt.greet("ws", "ops", writer_card(peer))
    greeted = rt.statistics()
    assert (greeted.calls_dispatched - start.calls_dispatched,
            greeted.batches_dispatched - start.batches_dispatched) == (3, 3)
    outcomes = submit_as_one_batch(rt, [(ctx("r-1", peer), CreateTask(title="t"))
                                        for peer in peers])
    assert all(o.accepted for o in outcomes)
    batched = rt.statistics()
    assert (batched.calls_dispatched - greeted.calls_dispatched,
            batched.batches_dispatched - greeted.batches_dispatched) == (3, 1)
    rt.get_task("ws", outcomes[0].task_id or "")  # a query is no call of a batch
    rt.sweep()  # nor is the housekeeping sweep
    assert rt.statistics().calls_dispatched == batched.calls_dispatched
    assert rt.statistics().batches_dispatched == batched.batches_dispatched
