"""`task-ingress serve` as a subprocess: SIGTERM under load loses no acknowledged write; a
runtime that dies under it makes it exit 1 rather than serve failures forever."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
from task_ingress.messages import CreateTask, PeerCard
from task_ingress.messages.codec import decode_reply, encode_envelope
from task_ingress.runtime import IngressRuntime, RuntimeConfig
from task_ingress.runtime.nats.swarm_transport import NatsSwarmTransport

KEY = "11" * 32
PEERS = [f"peer-{i}" for i in range(4)]


def _start_serve(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen[bytes], Path, Path]:
    store, ready = tmp_path / "store.db", tmp_path / "daemon.json"
    env = {**os.environ, "TASK_INGRESS_AUDIT_KEY": KEY, "TASK_INGRESS_LOG_LEVEL": "warning"}
    with open(tmp_path / "serve.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "task_ingress", "serve", "--store", str(store),
             "--ready-file", str(ready), *extra],
            cwd=os.getcwd(), env=env, stdout=log, stderr=log)
    deadline = time.monotonic() + 30
    while not ready.exists():
        assert proc.poll() is None, (tmp_path / "serve.log").read_text()
        assert time.monotonic() < deadline, "serve did not become ready"
        time.sleep(0.05)
    return proc, store, ready


def _load(t: NatsSwarmTransport, stop: threading.Event, acks: list[dict[str, Any]],
          worker: int) -> None:
    i = 0
    while not stop.is_set():
        peer = PEERS[worker % len(PEERS)]
        rid = f"w{worker}-{i}"
        i += 1
        reply = decode_reply(t.deliver(encode_envelope(CreateTask(title=rid), rid),
                                       workspace="default", channel="ops", peer_id=peer))
        if reply["accepted"]:
            acks.append(reply)
        elif reply["reason"] == "task_ingress_unavailable":
            return  # the daemon stopped listening


def _run_load_and_signal(tmp_path: Path, signals: int) -> tuple[int, Path, list[dict[str, Any]],
                                                                   list[int]]:
    proc, store, ready = _start_serve(tmp_path)
    children: list[int] = []
    t: NatsSwarmTransport | None = None
    try:
        children = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        assert children, "serve should have started a local nats-server"
        t = NatsSwarmTransport(ready_file=str(ready), request_timeout=5.0)
        for peer in PEERS:
            t.greet("default", "ops", PeerCard(peer_id=peer, capabilities=["task.write"],
                                               proof="p"))
        stop, acks = threading.Event(), []  # type: ignore[var-annotated]
        workers = [threading.Thread(target=_load, args=(t, stop, acks, w)) for w in range(8)]
        for w in workers:
            w.start()
        deadline = time.monotonic() + 20
        while len(acks) < 200 and time.monotonic() < deadline:
            time.sleep(0.01)
        for _ in range(signals):
            proc.send_signal(signal.SIGTERM)
        status = proc.wait(30)
        stop.set()
        for w in workers:
            w.join(30)
        return status, store, acks, children
    finally:
        if t is not None:
            t.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for pid in children:
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).kill()


def _assert_acknowledged_writes_durable(store: Path, acks: list[dict[str, Any]]) -> None:
    config = RuntimeConfig(store_path=str(store), audit_key=KEY)
    with IngressRuntime(config) as rt:
        audited = {(r.request_id, r.task_id) for r in rt.audit() if r.outcome == "accepted"}
        for reply in acks:
            assert (reply["request_id"], reply["task_id"]) in audited
            assert rt.get_task("default", str(reply["task_id"])) is not None


def test_sigterm_during_load_drains_and_keeps_every_acknowledged_request(tmp_path: Path) -> None:
    status, store, acks, children = _run_load_and_signal(tmp_path, signals=1)
    assert status == 0, (tmp_path / "serve.log").read_text()[-2000:]
    assert len(acks) >= 200
    assert not any(psutil.pid_exists(pid) for pid in children), "nats-server left running"
    assert not (tmp_path / "daemon.json").exists()
    _assert_acknowledged_writes_durable(store, acks)
    verify = subprocess.run(
        [sys.executable, "-m", "task_ingress", "audit", "verify", "--store", str(store)],
        env={**os.environ, "TASK_INGRESS_AUDIT_KEY": KEY}, capture_output=True, timeout=60)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_a_second_signal_exits_at_once_without_losing_acknowledged_writes(
        tmp_path: Path) -> None:
    status, store, acks, children = _run_load_and_signal(tmp_path, signals=2)
    assert status in (0, 130)  # 0 only if the drain won the race against the 2nd signal
    assert not any(psutil.pid_exists(pid) for pid in children), "nats-server left running"
    assert not (tmp_path / "daemon.json").exists()  # removed on the hard exit too
    _assert_acknowledged_writes_durable(store, acks)


def test_a_killed_pipeline_process_stops_serve_with_exit_1_and_nothing_left_running(
        tmp_path: Path) -> None:
    proc, _store, ready = _start_serve(tmp_path, "--process-mode", "pipeline")
    children: list[psutil.Process] = []
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
        pipeline = [c for c in children if "task_ingress.runtime.pipeline.child" in c.cmdline()]
        assert len(pipeline) == 1, [c.cmdline() for c in children]
        pipeline[0].kill()
        # Before: serve went on answering every request task_ingress_failed, never exiting,
        # so systemd's Restart=on-failure never brought a working daemon back.
        status = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for child in children:
            with contextlib.suppress(psutil.Error):
                child.kill()
    log = (tmp_path / "serve.log").read_text()
    assert status == 1, log[-2000:]
    assert "stopped on its own" in log
    assert not any(c.is_running() for c in children), "nats-server left running"
    assert not ready.exists()
