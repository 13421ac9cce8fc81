"""The driver's inbox and its batch linger: it gathers the calls already there and stops at
the expected count, at the stop sentinel, or when callers go quiet; it never invents or
loses a call."""

from __future__ import annotations

from task_ingress.runtime.inbox import Call, Inbox


def calls(n: int) -> list[Call]:
    return [Call(message=f"m{i}") for i in range(n)]


def filled(waiting: list[Call]) -> Inbox:
    inbox = Inbox()
    for c in waiting:
        inbox.put(c)
    return inbox


def test_linger_stops_at_the_expected_number_of_calls() -> None:
    waiting = calls(5)
    inbox = filled(waiting)
    more, stop = inbox.linger(3, linger=5.0)  # long: only the count can end it quickly
    assert more == waiting[:3] and not stop
    assert inbox.qsize() == 2  # the rest stay for the next batch


def test_linger_returns_what_came_when_callers_go_quiet() -> None:
    waiting = calls(2)
    inbox = filled(waiting)
    more, stop = inbox.linger(10, linger=5.0)  # 8 never come: one quiet gap ends it, not 5 s
    assert more == waiting and not stop


def test_linger_hands_back_the_stop_sentinel() -> None:
    first = calls(1)
    inbox = filled(first)
    inbox.put_stop()
    more, stop = inbox.linger(4, linger=5.0)
    assert more == first and stop


def test_calls_submitted_together_stay_together() -> None:
    group = calls(3)
    inbox = Inbox()
    inbox.put_together(group)
    more, stop = inbox.linger(2, linger=5.0)  # one item: never split, even past the count
    assert more == group and not stop


def test_collect_takes_what_waits_up_to_the_batch_size_and_sees_the_stop() -> None:
    waiting = calls(5)
    inbox = filled(waiting)
    taken, stop = inbox.collect(block=False, max_batch=3)
    assert taken == waiting[:3] and not stop
    inbox.put_stop()
    taken, stop = inbox.collect(block=False, max_batch=3)
    assert taken == waiting[3:] and stop
    assert inbox.collect(block=False, max_batch=3) == ([], False)


def test_drain_returns_every_waiting_call_and_skips_the_stop() -> None:
    single, group = calls(1), calls(2)
    inbox = filled(single)
    inbox.put_stop()
    inbox.put_together(group)
    assert inbox.drain() == single + group
    assert inbox.qsize() == 0
