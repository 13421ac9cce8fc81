"""A NATS cluster on one machine: `n` nats-servers on loopback, each routing to all the
others, one shared token — what a cluster's daemons and peers connect to (any server will
do: messages cross the routes). Used by the cluster tests and `bench/cluster.py`; an
operator's real cluster is configured the same way (docs/cluster.md)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from task_ingress.runtime.nats.server import find_nats_server
from task_ingress.runtime.ports import free_port

START_TIMEOUT = 20.0
ATTEMPTS = 3
"""Attempts on fresh ports before `start` gives up (see `start`)."""


class NatsCluster:
    """`n` nats-servers on loopback, each routing to all the others, one shared token.

    A client may connect to any of them (`urls`); messages reach subscribers on the
    others through the routes."""

    def __init__(self, n: int = 3) -> None:
        self.n = n
        self.token = secrets.token_hex(16)
        self.dir = Path(tempfile.mkdtemp(prefix="ti-natsc-"))
        self.procs: list[subprocess.Popen[bytes]] = []
        self.ports: list[int] = []
        self.monitor: list[int] = []

    @property
    def urls(self) -> list[str]:
        """One client URL per server."""
        return [f"nats://127.0.0.1:{p}" for p in self.ports]

    def start(self) -> NatsCluster:
        """Start every server and wait until each has a route to every other one.

        A port is chosen free and bound by nats-server a moment later, so another process
        may take it in between: a server that exits before the routes form makes a fresh
        attempt on new ports (`ATTEMPTS` in all). The error names what went wrong, with the
        end of each server's log."""
        problem = ""
        for _ in range(ATTEMPTS):
            problem = self._start_once()
            if not problem:
                return self
            self._stop_servers()
        self.stop()
        raise RuntimeError(f"the nats-server cluster did not form its routes: {problem}")

    def _start_once(self) -> str:
        """One attempt: "" once every route is up, else what stopped it."""
        binary = find_nats_server()
        self.ports = [free_port() for _ in range(self.n)]
        routes = [free_port() for _ in range(self.n)]
        self.monitor = [free_port() for _ in range(self.n)]
        for i in range(self.n):
            others = ",".join(f"nats://127.0.0.1:{routes[j]}" for j in range(self.n) if j != i)
            conf = self.dir / f"n{i}.conf"
            conf.write_text(json.dumps({
                "server_name": f"n{i}", "listen": f"127.0.0.1:{self.ports[i]}",
                "http": f"127.0.0.1:{self.monitor[i]}",
                "authorization": {"token": self.token},
                "cluster": {"name": "ti", "listen": f"127.0.0.1:{routes[i]}",
                            "routes": others.split(",") if others else []}}))
            os.chmod(conf, 0o600)
            log = open(self.dir / f"n{i}.log", "wb")  # noqa: SIM115 (handed to the child)
            try:
                self.procs.append(subprocess.Popen(
                    [binary, "-c", str(conf)], stdin=subprocess.DEVNULL, stdout=log,
                    stderr=log, start_new_session=True))
            finally:
                log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            exited = [i for i, proc in enumerate(self.procs) if proc.poll() is not None]
            if exited:
                return "; ".join(f"n{i} exited ({self.procs[i].returncode}): "
                                 f"{self._log_tail(i)}" for i in exited)
            if all(self._routes(i) >= self.n - 1 for i in range(self.n)):
                return ""
            time.sleep(0.05)
        counts = [self._routes(i) for i in range(self.n)]
        return (f"routes per server after {START_TIMEOUT:g} s: {counts}; "
                + "; ".join(f"n{i}: {self._log_tail(i)}" for i in range(self.n)))

    def _log_tail(self, i: int, lines: int = 3) -> str:
        try:
            text = (self.dir / f"n{i}.log").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return " | ".join(text.strip().splitlines()[-lines:]) or "(empty log)"

    def _routes(self, i: int) -> int:
        try:
            with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.monitor[i]}/routez", timeout=1) as resp:
                return int(json.load(resp).get("num_routes", 0))
        except OSError:
            return -1

    def stop(self) -> None:
        """Stop every server and remove their files; idempotent."""
        self._stop_servers()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _stop_servers(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.procs = []
