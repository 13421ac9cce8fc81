"""Test parts for the cluster daemon: routed nats-servers, daemons as real processes, and a
TCP proxy the test can cut (a partition between one daemon and PostgreSQL).

Every part stops what it started in `stop()`/`close()`; the fixtures call them in `finally`.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

START_TIMEOUT = 20.0
REPO = Path(__file__).resolve().parents[2]
QUIET_EVENTS = ("ingress.outcome", "greet.applied", "presence.changed", "presence.expired",
                "router.channel_reaped", "envelope.rejected", "greet.not_applied")


class Daemon:
    """`python -m task_ingress serve --cluster ...` as a real process (so SIGKILL and
    SIGSTOP are real); its stderr goes to a log file in `workdir`."""

    def __init__(self, *, workdir: Path, node: str, database: str, nats_url: str,
                 token: str, shards: int, workspaces: list[str], key_file: Path,
                 trust_file: Path, lease_ttl: float = 2.0, greet_interval: float = 1.0,
                 extra: list[str] | None = None, module: str = "task_ingress") -> None:
        self.node = node
        self.ready_file = workdir / f"{node}.ready.json"
        self.log_path = workdir / f"{node}.log"
        args = [sys.executable, "-m", module, "serve", "--cluster",
                "--database", database, "--nats-url", nats_url, "--shards", str(shards),
                "--node-id", node, "--lease-ttl", str(lease_ttl),
                "--key-file", str(key_file), "--trust-file", str(trust_file),
                "--store", str(workdir / "cluster"), "--ready-file", str(self.ready_file),
                "--greet-interval", str(greet_interval), "--peer-rate", "0",
                "--trust-poll-interval", "0.2"]
        for ws in workspaces:
            args += ["--workspace", ws]
        args += extra or []
        env = {**os.environ, "TASK_INGRESS_NATS_TOKEN": token, "PYTHONFAULTHANDLER": "1",
               "TASK_INGRESS_AUDIT_KEY": (Path(key_file).parent / "audit.key").read_text(),
               "TASK_INGRESS_LOG_LEVEL": "info", "TASK_INGRESS_LOG_FORMAT": "json"}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=log, env=env, cwd=REPO)

    def wait_ready(self, timeout: float = START_TIMEOUT) -> dict[str, Any]:
        """The ready file's contents once written; raises if the daemon died first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.node} exited {self.proc.returncode}: {self.log()}")
            with contextlib.suppress(OSError, ValueError):
                info: dict[str, Any] = json.loads(self.ready_file.read_text())
                return info
            time.sleep(0.05)
        raise RuntimeError(f"{self.node} not ready within {timeout} s: {self.log()}")

    def log(self) -> str:
        """The tail of the daemon's log, without the per-request lines."""
        with contextlib.suppress(OSError):
            lines = [line for line in self.log_path.read_text(errors="replace").splitlines()
                     if not any(f'"{e}"' in line for e in QUIET_EVENTS)]
            return "\n".join(lines)[-6000:]
        return ""

    def events(self, name: str) -> list[dict[str, Any]]:
        """The daemon's JSON log lines whose event is `name`."""
        out = []
        with contextlib.suppress(OSError):
            for line in self.log_path.read_text(errors="replace").splitlines():
                with contextlib.suppress(ValueError):
                    obj = json.loads(line)
                    if isinstance(obj, dict) and obj.get("event") == name:
                        out.append(obj)
        return out

    def signal(self, signum: int) -> None:
        """Send `signum` to the daemon if it still runs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signum)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (after SIGCONT, in case it is stopped), wait; SIGKILL if it hangs."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGCONT)
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:  # hung: its threads' stacks go to its log
                self.proc.send_signal(signal.SIGABRT)
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(10)
        return int(self.proc.returncode)


class TcpProxy:
    """A loopback TCP proxy to `target_port`; `cut()` drops every connection and stalls new
    ones (accepted, never forwarded) — a partition, as the daemon sees it; `heal()` ends it."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self._cut = threading.Event()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        self._thread = threading.Thread(target=self._accept, daemon=True, name="tcp-proxy")
        self._thread.start()

    def _accept(self) -> None:
        self.listener.settimeout(0.1)
        while not self._closed.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._socks.add(client)
            if self._cut.is_set():
                continue  # a black hole: connect succeeds, nothing ever answers
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), 5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._socks.add(upstream)
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while not self._closed.is_set():
                readable, _, _ = select.select([a, b], [], [], 0.1)
                if self._cut.is_set():
                    return  # stop forwarding: both sides see silence (no RST, no FIN)
                for s in readable:
                    data = s.recv(65536)
                    if not data:
                        return
                    (b if s is a else a).sendall(data)
        except OSError:
            return

    def cut(self) -> None:
        """Stop forwarding in both directions; existing connections hang silently."""
        self._cut.set()

    def heal(self) -> None:
        """Forward new connections again (the hung ones stay dead)."""
        self._cut.clear()

    def close(self) -> None:
        """Stop the proxy and close every socket it holds."""
        self._closed.set()
        self.listener.close()
        self._thread.join(5)
        with self._lock:
            for s in self._socks:
                with contextlib.suppress(OSError):
                    s.close()
            self._socks.clear()
