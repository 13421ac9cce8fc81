"""Simulated peers: their cards, churn, and the request mix they send (good and bad).

Each peer belongs to one worker thread, so its own greets, leaves and requests are
sequential, like a real peer's connection. Peers of different workers share only two
bounded pools per workspace: unbound tasks (which several channels then race to bind) and
bound tasks (targets of deliberate cross-channel writes).

Deliberately bad requests and the rejection each must get (the runner checks that no bad
request is ever accepted):

| kind            | what is sent                                            | expected            |
|-----------------|---------------------------------------------------------|---------------------|
| unknown_peer    | a valid create from a peer ID that never greeted        | peer_not_found      |
| foreign_channel | update of a task bound elsewhere / create bound elsewhere | channel_mismatch  |
| no_capability   | a valid create from a card without task.write or proof  | capability_denied   |
| malformed_id    | request ID with `/` or a control char; unknown task ID; | invalid_request,    |
|                 | idempotency key with `/`                                | task_not_found, ... |
| garbage         | random bytes                                            | invalid_request     |
| oversized       | envelope over 64 KiB, or description over 16 KiB        | validation_failed   |
| left_peer       | a write right after the peer's leave returned           | peer_not_found      |
| expired_peer    | a write after 2 x greet_interval of silence             | peer_not_found      |
"""

from __future__ import annotations

import random
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import msgpack
from task_ingress.messages.codec import WIRE_VERSION, encode_envelope
from task_ingress.messages.peers import PeerCard
from task_ingress.messages.reasons import Action
from task_ingress.messages.requests import (
    AnyRequest,
    CancelTask,
    CreateTask,
    EnqueueRun,
    UpdateTask,
)

BAD_KINDS = ("unknown_peer", "foreign_channel", "malformed_id", "garbage", "oversized")
HEARTBEAT_FRACTION = 0.4
"""Peers re-greet after this fraction of greet_interval: far inside the 2x expiry."""
POOL_SIZE = 256
OWN_TASKS = 32


@dataclass(frozen=True)
class Plan:
    """One request a peer is about to send, and what the swarm knows about it."""

    workspace: str
    channel: str
    peer_id: str
    request_id: str
    kind: str
    """Action name, or 'garbage' when the bytes have none."""
    envelope: bytes
    bad: str = ""
    """'' for a request meant to succeed, else the bad kind (see module docstring)."""
    expect: tuple[str, ...] = ()
    """For bad requests: the reason codes it should get."""
    bind: str | None = None
    """The body's network_channel (creates and updates), None when absent."""
    task_id: str | None = None
    """The task a mutation targets."""


@dataclass(frozen=True)
class Greet:
    """Greet (or re-greet) now."""


@dataclass(frozen=True)
class Leave:
    """Leave now."""


PeerStep = Plan | Greet | Leave | None


class Pools:
    """Per-workspace bounded pools of task IDs shared by all peers (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.unbound: dict[str, deque[str]] = {}
        self.bound: dict[str, deque[tuple[str, str]]] = {}

    def add_unbound(self, workspace: str, task_id: str) -> None:
        """Remember an unbound task others may race to bind."""
        with self._lock:
            self.unbound.setdefault(workspace, deque(maxlen=POOL_SIZE)).append(task_id)

    def add_bound(self, workspace: str, task_id: str, channel: str) -> None:
        """Remember a task bound to `channel` (bound tasks never change channel here)."""
        with self._lock:
            self.bound.setdefault(workspace, deque(maxlen=POOL_SIZE)).append((task_id, channel))

    def pick_unbound(self, workspace: str, rng: random.Random) -> str | None:
        """A recent unbound task of the workspace (it may have been bound meanwhile)."""
        with self._lock:
            pool = self.unbound.get(workspace)
            return pool[rng.randrange(len(pool))] if pool else None

    def pick_foreign(self, workspace: str, channel: str, rng: random.Random) -> str | None:
        """A task bound to a channel other than `channel`, in the same workspace."""
        with self._lock:
            pool = [t for t, ch in self.bound.get(workspace, ()) if ch != channel]
        return pool[rng.randrange(len(pool))] if pool else None


@dataclass
class PeerSettings:
    """What every peer needs to know about the run."""

    channels: list[str]
    greet_interval: float
    churn: float
    writer_bad_p: float
    """Chance that a writer peer's request slot is a deliberately bad request."""
    capless_send_p: float
    """Chance that a capability-less peer uses a slot (all its requests are bad)."""
    tag: str
    leave_revokes: bool
    """Leaves revoke at once (in-process): probe with a write right after the leave.
    Otherwise (NATS) a leave is silence: the peer expires 2 x greet_interval later."""
    allow_silence: bool
    """Expiry is short enough to wait for: churn may go silent until expiry and probe."""


@dataclass
class SimPeer:
    """One simulated peer, living in one (workspace, channel)."""

    index: int
    peer_id: str
    workspace: str
    channel: str
    writer: bool
    settings: PeerSettings
    pools: Pools
    rng: random.Random
    state: str = "new"
    """'new' | 'active' | 'left' | 'silent'."""
    last_greet: float = float("-inf")
    silent_until: float = 0.0
    probe: str = ""
    n: int = 0
    own: deque[str] = field(default_factory=lambda: deque(maxlen=OWN_TASKS))

    def card(self) -> PeerCard:
        """The card this peer greets with; capless peers lack task.write or its proof."""
        if self.writer:
            return PeerCard(peer_id=self.peer_id, display_name=f"swarm peer {self.index}",
                            capabilities=["task.write", "task.read"],
                            proof=f"swarm-proof-{self.index}")
        if self.index % 2:
            return PeerCard(peer_id=self.peer_id, capabilities=["task.read"], proof="p")
        return PeerCard(peer_id=self.peer_id, capabilities=["task.write"], proof="")

    # ---- what next ---------------------------------------------------------------
    def next_step(self, now: float) -> PeerStep:
        """The next thing this peer does at `now` (None: nothing right now)."""
        s = self.settings
        if self.state == "new":
            return Greet()
        if self.state == "left":
            if self.probe:
                return self._probe()
            return Greet()
        if self.state == "silent":
            if now < self.silent_until:
                return None
            if self.probe:
                return self._probe()
            return Greet()
        if now - self.last_greet >= s.greet_interval * HEARTBEAT_FRACTION:
            return Greet()
        if s.churn and self.rng.random() < s.churn:
            if s.leave_revokes and s.allow_silence and self.rng.random() < 0.5:
                self.state = "silent"
                # Strictly past expiry as measured from the last greet's return.
                self.silent_until = self.last_greet + 2 * s.greet_interval + 0.05
                self.probe = "expired_peer"
                return None
            return Leave()
        if not self.writer:
            if self.rng.random() < s.capless_send_p:
                return self._no_capability()
            return None
        if s.writer_bad_p and self.rng.random() < s.writer_bad_p:
            return self._bad()
        return self._good()

    def greeted(self, returned: float) -> None:
        """The greet returned: visible again, heartbeat clock restarts."""
        self.state = "active"
        self.last_greet = returned
        self.probe = ""

    def left(self, returned: float) -> None:
        """The leave returned: probe at once when it revokes, else wait for expiry."""
        s = self.settings
        if s.leave_revokes:
            self.state, self.probe = "left", "left_peer"
        elif s.allow_silence:
            self.state, self.probe = "silent", "expired_peer"
            self.silent_until = returned + 2 * s.greet_interval + 0.05
        else:
            self.state, self.probe = "left", ""

    def on_reply(self, plan: Plan, reply: dict[str, Any]) -> None:
        """Learn from an answer: new tasks join the peer's list and the shared pools."""
        if plan.bad in ("left_peer", "expired_peer"):
            self.probe = ""
        if not reply.get("accepted") or plan.bad:
            return
        task_id = reply.get("task_id")
        if not isinstance(task_id, str):
            return
        if plan.kind == Action.CREATE.value:
            self.own.append(task_id)
            if plan.bind:
                self.pools.add_bound(self.workspace, task_id, self.channel)
            else:
                self.pools.add_unbound(self.workspace, task_id)
        elif plan.kind == Action.CANCEL.value and task_id in self.own:
            self.own.remove(task_id)

    # ---- request builders ----------------------------------------------------------
    def _rid(self) -> str:
        self.n += 1
        return f"{self.settings.tag}-{self.index}-{self.n}"

    def _plan(self, request: AnyRequest, *, bad: str = "", expect: tuple[str, ...] = (),
              peer_id: str | None = None, request_id: str | None = None) -> Plan:
        rid = request_id if request_id is not None else self._rid()
        bind = request.network_channel if isinstance(request, CreateTask | UpdateTask) else None
        return Plan(
            workspace=self.workspace, channel=self.channel, peer_id=peer_id or self.peer_id,
            request_id=rid, kind=request.action.value, envelope=encode_envelope(request, rid),
            bad=bad, expect=expect, bind=bind, task_id=getattr(request, "task_id", None),
        )

    def _create(self) -> CreateTask:
        r = self.rng
        bound = r.random() < 0.7
        meta = {"source": "swarm", "n": str(self.n)} if r.random() < 0.3 else None
        return CreateTask(
            title=f"swarm task {self.index}-{self.n}",
            description="x" * r.randrange(0, 200),
            network_channel=self.channel if bound else "",
            priority=r.randrange(0, 101) if r.random() < 0.5 else None, metadata=meta,
        )

    def _good(self) -> Plan:
        r = self.rng
        roll = r.random()
        if not self.own or roll < 0.35:
            return self._plan(self._create())
        task = self.own[r.randrange(len(self.own))]
        if roll < 0.55:
            return self._plan(UpdateTask(task_id=task, title=f"updated {self.n}",
                                         metadata={"rev": str(self.n)} if r.random() < 0.3
                                         else None))
        if roll < 0.75:
            key = f"k-{task[-10:]}" if r.random() < 0.2 else f"k-{self.index}-{self.n}"
            return self._plan(EnqueueRun(task_id=task, idempotency_key=key))
        if roll < 0.85:
            return self._plan(CancelTask(task_id=task, reason="swarm says done"))
        shared = self.pools.pick_unbound(self.workspace, r)
        if shared is None:
            return self._plan(self._create())
        # Several channels race to bind the same unbound task: at most one may win.
        bind = self.channel if r.random() < 0.5 else None
        return self._plan(UpdateTask(task_id=shared, title=f"claimed by {self.channel}",
                                     network_channel=bind))

    def _no_capability(self) -> Plan:
        return self._plan(self._create(), bad="no_capability", expect=("capability_denied",))

    def _probe(self) -> Plan:
        kind, self.probe = self.probe, ""
        return self._plan(self._create(), bad=kind, expect=("peer_not_found",))

    def _bad(self) -> Plan:
        kind = BAD_KINDS[self.rng.randrange(len(BAD_KINDS))]
        if kind == "foreign_channel" and len(self.settings.channels) < 2:
            kind = "malformed_id"
        return getattr(self, f"_bad_{kind}")()  # type: ignore[no-any-return]

    def _bad_unknown_peer(self) -> Plan:
        ghost = f"ghost-{self.index}-{self.n}"
        return self._plan(self._create(), bad="unknown_peer", expect=("peer_not_found",),
                          peer_id=ghost)

    def _bad_foreign_channel(self) -> Plan:
        target = self.pools.pick_foreign(self.workspace, self.channel, self.rng)
        if target is not None:
            return self._plan(UpdateTask(task_id=target, title="hijack"),
                              bad="foreign_channel", expect=("channel_mismatch",))
        other = [c for c in self.settings.channels if c != self.channel]
        request = CreateTask(title="elsewhere", network_channel=self.rng.choice(other))
        return self._plan(request, bad="foreign_channel", expect=("channel_mismatch",))

    def _bad_malformed_id(self) -> Plan:
        variant = self.rng.randrange(4)
        rid = self._rid()
        if variant == 0:
            return self._plan(self._create(), bad="malformed_id", expect=("invalid_request",),
                              request_id=f"bad/{rid}")
        if variant == 1:
            return self._plan(self._create(), bad="malformed_id", expect=("invalid_request",),
                              request_id=f"bad\x07{rid}")
        if variant == 2 or not self.own:
            return self._plan(UpdateTask(task_id=f"no-such-task-{rid}", title="ghost"),
                              bad="malformed_id", expect=("task_not_found",), request_id=rid)
        task = self.own[self.rng.randrange(len(self.own))]
        return self._plan(EnqueueRun(task_id=task, idempotency_key=f"bad/{rid}"),
                          bad="malformed_id",
                          expect=("validation_failed", "channel_mismatch", "permission_denied"),
                          request_id=rid)

    def _bad_garbage(self) -> Plan:
        blob = self.rng.randbytes(self.rng.randrange(1, 256))
        return Plan(workspace=self.workspace, channel=self.channel, peer_id=self.peer_id,
                    request_id="", kind="garbage", envelope=blob, bad="garbage",
                    expect=("invalid_request",))

    def _bad_oversized(self) -> Plan:
        rid = self._rid()
        if self.rng.random() < 0.5:
            request = CreateTask(title="too big", description="y" * (17 * 1024))
            return self._plan(request, bad="oversized", expect=("validation_failed",),
                              request_id=rid)
        envelope = bytes(msgpack.packb(
            {"v": WIRE_VERSION, "kind": Action.CREATE.value, "request_id": rid,
             "body": {"title": "huge", "description": "z" * (70 * 1024)}}, use_bin_type=True))
        return Plan(workspace=self.workspace, channel=self.channel, peer_id=self.peer_id,
                    request_id="", kind=Action.CREATE.value, envelope=envelope,
                    bad="oversized", expect=("validation_failed",))


def build_peers(
    count: int, channels: list[str], workspaces: list[str], capless_share: float,
    settings: PeerSettings, pools: Pools, seed: int,
) -> list[SimPeer]:
    """`count` peers spread over every (workspace, channel); a seeded share is capless."""
    picker = random.Random(seed)
    capless = set(picker.sample(range(count), round(count * capless_share))) if count > 1 \
        else set()
    peers = []
    for i in range(count):
        ws = workspaces[i % len(workspaces)]
        ch = channels[(i // len(workspaces)) % len(channels)]
        peers.append(SimPeer(
            index=i, peer_id=f"peer-{i:04d}", workspace=ws, channel=ch,
            writer=i not in capless, settings=settings, pools=pools,
            rng=random.Random(seed * 1_000_003 + i),
        ))
    return peers
