"""Fixtures for the NATS transport: a real nats-server, an in-process daemon, signing peers.

Everything started here is stopped in `finally` blocks, and a leaked-process check runs
after each daemon fixture.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from task_ingress.runtime.nats.daemon import Daemon
from task_ingress.runtime.nats.server import NatsServer
from task_ingress.runtime.nats.settings import ServeSettings

from tests.conftest import _children, _new_children
from tests.nats.agh_rules import agh_problems, direct_room_problem
from tests.nats.nats_support import Wire


@pytest.fixture
def nats_server() -> Iterator[NatsServer]:
    """A token-protected nats-server on a free loopback port, always stopped."""
    server = NatsServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


class RunningDaemon:
    """A Daemon serving on a background thread."""

    def __init__(self, daemon: Daemon, thread: threading.Thread) -> None:
        self.daemon = daemon
        self.thread = thread

    @property
    def runtime(self) -> Any:
        return self.daemon.runtime

    @property
    def info(self) -> Any:
        return self.daemon.info

    def stop(self) -> None:
        if not self.thread.is_alive():
            return
        self.daemon.request_stop()
        self.thread.join(30)
        assert not self.thread.is_alive(), "daemon did not stop"


DAEMON_MARK = b'"from":"task-ingress'
"""How the daemon's own JSON envelopes start their `from` (its default peer ID and
nickname; the tests keep both): the tap keeps only those, so a flood costs it nothing."""


class WireTap:
    """Records every message the daemon published on AGH subjects and reply inboxes, with
    its arrival time."""

    def __init__(self, url: str, token: str | None) -> None:
        self.wire = Wire(url, token)
        self.seen: list[tuple[float, str, bytes]] = []

        async def cb(msg: Any) -> None:
            if DAEMON_MARK in msg.data:
                self.seen.append((time.time(), msg.subject, bytes(msg.data)))

        async def go() -> None:
            await self.wire.nc.subscribe("agh.>", cb=cb)
            await self.wire.nc.subscribe("_INBOX.>", cb=cb)
            await self.wire.nc.flush()

        self.wire._run(go())

    def published_by(self, names: set[str]) -> list[tuple[float, str, dict[str, Any]]]:
        """Every JSON envelope whose `from` is one of `names`."""
        found = []
        for at, subject, data in self.seen:
            try:
                obj = json.loads(data)
            except (ValueError, RecursionError):
                continue
            if isinstance(obj, dict) and obj.get("from") in names:
                found.append((at, subject, obj))
        return found

    def close(self) -> None:
        self.wire.close()


def assert_all_agh_valid(tap: WireTap, names: set[str]) -> int:
    """Every envelope the daemon published passes AGH's rules (tests/nats/agh_rules.py)."""
    published = tap.published_by(names)
    bad = []
    for at, subject, obj in published:
        problems = agh_problems(obj, int(at))
        room = direct_room_problem(obj)
        if room:
            problems.append(room)
        if problems:
            bad.append((subject, obj.get("kind"), problems))
    assert not bad, f"the daemon published envelopes AGH refuses: {bad[:5]}"
    return len(published)


@pytest.fixture
def start_daemon(nats_server: NatsServer, tmp_path: Path
                 ) -> Iterator[Callable[..., RunningDaemon]]:
    """Factory: an in-process daemon on `nats_server` (stopped at teardown); `clock=` gives
    it a fake clock, `runtime_config=` RuntimeConfig fields (e.g. a test seam), any other
    keyword is a ServeSettings field. Everything it publishes is checked against AGH's
    envelope rules after it stopped. Its runtime runs in-process (serve's default) unless
    `process_mode=` says otherwise (test_nats_serve's first test serves in both modes)."""
    running: list[RunningDaemon] = []
    before = _children()
    tap = WireTap(nats_server.url, nats_server.token)

    def factory(**overrides: Any) -> RunningDaemon:
        values: dict[str, Any] = {
            "nats_url": nats_server.url, "nats_token": nats_server.token,
            "store": str(tmp_path / "store.db"), "ready_file": str(tmp_path / "daemon.json"),
        }
        clock = overrides.pop("clock", time.monotonic)
        runtime_config = {"audit_key": "00" * 32, **overrides.pop("runtime_config", {})}
        values.update(overrides)
        handle = _run_daemon(ServeSettings(**values), clock, runtime_config)
        running.append(handle)
        return handle

    try:
        yield factory
    finally:
        for handle in running:
            handle.stop()
        tap.wire._run(tap.wire.nc.flush())
        tap.close()
        leaked = _new_children(before)
        assert not leaked, f"processes left behind: {leaked}"
    names = {n for h in running if h.info for n in (h.info.daemon_peer_id,
                                                     h.info.daemon_handle)}
    assert_all_agh_valid(tap, names)


def _run_daemon(settings: ServeSettings, clock: Callable[[], float] = time.monotonic,
                runtime_config: dict[str, Any] | None = None) -> RunningDaemon:
    """Start a daemon on a thread and return once it serves (or raise what stopped it)."""
    daemon = Daemon(settings, runtime_config=runtime_config or {"audit_key": "00" * 32},
                    clock=clock)
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["status"] = daemon.run_sync()
        except BaseException as exc:  # surfaced by the ready check below
            result["error"] = exc
            daemon.ready.set()

    thread = threading.Thread(target=run, name="test-daemon", daemon=True)
    thread.start()
    handle = RunningDaemon(daemon, thread)
    assert daemon.ready.wait(30), "daemon not ready"
    if "error" in result:
        thread.join(30)
        raise result["error"]
    return handle


@pytest.fixture
def start_own_daemon(tmp_path: Path) -> Iterator[Callable[..., RunningDaemon]]:
    """Factory: an in-process daemon that runs its own nats-server (per-peer nkey users
    unless `nats_auth="token"`), stopped at teardown; keywords are ServeSettings fields."""
    running: list[RunningDaemon] = []
    before = _children()

    def factory(**overrides: Any) -> RunningDaemon:
        values: dict[str, Any] = {
            "store": str(tmp_path / "store.db"), "ready_file": str(tmp_path / "daemon.json"),
            "trust_poll_interval": 0.05,
        }
        values.update(overrides)
        handle = _run_daemon(ServeSettings(**values))
        running.append(handle)
        return handle

    try:
        yield factory
    finally:
        for handle in running:
            handle.stop()
        leaked = _new_children(before)
        assert not leaked, f"processes left behind: {leaked}"


@pytest.fixture
def nats_wire(nats_server: NatsServer) -> Iterator[Wire]:
    """A raw client on the test server."""
    client = Wire(nats_server.url, nats_server.token)
    try:
        yield client
    finally:
        client.close()


