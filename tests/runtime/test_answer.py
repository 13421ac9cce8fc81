"""`Answer`, the one reply to one call: set once on one thread, read on others."""

from __future__ import annotations

import threading

import pytest
from task_ingress.runtime.answer import Answer, AnswerGiven

WAIT = 5.0
"""Bound on any wait here: a hang shows as a failure, not as a slow pass."""


def test_a_result_set_on_one_thread_reaches_every_waiter_on_others() -> None:
    answer = Answer()
    got: list[object] = []
    waiters = [threading.Thread(target=lambda: got.append(answer.result(WAIT)))
               for _ in range(3)]
    for w in waiters:
        w.start()
    answer.set_result("yes")
    for w in waiters:
        w.join(WAIT)
    assert got == ["yes"] * 3 and answer.done() and answer.exception() is None
    assert answer.result() == "yes"  # and again, at once


def test_an_unanswered_call_times_out_with_the_builtin_timeout_error() -> None:
    answer = Answer()
    with pytest.raises(TimeoutError):
        answer.result(timeout=0.01)
    with pytest.raises(TimeoutError):
        answer.exception(timeout=0)
    assert not answer.done()


def test_an_exception_is_raised_in_the_waiter_and_reported_by_exception() -> None:
    answer = Answer()
    boom = ValueError("boom")
    answer.set_exception(boom)
    with pytest.raises(ValueError, match="boom"):
        answer.result(WAIT)
    assert answer.exception(WAIT) is boom and not answer.cancelled()


def test_an_answer_is_set_once() -> None:
    answer = Answer()
    answer.set_result(1)
    with pytest.raises(AnswerGiven):
        answer.set_result(2)
    with pytest.raises(AnswerGiven):
        answer.set_exception(ValueError())
    assert answer.result() == 1


def test_callbacks_run_once_whether_added_before_or_after_and_one_raising_stops_none(
    caplog: pytest.LogCaptureFixture,
) -> None:
    answer = Answer()
    seen: list[str] = []

    def bad(_: Answer) -> None:
        raise RuntimeError("a broken callback")

    answer.add_done_callback(lambda a: seen.append(f"before:{a.result()}"))
    answer.add_done_callback(bad)
    answer.add_done_callback(lambda a: seen.append("after the broken one"))
    answer.set_result(7)
    answer.add_done_callback(lambda a: seen.append(f"late:{a.result()}"))
    assert seen == ["before:7", "after the broken one", "late:7"]
    assert "callback raised" in caplog.text
