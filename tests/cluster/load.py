"""A bounded load against a cluster: one verified peer per workspace (the swarm's NATS
transport: signed greets, heartbeats every greet_interval/2, compact signed requests),
sending CreateTask requests and keeping every reply (the ack log of the failover tests)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from task_ingress.messages import CreateTask, PeerCard
from task_ingress.messages.codec import decode_reply, encode_envelope
from task_ingress.runtime.cluster.swarm_transport import ClusterSwarmTransport

CHANNEL = "ops"
TRUST_POLL = 0.2
"""The daemons' --trust-poll-interval in the tests."""


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll `check` until true (bounded); the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout} s: {what}")


class Load:
    """Peers and their requests; `replies` holds every answer in the order received."""

    def __init__(self, ready_file: Path, nats_url: str, workspaces: list[str], database: str,
                 request_timeout: float = 3.0) -> None:
        self.workspaces = workspaces
        self.transport = ClusterSwarmTransport(ready_file=str(ready_file), nats_url=nats_url,
                                               database=database,
                                               request_timeout=request_timeout)
        self.peers = {ws: self.transport.peer_name(f"p-{ws}") for ws in workspaces}
        time.sleep(TRUST_POLL * 3)  # every daemon has read the enrolled peers
        self.replies: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def greet_all(self, timeout: float = 20.0) -> None:
        """Greet every peer in its workspace (retried until its shard's owner answers)."""
        for ws, peer in self.peers.items():
            card = PeerCard(peer_id=peer, capabilities=["task.write"], proof="signed")
            deadline = time.monotonic() + timeout
            while True:
                try:
                    self.transport.greet(ws, CHANNEL, card)
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)

    def send(self, ws: str) -> dict[str, Any]:
        """One CreateTask from the workspace's peer; its reply (kept)."""
        rid = f"{ws}-{uuid.uuid4().hex[:12]}"
        data = encode_envelope(CreateTask(title=f"task {rid}"), rid)
        reply = decode_reply(self.transport.deliver(data, workspace=ws, channel=CHANNEL,
                                                    peer_id=self.peers[ws]))
        reply = {**reply, "workspace": ws, "request_id": rid, "at": time.monotonic()}
        with self._lock:
            self.replies.append(reply)
        return reply

    def round(self) -> dict[str, dict[str, Any]]:
        """One request per workspace; replies by workspace."""
        return {ws: self.send(ws) for ws in self.workspaces}

    def start(self, max_requests: int, max_seconds: float) -> None:
        """Send in the background, one thread per workspace, until `stop` or a bound."""
        deadline = time.monotonic() + max_seconds
        per_ws = max(1, max_requests // len(self.workspaces))

        def run(ws: str) -> None:
            for _ in range(per_ws):
                if self._stop.is_set() or time.monotonic() > deadline:
                    return
                self.send(ws)
                time.sleep(0.01)

        self._threads = [threading.Thread(target=run, args=(ws,), daemon=True)
                         for ws in self.workspaces]
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        """Stop the background senders and wait for them."""
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def accepted(self) -> dict[str, dict[str, Any]]:
        """Acknowledged writes by request ID."""
        with self._lock:
            return {r["request_id"]: r for r in self.replies if r.get("accepted")}

    def close(self) -> None:
        """Stop and close the transport."""
        self.stop()
        self.transport.close()
