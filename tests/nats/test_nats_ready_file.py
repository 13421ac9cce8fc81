"""The ready file names the daemon's pid: a client checks it before waiting for answers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from task_ingress.runtime.nats.ready import (
    DaemonNotRunning,
    ReadyInfo,
    read_live_ready_file,
    write_ready_file,
)


def _write(path: Path, pid: int) -> Path:
    write_ready_file(str(path), ReadyInfo(
        nats_url="nats://127.0.0.1:1", pid=pid, trust_file=str(path.parent / "trust.json"),
        store=str(path.parent / "store.db"), workspace="default",
        daemon_peer_id="task-ingress", daemon_route_token="none",
        daemon_handle="task-ingress@" + "0" * 32, daemon_fingerprint="0" * 32,
        daemon_public_key="none", greet_interval=30.0))
    return path


def test_a_ready_file_of_a_live_daemon_is_read(tmp_path: Path) -> None:
    ready = _write(tmp_path / "daemon.json", os.getpid())
    assert read_live_ready_file(str(ready)).pid == os.getpid()


def test_a_ready_file_whose_process_is_gone_is_stale(tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    ready = _write(tmp_path / "daemon.json", gone.pid)
    with pytest.raises(DaemonNotRunning, match=rf"\(pid {gone.pid}\) is not running"):
        read_live_ready_file(str(ready))


def test_a_pid_reused_by_a_process_started_after_the_file_is_stale(tmp_path: Path) -> None:
    # This test process started after the file's (back-dated) time: it is not the daemon.
    ready = _write(tmp_path / "daemon.json", os.getpid())
    before_we_started = _started() - 3600
    os.utime(ready, (before_we_started, before_we_started))
    with pytest.raises(DaemonNotRunning):
        read_live_ready_file(str(ready))


def _started() -> float:
    import psutil

    return float(psutil.Process().create_time())
