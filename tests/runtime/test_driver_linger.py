"""The driver's batch linger: it gathers the calls already there and stops at the expected
count, at the stop sentinel, or when callers go quiet; it never invents or loses a call."""

from __future__ import annotations

from task_ingress.messages.protocol import Settings
from task_ingress.runtime.driver import _STOP, Call, Driver
from task_ingress.runtime.flow import FlowLimits


def driver(linger: float) -> Driver:
    """A driver that is never started: only its inbox and linger are used."""
    settings = Settings(store_path="unused.db", durable=False, local_peer_id="local",
                        greet_interval=30.0, tasks_enabled=True)
    return Driver("simpleSystemBase", settings, lambda: 0.0, 1.0, FlowLimits(), linger)


def calls(n: int) -> list[Call]:
    return [Call(target="router", message=f"m{i}") for i in range(n)]


def test_linger_stops_at_the_expected_number_of_calls() -> None:
    d = driver(linger=5.0)  # long: only the count can end it quickly
    waiting = calls(5)
    for c in waiting:
        d.inbox.put(c)
    more, stop = d._linger(3)
    assert more == waiting[:3] and not stop
    assert d.inbox.qsize() == 2  # the rest stay for the next batch


def test_linger_returns_what_came_when_callers_go_quiet() -> None:
    d = driver(linger=5.0)
    waiting = calls(2)
    for c in waiting:
        d.inbox.put(c)
    more, stop = d._linger(10)  # 8 never come: one quiet gap ends it, not the 5 s linger
    assert more == waiting and not stop


def test_linger_hands_back_the_stop_sentinel() -> None:
    d = driver(linger=5.0)
    first = calls(1)
    d.inbox.put(first[0])
    d.inbox.put(_STOP)
    more, stop = d._linger(4)
    assert more == first and stop


def test_calls_submitted_together_stay_together() -> None:
    d = driver(linger=5.0)
    group = calls(3)
    d.submit_calls(group)
    more, stop = d._linger(2)  # one inbox item: never split, even past the expected count
    assert more == group and not stop
