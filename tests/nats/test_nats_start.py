"""`task-ingress serve` start-up (issue 13): one daemon per store, a bounded wait for NATS,
and a signal honoured while it waits."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from task_ingress.runtime.cli import app
from task_ingress.runtime.cli_exit import one_line
from task_ingress.runtime.nats.server import NatsServer
from task_ingress.runtime.nats.stopping import cancel_until_done
from task_ingress.runtime.ports import free_port
from typer.testing import CliRunner

from tests.nats.conftest import RunningDaemon

Start = Callable[..., RunningDaemon]
ENV = {**os.environ, "TASK_INGRESS_LOG_LEVEL": "error", "TASK_INGRESS_AUDIT_KEY": "22" * 32}


def _serve(tmp_path: Path, *args: str, name: str = "serve") -> tuple[subprocess.Popen[bytes],
                                                                       Path]:
    log = tmp_path / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "task_ingress", "serve", *args],
                                env=ENV, stdout=out, stderr=out)
    return proc, log


def _wait_for(proc: subprocess.Popen[bytes], done: Callable[[], bool], what: str,
              within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while not done():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.02)


def _finish(proc: subprocess.Popen[bytes]) -> int:
    try:
        return proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def _last_line(log: Path) -> str:
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    return one_line(lines[-1]) if lines else ""


# ---- one daemon per store ------------------------------------------------------------
def test_a_second_serve_on_a_store_in_use_exits_2_and_the_first_keeps_serving(
        start_own_daemon: Start, tmp_path: Path) -> None:
    d = start_own_daemon()
    store, ready = str(d.daemon.settings.store), str(d.daemon.settings.ready_file)
    first_ready = Path(ready).read_text()
    second_ready = tmp_path / "second.json"
    proc, log = _serve(tmp_path, "--store", store, "--ready-file", str(second_ready))
    try:
        _wait_for(proc, lambda: proc.poll() is not None or second_ready.exists(),
                  "the second daemon exits or serves")
        assert not second_ready.exists(), "a second daemon served the same store"
    finally:
        status = _finish(proc)
    assert status == 2
    assert _last_line(log) == (
        f"task-ingress: could not start: the store {os.path.abspath(store)} is in use by "
        f"another task-ingress serve (pid {os.getpid()}); stop it first or give another "
        "--store")
    assert Path(ready).read_text() == first_ready

    # The first is unaffected: it still answers a request.
    key = str(tmp_path / "k.key")
    runner = CliRunner()
    assert runner.invoke(app, ["keygen", "--out", key, "--nickname", "k"]).exit_code == 0
    assert runner.invoke(app, ["trust", "add", "--key", key, "--daemon", ready]).exit_code == 0
    result = runner.invoke(app, ["request", "create", "--daemon", ready, "--key", key,
                                 "--channel", "ops", "--title", "still here"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["accepted"] is True

    # The lock goes with the daemon: the next one on the store starts.
    d.stop()
    again = start_own_daemon()
    assert again.info is not None and again.info.store == d.info.store


def test_the_same_store_named_twice_in_one_process_is_refused_too(start_own_daemon: Start
                                                                 ) -> None:
    from task_ingress.runtime.store_lock import StoreInUse

    start_own_daemon()
    with pytest.raises(StoreInUse, match="is in use by another task-ingress serve"):
        start_own_daemon(ready_file=None)


def test_serve_refuses_an_unknown_event_loop_name_with_exit_2_before_it_starts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(ENV, "TASK_INGRESS_EVENT_LOOP", "uvlop")
    store = tmp_path / "store.db"
    proc, log = _serve(tmp_path, "--store", str(store))
    assert _finish(proc) == 2
    assert _last_line(log) == ("task-ingress serve: TASK_INGRESS_EVENT_LOOP must be 'uvloop' or "
                               "'asyncio', not 'uvlop'"), log.read_text()[-2000:]
    assert not store.exists()


# ---- a bounded wait for NATS, signals honoured while waiting --------------------------
def test_serve_gives_up_on_an_unreachable_nats_after_its_connect_timeout(tmp_path: Path
                                                                          ) -> None:
    url = f"nats://127.0.0.1:{free_port()}"  # nothing listens there
    store = tmp_path / "store.db"
    proc, log = _serve(tmp_path, "--nats-url", url, "--nats-connect-timeout", "1",
                       "--store", str(store))
    assert _finish(proc) == 2
    line = _last_line(log)
    assert line.startswith(f"task-ingress: could not start: no NATS server reachable at {url} "
                           "within 1 s"), line
    assert "--nats-connect-timeout" in line
    assert not store.exists()  # it gave up before opening the store


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_serve_waits_for_nats_stops_it(tmp_path: Path, signum: int) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    proc, log = _serve(tmp_path, "--nats-url", url, "--nats-connect-timeout", "3600",
                       "--store", str(tmp_path / "store.db"))
    try:
        _wait_for(proc, lambda: "connecting to NATS" in log.read_text(), "serve connects")
        proc.send_signal(signum)
    finally:
        status = _finish(proc)
    assert status == 0, log.read_text()[-2000:]
    assert _last_line(log) == "task-ingress serve: stopped during start-up"


def test_serve_with_a_token_the_server_refuses_says_so(tmp_path: Path) -> None:
    with NatsServer() as server:
        proc, log = _serve(tmp_path, "--nats-url", server.url, "--nats-token", "wrong",
                           "--nats-connect-timeout", "3600", "--store",
                           str(tmp_path / "store.db"))
        assert _finish(proc) == 2
    assert _last_line(log).startswith(
        f"task-ingress: could not start: the NATS server at {server.url} refused the "
        "daemon's credentials")


def test_a_connect_that_loses_a_cancellation_is_still_stopped() -> None:
    """Python 3.11's wait_for can return its inner future's error instead of raising
    CancelledError (both in one turn); nats-py's connect loop then tries again, so a single
    cancel left `serve` connecting forever after a SIGTERM (1 run in ~20 under load)."""
    async def connect_losing_one_cancel() -> None:
        lost = 0
        while True:
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                lost += 1
                if lost > 1:
                    raise

    async def main() -> bool:
        attempt = asyncio.ensure_future(connect_losing_one_cancel())
        await asyncio.sleep(0.02)
        return await asyncio.wait_for(cancel_until_done(attempt), 30) and attempt.cancelled()

    assert asyncio.run(main())
