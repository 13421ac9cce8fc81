"""The benchmark's fixed workload: threads x peers x channels sending wire envelopes.

Every system under test is driven through the same three calls (`greet`, `deliver`,
`close`) by the same seeded request stream: creates (70% bound to the peer's channel),
updates, enqueues and cancels of the peer's own tasks, all from visible writers.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

import psutil
from task_ingress.messages.codec import decode_reply, encode_envelope
from task_ingress.messages.peers import PeerCard
from task_ingress.messages.requests import (
    AnyRequest,
    CancelTask,
    CreateTask,
    EnqueueRun,
    UpdateTask,
)


class System(Protocol):
    """What the bench drives: the wire path of a runtime or of the baseline."""

    def greet(self, workspace: str, channel: str, card: PeerCard) -> None:
        """Make a peer visible."""
        ...

    def deliver(self, envelope: bytes, *, workspace: str, channel: str, peer_id: str) -> bytes:
        """One request in, its reply out."""
        ...


WORKSPACE = "bench"
FAILURES = ("task_ingress_failed", "overloaded", "task_ingress_unavailable")
"""Replies that are no judgement of the request: they do not count as throughput."""


@dataclass(frozen=True)
class Workload:
    """The fixed shape of a benchmark run."""

    requests: int = 3000
    threads: int = 16
    channels: int = 8
    peers: int = 32
    seed: int = 1


@dataclass
class PhaseResult:
    """Latencies (seconds) and counts of one phase on one system."""

    latencies: list[float] = field(default_factory=list)
    accepted: int = 0
    failed: int = 0
    """Replies `task_ingress_failed`/`overloaded`/`task_ingress_unavailable` (FAILURES),
    or a call that raised."""
    elapsed: float = 0.0
    timed_out: bool = False
    cpu_s: float = 0.0
    """CPU seconds of this process and its children (actor processes) during the phase."""
    client_cpu_s: float = 0.0
    """CPU seconds the caller threads spent on the bench's own client work: everything of
    a request but its `deliver` call (choosing and encoding it, reading the reply)."""
    runtime_cpu_s: float = 0.0
    """CPU seconds of the system under test alone: `cpu_s` less `client_cpu_s`, or, for a
    system that runs in child processes (`runtime_in_children`), those processes' CPU
    (the client's NATS transport thread, signing and checking, is client work too)."""


@dataclass
class BenchPeer:
    """A writer peer and its own recent tasks."""

    peer_id: str
    channel: str
    tasks: deque[str] = field(default_factory=lambda: deque(maxlen=16))
    n: int = 0


def peers_for(w: Workload) -> list[BenchPeer]:
    """The workload's peers, spread round-robin over the channels."""
    return [BenchPeer(f"bench-{i:03d}", f"ch-{i % w.channels}") for i in range(w.peers)]


def greet_all(system: System, peers: list[BenchPeer]) -> None:
    """Greet every peer as a writer."""
    for p in peers:
        system.greet(WORKSPACE, p.channel, PeerCard(peer_id=p.peer_id,
                                                    capabilities=["task.write"],
                                                    proof=f"proof-{p.peer_id}"))


def next_request(peer: BenchPeer, rng: random.Random, phase: str) -> tuple[str, AnyRequest]:
    """The peer's next request (request ID unique per phase)."""
    peer.n += 1
    rid = f"{phase}-{peer.peer_id}-{peer.n}"
    roll = rng.random()
    if not peer.tasks or roll < 0.4:
        bound = peer.channel if rng.random() < 0.7 else ""
        return rid, CreateTask(title=f"bench {rid}", description="d" * 64,
                               network_channel=bound)
    task = peer.tasks[rng.randrange(len(peer.tasks))]
    if roll < 0.7:
        return rid, UpdateTask(task_id=task, title=f"updated {rid}")
    if roll < 0.9:
        return rid, EnqueueRun(task_id=task, idempotency_key=f"k-{rid}")
    peer.tasks.remove(task)
    return rid, CancelTask(task_id=task, reason="bench")


def _one(system: System, peer: BenchPeer, rng: random.Random, phase: str,
         result: PhaseResult, lock: threading.Lock, started: float) -> float:
    """One request, start to finish; the CPU seconds this thread spent outside `deliver`."""
    cpu_begin = time.thread_time()
    rid, request = next_request(peer, rng, phase)
    env = encode_envelope(request, rid)
    cpu_deliver = time.thread_time()
    try:
        answer = system.deliver(env, workspace=WORKSPACE, channel=peer.channel,
                                peer_id=peer.peer_id)
    except Exception:
        answer = None
    cpu_delivered = time.thread_time()
    reply: dict[str, Any] = {"accepted": False, "reason": "task_ingress_failed"}
    try:
        if answer is not None:
            reply = decode_reply(answer)
    except Exception:
        pass  # an unreadable reply counts as failed, like a call that raised
    latency = time.perf_counter() - started
    accepted = bool(reply.get("accepted"))
    if accepted and isinstance(request, CreateTask) and isinstance(reply.get("task_id"), str):
        peer.tasks.append(reply["task_id"])
    with lock:
        result.latencies.append(latency)
        if accepted:
            result.accepted += 1
        elif reply.get("reason") in FAILURES:
            result.failed += 1
    return time.thread_time() - cpu_begin - (cpu_delivered - cpu_deliver)


def run_phase(system: System, w: Workload, peers: list[BenchPeer], phase: str,
              count: int, rate: float | None, budget: float) -> PhaseResult:
    """Send `count` requests from `w.threads` threads.

    rate None: closed loop, as fast as replies come (peak). Otherwise open loop at `rate`
    requests/s in total, each latency measured from the request's *scheduled* send time
    (no coordinated omission). Stops early (timed_out) once `budget` seconds have passed.
    """
    result = PhaseResult()
    lock = threading.Lock()
    threads = min(w.threads, len(peers))
    per_thread = [count // threads + (1 if t < count % threads else 0) for t in range(threads)]
    t0 = time.perf_counter() + 0.05
    deadline = t0 + budget

    def work(t: int) -> None:
        mine = peers[t::threads]
        rng = random.Random(w.seed * 7919 + t + zlib.crc32(phase.encode()))
        interval = threads / rate if rate else 0.0
        offset = interval * t / threads
        client_cpu = 0.0
        for k in range(per_thread[t]):
            now = time.perf_counter()
            if now >= deadline:
                result.timed_out = True
                break
            if rate:
                scheduled = t0 + offset + k * interval
                if scheduled > now:
                    time.sleep(scheduled - now)
                started = scheduled
            else:
                started = time.perf_counter()
            client_cpu += _one(system, mine[k % len(mine)], rng, phase, result, lock, started)
        with lock:
            result.client_cpu_s += client_cpu

    pool = [threading.Thread(target=work, args=(t,), name=f"bench-{t}") for t in range(threads)]
    # Actor processes of a multiprocess base are no children of ours (Thespian daemonizes)
    actors = list(getattr(system, "actor_pids", list)())
    own_before, others_before = tree_cpu_seconds(actors)
    begin = time.perf_counter()
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    result.elapsed = time.perf_counter() - max(begin, t0 - 0.05)
    own_after, others_after = tree_cpu_seconds(actors)
    result.cpu_s = own_after + others_after - own_before - others_before
    result.runtime_cpu_s = (others_after - others_before
                            if getattr(system, "runtime_in_children", False)
                            else result.cpu_s - result.client_cpu_s)
    return result


def tree_cpu_seconds(extra_pids: list[int] | None = None) -> tuple[float, float]:
    """User + system CPU seconds of this process, and of its live children and
    `extra_pids` together."""
    me = psutil.Process()
    own = float(sum(me.cpu_times()[:2]))
    total = 0.0
    procs = me.children(recursive=True)
    seen = {p.pid for p in procs}
    for pid in extra_pids or ():
        if pid not in seen:
            with contextlib.suppress(psutil.Error):
                procs.append(psutil.Process(pid))
    for proc in procs:
        try:
            total += sum(proc.cpu_times()[:2])
        except psutil.Error:
            continue
    return own, total
