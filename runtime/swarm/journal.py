"""Per-request records on disk: the swarm's journal (for the invariants) and the ack log.

Both are appended by many worker threads under one lock. The journal lives on disk so the
swarm's own memory does not grow with the number of requests (the RSS figures are about
the runtime); the invariants read it back after the run.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from task_ingress.runtime.swarm.peers import Plan


@dataclass(frozen=True)
class Sent:
    """One request as the swarm sent it and the reply it got (None fields: no reply)."""

    workspace: str
    channel: str
    peer_id: str
    request_id: str
    kind: str
    bad: str
    bind: str | None
    sent: float
    returned: float
    accepted: bool | None
    reason: str | None
    task_id: str | None
    run_id: str | None


class Journal:
    """Append-only JSON-lines file of `Sent` records."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fh: IO[str] = open(path, "w", encoding="utf-8")  # noqa: SIM115 (closed in close())
        self._lock = threading.Lock()

    def write(self, plan: Plan, sent: float, returned: float, reply: dict[str, Any] | None
              ) -> None:
        """Append one record (reply None: the transport raised)."""
        r = reply or {}
        line = json.dumps([
            plan.workspace, plan.channel, plan.peer_id, plan.request_id, plan.kind, plan.bad,
            plan.bind, sent, returned, r.get("accepted") if reply is not None else None,
            r.get("reason"), r.get("task_id"), r.get("run_id"),
        ], separators=(",", ":"))
        with self._lock:
            self._fh.write(line + "\n")

    def close(self) -> None:
        """Flush and close."""
        with self._lock:
            self._fh.close()


def read_journal(path: str) -> Iterator[Sent]:
    """Every record of a journal file, in write order."""
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            f = json.loads(line)
            yield Sent(*f)


class AckLog:
    """SPEC §9 `--ack-log`: one JSON line per reply received, flushed as it is written."""

    def __init__(self, path: str) -> None:
        self._fh: IO[str] = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        self._lock = threading.Lock()

    def write(self, plan: Plan, reply: dict[str, Any]) -> None:
        """Append and flush one reply."""
        line = json.dumps({
            "workspace": plan.workspace, "channel": plan.channel, "peer_id": plan.peer_id,
            "request_id": reply.get("request_id", plan.request_id),
            "accepted": reply.get("accepted"), "reason": reply.get("reason"),
            "task_id": reply.get("task_id"), "run_id": reply.get("run_id"),
        }, separators=(",", ":"))
        with self._lock:
            self._fh.write(line + "\n")
            self._fh.flush()

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._fh.close()
