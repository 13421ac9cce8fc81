"""`Answer`: the one reply to one call, set once by the driver thread and waited for by the
caller (a thread blocked in `result`, or an event loop through `add_done_callback`).

It does what the runtime used `concurrent.futures.Future` for, at less cost to the thread
that resolves it: the driver resolves every answer of a batch while holding the GIL that
the callers need, and a Future's `set_result` takes its condition, walks its waiters and
notifies them through `Condition.notify_all` (~6 % of the runtime's GIL-holding samples
in-process, py-spy). Here the caller waits on a plain lock the driver releases once.
Side by side (`docs/benchmarks.md`, session 8) the in-process runtime answered 5-9 % more
requests per second with it, for ~6 % less CPU per request.

Not a Future: no cancellation, no `running`, no `concurrent.futures.wait`; `result` and
`exception` raise the builtin `TimeoutError` on a timeout, as a Future does since 3.11.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any


class AnswerGiven(RuntimeError):
    """An answer was set twice: a bug in the driver, never a caller's doing."""


class Answer:
    """The one reply to one call: `set_result`/`set_exception` once, then `result()`."""

    __slots__ = ("_callbacks", "_done", "_exception", "_guard", "_result", "_waiter")

    def __init__(self) -> None:
        self._waiter = threading.Lock()
        self._waiter.acquire()  # released once, when the answer is set
        self._guard = threading.Lock()  # orders callbacks added with the answer being set
        self._done = False
        self._result: Any = None
        self._exception: BaseException | None = None
        self._callbacks: list[Callable[[Answer], object]] = []

    def set_result(self, result: Any) -> None:
        """Answer with `result` (driver thread)."""
        self._finish(result, None)

    def set_exception(self, exception: BaseException) -> None:
        """Answer by raising `exception` in whoever waits (driver thread)."""
        self._finish(None, exception)

    def _finish(self, result: Any, exception: BaseException | None) -> None:
        with self._guard:
            if self._done:
                raise AnswerGiven("this call was already answered")
            self._result, self._exception, self._done = result, exception, True
            callbacks, self._callbacks = self._callbacks, []
        self._waiter.release()
        for callback in callbacks:
            _call(callback, self)

    def done(self) -> bool:
        """Whether the answer is set."""
        return self._done

    def cancelled(self) -> bool:
        """Never: an answer cannot be cancelled (a Future's method, for its users)."""
        return False

    def add_done_callback(self, callback: Callable[[Answer], object]) -> None:
        """Call `callback(self)` once answered: at once (this thread) if it already is,
        else on the thread that sets it."""
        with self._guard:
            if not self._done:
                self._callbacks.append(callback)
                return
        _call(callback, self)

    def result(self, timeout: float | None = None) -> Any:
        """The answer, waiting at most `timeout` seconds (None: for ever); raises the
        answer's exception, or TimeoutError."""
        self._wait(timeout)
        if self._exception is not None:
            raise self._exception
        return self._result

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The answer's exception (None when it is a result), waiting as `result` does."""
        self._wait(timeout)
        return self._exception

    def _wait(self, timeout: float | None) -> None:
        if self._done:
            return
        if not self._waiter.acquire(timeout=-1 if timeout is None else max(timeout, 0)):
            raise TimeoutError("no answer yet")
        self._waiter.release()  # any other waiter passes too


def _call(callback: Callable[[Answer], object], answer: Answer) -> None:
    # As a Future does: a raising callback is logged, and the others still run.
    try:
        callback(answer)
    except Exception:
        logging.getLogger(__name__).exception("an answer's callback raised")
