"""How a daemon (`serve`, `serve --cluster`) is stopped: the first SIGTERM/SIGINT/SIGHUP or
`request_stop()` begins a graceful stop (drain, release, exit 0); a second signal exits at
once with status 130, after removing the ready file so no client waits on a daemon that is
gone.

`connect_within` is the bounded NATS connect both daemons start with: a stop signal or its
timeout ends it for good (nats-py swallows a single cancel)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from typing import Any

from task_ingress.runtime.nats.ready import remove_ready_file

HARD_EXIT_STATUS = 130
CANCEL_TRIES = 100
CANCEL_PAUSE = 0.05


async def cancel_until_done(task: asyncio.Future[Any]) -> bool:
    """Cancel `task` and wait for it to end, cancelling again while it runs on: one
    cancellation can be lost (Python 3.11's `asyncio.wait_for` returns its inner
    future's outcome instead of raising CancelledError when both happen in one turn, and
    nats-py's connect loop then simply tries the next server). True when it ended within
    CANCEL_TRIES x CANCEL_PAUSE seconds."""
    for _ in range(CANCEL_TRIES):
        if task.done():
            return True
        task.cancel()
        await asyncio.wait({task}, timeout=CANCEL_PAUSE)
    return task.done()


async def connect_within(client: Any, options: dict[str, Any], timeout: float,
                         refused: asyncio.Event | None = None) -> BaseException | None:
    """`client.connect(**options)` for at most `timeout` seconds, or until `refused` is set;
    then the attempt is cancelled until it has really ended (`cancel_until_done`: nats-py
    would otherwise go on retrying), also when the caller is cancelled by a signal, and a
    client that did not connect is closed (a failed connect leaves its socket). None when
    it connected, else why not (a TimeoutError when it ran out of time or was refused)."""
    attempt = asyncio.ensure_future(client.connect(**options))
    denied = asyncio.ensure_future(refused.wait()) if refused is not None else None
    connected = False
    try:
        await asyncio.wait({attempt} if denied is None else {attempt, denied},
                           timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if denied is not None:
            denied.cancel()
        await cancel_until_done(attempt)
        connected = (attempt.done() and not attempt.cancelled()
                     and attempt.exception() is None)
        if not connected:
            with contextlib.suppress(Exception):
                await client.close()
    if connected:
        return None
    exc = attempt.exception() if attempt.done() and not attempt.cancelled() else None
    return exc if exc is not None else TimeoutError()


class Stoppable:
    """The stop control both daemons share. Subclasses set `log` and `settings` (with a
    `ready_file`) and call `_arm_stop()` first thing on their event loop."""

    log: Any
    settings: Any

    def __init__(self, install_signals: bool) -> None:
        self.install_signals = install_signals
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._signals = 0

    def request_stop(self) -> None:
        """Begin a graceful stop; safe from any thread."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # its loop is closed: already stopped
                loop.call_soon_threadsafe(stop.set)

    def _arm_stop(self) -> asyncio.Event:
        """Bind a new stop event to the running loop (returned) and install the signal
        handlers if asked."""
        self._loop = asyncio.get_running_loop()
        stop = self._stop = asyncio.Event()
        if not self.install_signals:
            return stop
        signals = [signal.SIGTERM, signal.SIGINT]
        # A closed terminal (SIGHUP) stops it gracefully too, unless run under nohup.
        if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
            signals.append(signal.SIGHUP)
        for signum in signals:
            self._loop.add_signal_handler(signum, self._on_signal, signum)
        return stop

    def _on_signal(self, signum: int) -> None:
        self._signals += 1
        if self._signals == 1:
            self.log.info("serve.stopping", signal=signal.Signals(signum).name)
            if self._stop is not None:
                self._stop.set()
            return
        self.log.warning("serve.hard_exit", signal=signal.Signals(signum).name)
        if self.settings.ready_file:  # clients must not wait on a daemon that is gone
            remove_ready_file(self.settings.ready_file, os.getpid())
        self._before_hard_exit()
        os._exit(HARD_EXIT_STATUS)

    def _before_hard_exit(self) -> None:
        """What must end with the process on a second signal (a child server, say)."""
