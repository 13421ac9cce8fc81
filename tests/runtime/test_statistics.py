"""`IngressRuntime.statistics()`: what is queued and in flight, as a frozen snapshot."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
from task_ingress.messages import CreateTask
from task_ingress.runtime import IngressRuntime, RuntimeConfig, RuntimeStatistics
from task_ingress.testing import HOLD

from tests.conftest import ctx, writer_card
from tests.race.race_harness import RaceHarness, outcome


def test_held_requests_count_as_in_flight_until_answered(
    make_runtime: Callable[..., IngressRuntime]
) -> None:
    rt = make_runtime(store_proxy_class=HOLD)
    peers = ("peer-a", "peer-b", "peer-c")  # a channel has one request per peer in flight
    for peer in peers:
        rt.greet("ws", "ops", writer_card(peer))
    assert rt.statistics() == RuntimeStatistics(calls_waiting=0, requests_in_flight=0)
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
