"""The pipeline process: every actor, on simpleSystemBase, on this process's one thread.

Started by `PipelineHost` as `python -m task_ingress.runtime.pipeline.child FD PARENT_PID`
(a fresh interpreter, not a fork: the embedding process may hold threads and locks). FD is
its end of a socket pair with the embedding process (`wire` says what crosses it).

The loop: take every frame waiting on the pipe, tell the actors (consecutive batches go to
the router as ONE `SubmitBatch`, so the store and audit group-commit across frames), let
them run, send their replies back as one frame. No caller thread shares this interpreter
with the SQLite writer.

It ends when told to stop, and also when the embedding process is gone (EOF on the pipe,
or a new parent PID: SIGKILL leaves no one to say stop): it finishes what it holds, shuts
the actors down (the final audit checkpoint included) and exits. SIGINT is ignored: a
Ctrl-C reaches the whole process group, and the embedding process decides when to stop.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import time
from multiprocessing.connection import Connection
from typing import Any

from task_ingress.actors.log import get_logger
from task_ingress.messages.protocol import (
    PresenceChange,
    QueryFailed,
    Settings,
    Submission,
    Sweep,
)
from task_ingress.runtime.host import InProcessHost
from task_ingress.runtime.pipeline import wire
from task_ingress.runtime.topology import Addresses

IDLE_WAIT = 0.05
SHUTDOWN_GRACE = 10.0


class ParentGone(Exception):
    """The embedding process closed its end of the pipe or died."""


class PipelineServer:
    """Serves one runtime's actors to the embedding process over `conn`."""

    def __init__(self, conn: Connection, parent_pid: int, host: InProcessHost) -> None:
        self.conn = conn
        self.parent_pid = parent_pid
        self.host = host
        self.addresses: Addresses | None = None
        self.outstanding: set[int] = set()
        self.parent_gone = False
        self.log = get_logger(component="pipeline")

    def run(self) -> int:
        """Start the actors, report, serve until stopped; the exit status."""
        try:
            self.addresses = self.host.open()
        except BaseException as exc:
            self._send([("ready", None, str(exc) or repr(exc))])
            self.host.close(SHUTDOWN_GRACE)
            return 2
        self._send([("ready", [os.getpid()], "")])
        try:
            self._serve()
        except BaseException as exc:
            self.log.error("pipeline.crashed", error=repr(exc))
            raise
        finally:
            self.host.close(SHUTDOWN_GRACE)
            self._send([("stopped",)])
        return 0

    def _serve(self) -> None:
        stopping_since: float | None = None
        while True:
            frames = self._receive(block=not self.outstanding and stopping_since is None)
            if self._handle(frames) and stopping_since is None:
                stopping_since = time.monotonic()
            replies: list[wire.Item] = []
            while self.outstanding:
                reply = self.host.listen()
                if reply is None:
                    break
                item, tickets = wire.encode_reply(reply)
                replies.append(item)
                self.outstanding.difference_update(tickets)
            if replies:
                self._send(replies)
            if self.parent_gone and stopping_since is None:
                self.log.warning("pipeline.parent_gone", unanswered=len(self.outstanding))
                stopping_since = time.monotonic()
            if stopping_since is not None and (
                not self.outstanding or time.monotonic() - stopping_since > SHUTDOWN_GRACE
            ):
                return

    def _receive(self, block: bool) -> list[bytes]:
        """Every frame waiting (waiting up to IDLE_WAIT for the first when `block`)."""
        frames: list[bytes] = []
        if self.parent_gone:
            return frames
        try:
            if self.conn.poll(IDLE_WAIT if block else 0):
                frames.append(self.conn.recv_bytes())
                while self.conn.poll(0):
                    frames.append(self.conn.recv_bytes())
            elif block and os.getppid() != self.parent_pid:
                self.parent_gone = True
        except (EOFError, OSError):
            self.parent_gone = True
        return frames

    def _handle(self, frames: list[bytes]) -> bool:
        """Tell the actors what the frames hold, in order; True when told to stop."""
        stop = False
        batch: list[Submission | PresenceChange] = []
        for frame in frames:
            for item in wire.loads(frame):
                kind = item[0]
                if kind == "B":
                    for encoded in item[1]:
                        message = wire.decode_stamped(encoded)
                        self.outstanding.add(message.ticket)
                        batch.append(message)
                    continue
                self._submit(batch)
                if kind == "A":
                    self._ask(item[1], item[2])
                elif kind == "S":
                    self._sweep(item[1], item[2])
                elif kind == "X":
                    stop = True
        self._submit(batch)
        return stop

    def _submit(self, batch: list[Submission | PresenceChange]) -> None:
        if batch:
            self.host.submit_batch(batch)
            batch.clear()

    def _sweep(self, now: float, ticket: int) -> None:
        """A sweep for the router; its `ChannelCount` answers `ticket` (awaited like a
        query's reply)."""
        self.outstanding.add(ticket)
        self.host.sweep(Sweep(now=now, ticket=ticket))

    def _ask(self, role: str, message: Any) -> None:
        target = getattr(self.addresses, role, None) if role in wire.ROLES else None
        ticket = getattr(message, "ticket", None)
        if target is None:
            if isinstance(ticket, int):
                self._send([("O", QueryFailed(ticket=ticket, error=f"no actor {role!r}"))])
            return
        if isinstance(ticket, int):
            self.outstanding.add(ticket)
        self.host.ask(target, message)

    def _send(self, items: list[wire.Item]) -> None:
        if self.parent_gone:
            return
        try:
            self.conn.send_bytes(wire.dumps(items))
        except OSError:
            self.parent_gone = True


def main(argv: list[str] | None = None) -> int:
    """Entry point: `FD PARENT_PID`; the first frame names the actor base and settings."""
    fd, parent_pid = (int(a) for a in (argv if argv is not None else sys.argv[1:]))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn = Connection(fd)
    try:
        kind, base, settings = pickle.loads(conn.recv_bytes())
    except (EOFError, OSError, ValueError, pickle.UnpicklingError):
        return 2
    if kind != "start" or not isinstance(settings, Settings):
        return 2
    try:
        return PipelineServer(conn, parent_pid, InProcessHost(base, settings)).run()
    finally:
        conn.close()


if __name__ == "__main__":
    raise SystemExit(main())
