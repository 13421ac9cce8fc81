"""Which asyncio event loop the daemons and NATS clients run on: uvloop when it is there.

uvloop (libuv, written in Cython) does the loop's own work per message (socket reads and
writes, callback scheduling, call_soon_threadsafe's wake-up) for less CPU than asyncio's
pure-Python selector loop; the code running on it is unchanged. It has no wheels for
every platform (none for Windows), so when it cannot be imported the standard loop is
used. `TASK_INGRESS_EVENT_LOOP=asyncio` asks for the standard loop even when uvloop is
installed: for a side-by-side measurement, or to rule the loop out when chasing a bug.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar

EVENT_LOOP_ENV = "TASK_INGRESS_EVENT_LOOP"
"""`asyncio` for the standard loop; unset, empty or `uvloop` for uvloop when installed."""

T = TypeVar("T")


def loop_factory(environ: Mapping[str, str] | None = None
                 ) -> Callable[[], asyncio.AbstractEventLoop]:
    """The constructor of the event loop to run: uvloop's, or asyncio's when uvloop is
    missing or `TASK_INGRESS_EVENT_LOOP` is `asyncio` (any other value but `uvloop` is
    refused, so a typo does not silently measure the wrong loop)."""
    env = os.environ if environ is None else environ
    wanted = env.get(EVENT_LOOP_ENV, "").strip().lower()
    if wanted == "asyncio":
        return asyncio.new_event_loop
    if wanted not in ("", "uvloop"):
        raise ValueError(f"{EVENT_LOOP_ENV} must be 'uvloop' or 'asyncio', not {wanted!r}")
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new event loop of the kind `loop_factory` chooses (not set as current)."""
    return loop_factory()()


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` on the loop `loop_factory` chooses."""
    try:
        factory = loop_factory()
    except ValueError:
        main.close()  # never awaited: close it so no warning hides the error
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
