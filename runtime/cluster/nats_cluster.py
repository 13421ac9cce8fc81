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
        """Start every server and wait until each has a route to every other one."""
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
            log = open(self.dir / f"n{i}.log", "ab")  # noqa: SIM115 (handed to the child)
            try:
                self.procs.append(subprocess.Popen(
                    [binary, "-c", str(conf)], stdin=subprocess.DEVNULL, stdout=log,
                    stderr=log, start_new_session=True))
            finally:
                log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if all(self._routes(i) >= self.n - 1 for i in range(self.n)):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("the nats-server cluster did not form its routes")

    def _routes(self, i: int) -> int:
        try:
            with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.monitor[i]}/routez", timeout=1) as resp:
                return int(json.load(resp).get("num_routes", 0))
        except OSError:
            return -1

    def stop(self) -> None:
        """Stop every server and remove their files; idempotent."""
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
        shutil.rmtree(self.dir, ignore_errors=True)
