"""Giving up a NATS connect (runtime/nats/connecting.py): it ends even when nats-py swallows
the cancel, and leaves no client open.

nats-py cannot be steered into the race on purpose (it needs a cancel in the very loop turn a
socket open fails in), so `RetryingClient` is its connect loop in miniature, with the same
`asyncio.wait_for` per try; the test completes a try and cancels in one turn, which is what
made `serve` ignore a stop signal while it waited for NATS."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from task_ingress.runtime.nats.connecting import ConnectAttempt

HANG_GUARD = 60.0
"""Only a broken give_up gets near this: it would wait forever."""


class RetryingClient:
    """nats-py's `Client.connect` with `max_reconnect_attempts=-1`, in miniature: each try
    is an `asyncio.wait_for` on a socket open the test completes; a failed try is reported
    to `error_cb`, then retried after a pause."""

    def __init__(self) -> None:
        self.tries: list[asyncio.Future[None]] = []
        self.closed = False

    async def connect(self, *, error_cb: Any, **_: Any) -> None:
        while True:
            opening: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.tries.append(opening)
            try:
                await asyncio.wait_for(opening, 3600)
                return
            except OSError as exc:
                await error_cb(exc)
            await asyncio.sleep(3600)  # nats-py's reconnect_time_wait

    async def close(self) -> None:
        self.closed = True


async def _give_up(attempt: ConnectAttempt) -> None:
    ending = asyncio.ensure_future(attempt.give_up())
    done, _ = await asyncio.wait({ending}, timeout=HANG_GUARD)  # never cancels `ending`
    assert ending in done, "give_up never returned: the connect is still running"
    ending.result()


async def _started(client: RetryingClient) -> None:
    while not client.tries:
        await asyncio.sleep(0)


def test_a_given_up_connect_ends_even_when_its_cancel_lands_as_a_try_fails() -> None:
    reported: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        reported.append(exc)

    async def scenario() -> ConnectAttempt:
        client = RetryingClient()
        attempt = ConnectAttempt(client, {"error_cb": on_error})
        await _started(client)
        # The try fails and the cancel comes in the same loop turn (a stop signal read
        # together with the refused socket).
        client.tries[0].set_exception(ConnectionRefusedError("refused"))
        await _give_up(attempt)
        return attempt

    attempt = asyncio.run(scenario())
    assert attempt.task.cancelled() and not attempt.connected
    assert attempt.client.closed
    if sys.version_info < (3, 12):  # there wait_for swallows the cancel: the race happened
        assert [type(e) for e in reported] == [ConnectionRefusedError]
        assert len(attempt.client.tries) == 1  # and the retry it began was cancelled


def test_a_connect_that_succeeds_as_it_is_given_up_is_closed() -> None:
    async def scenario() -> ConnectAttempt:
        client = RetryingClient()

        async def on_error(exc: Exception) -> None:
            raise AssertionError(f"no try failed: {exc!r}")

        attempt = ConnectAttempt(client, {"error_cb": on_error})
        await _started(client)
        client.tries[0].set_result(None)
        await _give_up(attempt)
        return attempt

    attempt = asyncio.run(scenario())
    assert not attempt.connected
    assert attempt.client.closed


def test_a_connect_that_is_not_given_up_is_left_open() -> None:
    async def scenario() -> ConnectAttempt:
        client = RetryingClient()

        async def on_error(exc: Exception) -> None:
            raise AssertionError(f"no try failed: {exc!r}")

        attempt = ConnectAttempt(client, {"error_cb": on_error})
        await _started(client)
        client.tries[0].set_result(None)
        await attempt.task
        return attempt

    attempt = asyncio.run(scenario())
    assert attempt.connected and not attempt.client.closed
