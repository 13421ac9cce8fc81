"""`PipelineHost`: the embedding process's side of the pipeline process (an `ActorHost`).

`open` starts `python -m task_ingress.runtime.pipeline.child` with one end of a socket
pair and waits until every actor there is wired; the driver thread then sends batches and
queries as frames (`wire`) and reads the replies back. Frames leave through a writer
thread: the driver thread never blocks on a full pipe, so it keeps reading replies and the
two processes cannot each wait for the other to read (a batch of large payloads is
megabytes; a socket buffer a few hundred kilobytes). A pipeline process that dies makes
`listen` (or the next send) raise `PipelineDied`: the driver then fails every waiting
caller at once with `RuntimeClosed`. `close` asks it to stop and reaps it (killing it when
it does not stop within the grace), so no process outlives the runtime.
"""

from __future__ import annotations

import os
import pickle
import queue
import subprocess
import sys
import threading
from collections import deque
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from typing import Any

from task_ingress.actors.log import get_logger
from task_ingress.messages.protocol import Settings, Sweep
from task_ingress.runtime.errors import RuntimeStartError
from task_ingress.runtime.host import SIMPLE_POLL, Stamped
from task_ingress.runtime.pipeline import wire
from task_ingress.runtime.topology import WIRING_TIMEOUT, Addresses

CHILD_MODULE = "task_ingress.runtime.pipeline.child"


class PipelineDied(RuntimeError):
    """The pipeline process ended without being asked to (crash, OOM kill, SIGKILL)."""


class PipelineHost:
    """The actors in a pipeline process of their own."""

    def __init__(self, base: str, settings: Settings) -> None:
        if base != "simpleSystemBase":
            raise ValueError("the pipeline process runs the actors on simpleSystemBase")
        self.base = base
        self.settings = settings
        self.proc: subprocess.Popen[bytes] | None = None
        self.conn: Connection | None = None
        self.replies: deque[Any] = deque()
        self.frames: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self.writer: threading.Thread | None = None
        self.write_error: BaseException | None = None
        self.log = get_logger(component="pipeline_host")

    def open(self) -> Addresses:
        """Start the pipeline process and wait until its actors are wired (or raise)."""
        mine, theirs = Pipe(duplex=True)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", CHILD_MODULE, str(theirs.fileno()), str(os.getpid())],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
        finally:
            theirs.close()  # only the child holds its end: its death is EOF here, ours there
        self.conn = mine
        self.writer = threading.Thread(target=self._write, name="task-ingress-pipe-writer",
                                       daemon=True)
        self.writer.start()
        self._send_frame(pickle.dumps(("start", self.base, self.settings), wire.PROTOCOL))
        if not mine.poll(WIRING_TIMEOUT):
            raise RuntimeStartError("the pipeline process did not start in time")
        try:
            ready = wire.loads(mine.recv_bytes())[0]
        except (EOFError, OSError) as exc:
            raise RuntimeStartError(f"the pipeline process died at start "
                                    f"(exit {self.proc.wait()})") from exc
        if ready[0] != "ready" or ready[2]:
            raise RuntimeStartError(str(ready[2]))
        proxy = "store_proxy" if self.settings.store_proxy_class else None
        return Addresses(router="router", presence="presence", capability="capability",
                         audit="audit", store="store", store_proxy=proxy)

    def dispatch(self, asks: list[tuple[Any, Any]], batch: list[Stamped]) -> None:
        """The queries (`to`: an actor's role), then one batch for the router, as ONE
        frame: the pipeline process handles a frame whole before it reads replies."""
        items: list[wire.Item] = [("A", to, message) for to, message in asks]
        if batch:
            items.append(("B", [wire.encode_stamped(m, now, preset)
                                for m, now, preset in batch]))
        self._send(items)

    def sweep(self, sweep: Sweep) -> None:
        """A housekeeping sweep (its `ChannelCount` comes back as any other reply)."""
        self._send([("S", sweep.now, sweep.ticket)])

    def listen(self) -> Any | None:
        """The next reply, reading one frame (waiting at most a short poll) when none is
        buffered; raises PipelineDied when the pipeline process is gone."""
        if self.replies:
            return self.replies.popleft()
        assert self.conn is not None
        try:
            if not self.conn.poll(SIMPLE_POLL):
                return None
            items = wire.loads(self.conn.recv_bytes())
        except (EOFError, OSError) as exc:
            raise self._died() from exc
        for item in items:
            if item[0] == "stopped":
                raise self._died()
            self.replies.append(wire.decode_reply(item))
        return self.replies.popleft() if self.replies else None

    def take_buffered(self) -> list[Any]:
        """The rest of the last frame's replies (one frame carries a batch's answers)."""
        taken = list(self.replies)
        self.replies.clear()
        return taken

    def close(self, grace: float) -> None:
        """Ask the pipeline process to stop (it flushes and checkpoints), wait for it, and
        kill it if it does not exit within `grace` seconds."""
        proc, conn = self.proc, self.conn
        if self.writer is not None:
            self.frames.put(wire.dumps([("X",)]))
            self.frames.put(None)
            self.writer.join(timeout=grace)
        if proc is not None:
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.log.error("pipeline.stop_hung", pid=proc.pid)
                proc.kill()
                proc.wait(timeout=grace)
        if self.writer is not None:
            self.writer.join(timeout=grace)  # a write to the dead process has failed by now
        if conn is not None:
            conn.close()
        self.conn = None

    def pids(self) -> list[int]:
        """The pipeline process, while it runs."""
        proc = self.proc
        return [proc.pid] if proc is not None and proc.poll() is None else []

    def _send(self, items: list[wire.Item]) -> None:
        self._send_frame(wire.dumps(items))

    def _send_frame(self, frame: bytes) -> None:
        """Queue a frame for the writer thread (in order); raise if writing has failed."""
        if self.write_error is not None:
            raise self._died() from self.write_error
        self.frames.put(frame)

    def _write(self) -> None:
        """The writer thread: frames to the pipe, in order, until the None sentinel."""
        conn = self.conn
        assert conn is not None
        while (frame := self.frames.get()) is not None:
            try:
                conn.send_bytes(frame)
            except OSError as exc:  # the pipeline process is gone; the driver learns of it
                self.write_error = exc
                return

    def _died(self) -> PipelineDied:
        code = self.proc.poll() if self.proc is not None else None
        self.log.error("pipeline.died", exit_code=code)
        return PipelineDied(f"the pipeline process ended (exit code {code})")
