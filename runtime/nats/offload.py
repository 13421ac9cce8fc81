"""Ed25519 work off the daemon's event loop, in batches, in arrival order.

Verifying a request's signature (~100 µs) and signing its answer (~35 µs) release the GIL
in `cryptography`, so a worker thread can do them while the event loop reads, judges and
publishes other messages. Per call, a thread hop would cost about what it saves (a queue
put, a `call_soon_threadsafe` back, a loop turn), so calls made in one turn of the loop go
to the worker as ONE job, and their results come back with ONE wake-up of the loop.

One worker thread, jobs in submission order, results delivered in the same order: every
message's verification finishes in arrival order, so the handler's order-sensitive state
(the judged-id window, greets applied in arrival order) sees messages in the order it did
when verification ran inline. The queue is bounded by the handler's in-flight slots:
each call belongs to a message that holds one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
MAX_JOB = 256
"""Calls per worker job at most (a job is at most one loop turn's calls anyway)."""

Call = tuple[Callable[..., Any], tuple[Any, ...], "asyncio.Future[Any]"]


class BatchOffload:
    """Runs blocking calls on one worker thread, batched per turn of the event loop."""

    def __init__(self, name: str = "ingress-crypto") -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._queued: list[Call] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.jobs = 0
        """Worker jobs submitted (for measurements: calls per job = batch size)."""

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on the worker thread; its result or exception."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        if not self._queued:
            self._loop = loop
            loop.call_soon(self._submit)
        self._queued.append((fn, args, future))
        return await future

    def _submit(self) -> None:
        calls, self._queued = self._queued[:MAX_JOB], self._queued[MAX_JOB:]
        if self._queued:
            asyncio.get_running_loop().call_soon(self._submit)
        self.jobs += 1
        try:
            self._executor.submit(self._work, calls)
        except RuntimeError as exc:  # shut down: nobody should be waiting any more
            for _fn, _args, future in calls:
                if not future.done():
                    future.set_exception(exc)

    def _work(self, calls: list[Call]) -> None:
        results: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        for fn, args, future in calls:
            try:
                results.append((future, fn(*args), None))
            except Exception as exc:
                results.append((future, None, exc))
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(_deliver, results)

    def close(self) -> None:
        """Finish the jobs already submitted, then stop the worker thread."""
        self._executor.shutdown(wait=True, cancel_futures=False)


def _deliver(results: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for future, value, exc in results:
        if future.done():  # its task was cancelled meanwhile
            continue
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(value)
