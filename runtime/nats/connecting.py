"""A nats-py connect that can be given up for sure (a stop during start-up, a connect
timeout).

nats-py's `Client.connect` retries forever with `max_reconnect_attempts=-1`, and it can
swallow a cancellation: on Python 3.11, `asyncio.wait_for` (used for every socket open and
handshake read) returns the inner result when a cancel lands in the same loop turn the
connection attempt ended in (a refused connection included), and nats-py then reports the
failure and tries again, the cancel forgotten. A daemon that cancelled once and then awaited
the connect hung there (serve ignored a stop signal while waiting for NATS). So a given-up
attempt is cancelled again after every failed try nats-py reports, until it has ended.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

ErrorCallback = Callable[[Exception], Awaitable[None]]


class ConnectAttempt:
    """`client.connect(**options)` running in its own task; `give_up()` ends it."""

    def __init__(self, client: Any, options: dict[str, Any]) -> None:
        self.client = client
        self._failed = asyncio.Event()
        self._given_up = False
        error_cb: ErrorCallback | None = options.get("error_cb")

        async def on_error(exc: Exception) -> None:
            self._failed.set()  # nats-py reports each failed try here before its next one
            if error_cb is not None:
                await error_cb(exc)

        self.task: asyncio.Task[None] = asyncio.ensure_future(
            client.connect(**{**options, "error_cb": on_error}))

    @property
    def connected(self) -> bool:
        """The connect finished without error and was not given up."""
        return (not self._given_up and self.task.done() and not self.task.cancelled()
                and self.task.exception() is None)

    async def give_up(self) -> None:
        """Cancel the connect and return once its task has ended; a client it connected
        anyway (the cancel came too late) is closed, so nothing of it is left running."""
        self._given_up = True
        while not self.task.done():
            self._failed.clear()
            self.task.cancel()
            failed = asyncio.ensure_future(self._failed.wait())
            try:
                # Either the cancel ended it, or nats-py swallowed it and reported the
                # failed try it ended instead: then cancel again, before its next try.
                await asyncio.wait({self.task, failed}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                failed.cancel()
        await self.close()

    async def close(self) -> None:
        """Close the client (a failed connect leaves its socket); never raises."""
        with contextlib.suppress(Exception):
            await self.client.close()
