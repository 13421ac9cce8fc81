"""Answers from the driver thread to event loops: one wake-up of a loop per reply batch.

`IngressRuntime.asubmit` waits on an asyncio future while the driver thread resolves the
request's `Answer` (runtime/answer.py). `asyncio.wrap_future` woke the loop once per
request (a `call_soon_threadsafe`: a lock, a deque append and a write to the loop's
self-pipe, then a turn of the loop for each). The driver answers a whole group commit at
once, so `LoopWakeups` queues the answers and wakes each loop once for all of them: while
the driver resolves one `Replies` batch (`one_wakeup_per_loop`), wake-ups are held back
and sent once per loop at the end of the batch. What waits for a wake-up is bounded by the
requests in flight (the driver's caps).

The driver's future is never cancelled from the loop's side (`asyncio.wrap_future` did
that when the awaiting task was cancelled or timed out, and the driver then crashed
setting the answer: `InvalidStateError`, every later call `RuntimeClosed`).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import Iterator
from typing import Any

from task_ingress.runtime.answer import Answer

_batch = threading.local()
"""The wake-ups held back on this thread while it resolves a batch (None: none)."""


@contextlib.contextmanager
def one_wakeup_per_loop() -> Iterator[None]:
    """On the thread resolving futures: hold every loop's wake-up until the block ends,
    then wake each loop once. Nested uses join the outermost."""
    if getattr(_batch, "held", None) is not None:
        yield
        return
    held: dict[LoopWakeups, None] = {}  # an ordered set
    _batch.held = held
    try:
        yield
    finally:
        _batch.held = None
        for wakeups in held:
            wakeups.wake()


class LoopWakeups:
    """Hands completed `Answer`s to one event loop in batches."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._done: deque[tuple[Answer, asyncio.Future[Any]]] = deque()
        self._scheduled = False
        self.wakeups = 0
        """Times the loop was woken (for measurements)."""

    def watch(self, future: Answer) -> asyncio.Future[Any]:
        """An asyncio future (on this loop) that gets `future`'s outcome. Cancelling it
        leaves `future` alone: the driver still resolves it and frees its slot."""
        mirror: asyncio.Future[Any] = self.loop.create_future()
        future.add_done_callback(lambda done: self._completed(done, mirror))
        return mirror

    def _completed(self, done: Answer, mirror: asyncio.Future[Any]) -> None:
        # Any thread (the driver's, or the loop's own if `done` was already resolved).
        with self._lock:
            self._done.append((done, mirror))
            if self._scheduled:
                return
            self._scheduled = True
        held = getattr(_batch, "held", None)
        if held is not None:
            held[self] = None
        else:
            self.wake()

    def wake(self) -> None:
        """Schedule one delivery of everything completed so far."""
        self.wakeups += 1
        try:
            self.loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:  # the loop is closed: nobody waits on its futures any more
            with self._lock:
                self._done.clear()
                self._scheduled = False

    def _deliver(self) -> None:
        with self._lock:
            done, self._done = self._done, deque()
            self._scheduled = False
        for future, mirror in done:
            if mirror.done():  # cancelled or timed out meanwhile
                continue
            if future.cancelled():
                mirror.cancel()
                continue
            exc = future.exception()
            if exc is not None:
                mirror.set_exception(exc)
            else:
                mirror.set_result(future.result())
