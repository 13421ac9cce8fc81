"""The bench's `daemon-nats` system: `task-ingress serve` in a process of its own (with its
local nats-server on loopback) driven through the swarm's NATS transport.

So the bench's fixed workload measures the whole network path side by side with the
in-process runtime: each request is signed by its peer (compact form), travels through
nats-server to the daemon, is verified, judged by the daemon's runtime, answered with a
signed reply and checked by the client. The daemon and its server are children of the
bench process, so the bench's CPU figure counts them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

from task_ingress.bench.workload import WORKSPACE
from task_ingress.messages.peers import PeerCard
from task_ingress.runtime.nats.server import die_with_parent

START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
SERVE_PROCESS_MODE_ENV = "TASK_INGRESS_PROCESS_MODE"


def last_line(path: str, limit: int = 300) -> str:
    """The last non-empty line of a log file, cut at `limit` ('' when none): what a failed
    child said last, for an error that outlives its temp directory."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 4096))
            lines = [line for line in fh.read().decode("utf-8", "replace").splitlines()
                     if line.strip()]
    except OSError:
        return ""
    return lines[-1].strip()[:limit] if lines else ""


class ServeChild:
    """`task-ingress serve` in a child process, ready (its ready file written) once built.

    `args` follow `serve`'s own (the store and ready file are given here); `env` adds to
    this process's environment. `stop` stops it gracefully (SIGTERM), killing it if it
    hangs."""

    def __init__(self, store: str, args: list[str], env: dict[str, str] | None = None) -> None:
        self.ready_file = store + ".ready.json"
        self.log_file = store + ".serve.log"
        command = [sys.executable, "-m", "task_ingress", "serve", "--store", store,
                   "--ready-file", self.ready_file, *args]
        with open(self.log_file, "ab") as log:
            # A killed bench must not leave a daemon behind: it gets SIGTERM when the
            # thread that started it dies (PR_SET_PDEATHSIG, as serve's own nats-server).
            self.process = subprocess.Popen(
                command, env=dict(os.environ, **(env or {})), stdin=subprocess.DEVNULL,
                stdout=log, stderr=log,
                preexec_fn=die_with_parent if sys.platform == "linux" else None)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not os.path.exists(self.ready_file):
            if self.process.poll() is not None:
                raise RuntimeError(f"serve exited with status {self.process.returncode}: "
                                   f"{last_line(self.log_file)} (log: {self.log_file})")
            if time.monotonic() > deadline:
                raise RuntimeError(f"serve not ready in {START_TIMEOUT:g} s")
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT; the ready file is removed."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        with contextlib.suppress(OSError):
            os.unlink(self.ready_file)


class DaemonSystem:
    """`task-ingress serve` on `store` plus a NATS client; `close` stops both."""

    runtime_in_children = True
    """The system under test is the daemon and its nats-server (child processes); the
    client's NATS transport thread in the bench's own process is client work."""

    def __init__(self, store: str, audit_key: str, *, process_mode: str | None = None,
                 request_timeout: float = 10.0) -> None:
        from task_ingress.runtime.nats.swarm_transport import NatsSwarmTransport

        env = {"TASK_INGRESS_AUDIT_KEY": audit_key}
        if process_mode is not None:
            env[SERVE_PROCESS_MODE_ENV] = process_mode
        # The embedded runtime's limits only stop floods; serve's per-peer limits would
        # answer part of a closed-loop bench `overloaded`, which is not what is measured.
        self.serve = ServeChild(store, ["--workspace", WORKSPACE, "--peer-rate", "0",
                                        "--max-in-flight-per-peer", "1024",
                                        "--log-level", "warning"], env)
        self.transport: NatsSwarmTransport | None = None
        try:
            self.transport = NatsSwarmTransport(ready_file=self.serve.ready_file,
                                                request_timeout=request_timeout)
        except BaseException:
            self.close()
            raise

    def greet(self, workspace: str, channel: str, card: PeerCard) -> None:
        """A signed greet, returning once the daemon applied it."""
        assert self.transport is not None
        self.transport.greet(workspace, channel, card)

    def deliver(self, envelope: bytes, *, workspace: str, channel: str, peer_id: str) -> bytes:
        """One request over NATS (compact form, signed); the SPEC 7 reply."""
        assert self.transport is not None
        return self.transport.deliver(envelope, workspace=workspace, channel=channel,
                                      peer_id=peer_id)

    def actor_pids(self) -> list[int]:
        """The daemon's process (its children are counted as the bench's descendants)."""
        return [self.serve.process.pid] if self.serve.process.poll() is None else []

    def close(self) -> None:
        """Close the client, stop the daemon gracefully (SIGTERM), kill it if it hangs."""
        if self.transport is not None:
            self.transport.close()
            self.transport = None
        self.serve.stop()
