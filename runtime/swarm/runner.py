"""Runs a swarm: worker threads drive simulated peers through a transport, then checks.

Threads: `concurrency` workers (at most one per peer), each owning a fixed set of peers
so every peer acts sequentially. The calling thread only reports progress. The run ends
when `requests` have been sent or `duration` has passed (or on Ctrl-C: the run is then
marked interrupted), then the transport is closed (store flushed, final checkpoint) and the
invariants read the store.

Besides the invariants, a run must have done something to pass (`run_problems`): a run
that sent no request, or whose every greet failed, proves nothing and fails.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psutil
from task_ingress.messages.codec import decode_reply
from task_ingress.runtime.audit.read import StoreUnreadable, open_readonly
from task_ingress.runtime.swarm.config import SwarmConfig
from task_ingress.runtime.swarm.history import PresenceEvent, PresenceHistory
from task_ingress.runtime.swarm.invariants import Check, check_all, gather
from task_ingress.runtime.swarm.journal import AckLog, Journal, read_journal
from task_ingress.runtime.swarm.peers import (
    BAD_KINDS,
    Greet,
    Leave,
    PeerSettings,
    Plan,
    Pools,
    SimPeer,
    build_peers,
)
from task_ingress.runtime.swarm.stats import Snapshot, Stats, answered_rate
from task_ingress.runtime.swarm.transport import SwarmTransport

ALL_BAD_KINDS = (*BAD_KINDS, "no_capability", "left_peer", "expired_peer")
"""Every deliberately bad kind (peers.py's table), in report order."""

TICK = 0.25
RSS_EVERY = 5.0
"""Seconds between RSS samples (the report's rss_timeline)."""
IDLE_SLEEP = 0.005
MAX_SILENCE_WAIT = 5.0
"""Expiry (2 x greet_interval) longer than this is not waited for by silent peers."""


@dataclass(frozen=True)
class SwarmResult:
    """Everything a report needs."""

    config: SwarmConfig
    stats: Stats
    checks: list[Check]
    elapsed: float
    rss_start_mb: float
    rss_end_mb: float
    workers: int
    greet_interval: float
    store_path: str
    transport: str
    rss_timeline: list[tuple[float, float]]
    """(seconds into the run, RSS MB of the process tree), every RSS_EVERY seconds."""
    interrupted: bool = False
    """Ctrl-C stopped the run before its request count or duration."""
    unsent_notes: dict[str, str] = field(default_factory=dict)
    """Bad kinds this run could not send, and why (e.g. over NATS a leave is silence)."""
    leave_revokes: bool = True
    """Whether this run's leaves revoked (its transport's), else they were silences."""

    @property
    def run_problems(self) -> list[str]:
        """Why the run itself proves nothing, whatever the invariants say ([] when fine)."""
        s = self.stats
        failed = (f"{s.presence_errors:,} greet/leave call(s) failed, first: "
                  f"{s.presence_error_examples[0]}" if s.presence_error_examples else "")
        if s.requests == 0:
            return ["no request was sent" + (f" ({failed})" if failed else "")]
        if s.greets == 0 and s.presence_errors:
            return [f"every greet failed ({failed})"]
        return []

    @property
    def ok(self) -> bool:
        """True when every invariant held and the run did something."""
        return all(c.ok for c in self.checks) and not self.run_problems

    @property
    def throughput(self) -> float:
        """Requests answered per second of run time (the live display's rate too)."""
        return answered_rate(self.stats.requests, self.stats.errors, self.elapsed)


def bad_rates(bad_share: float, capless: float) -> tuple[float, float]:
    """(writer peers' bad chance per slot, capless peers' send chance per turn) such that
    about `bad_share` of all requests are bad and capability-less peers send one bad kind's
    fair part of them (workers visit every peer equally often)."""
    if bad_share <= 0.0:
        return 0.0, 0.0
    if capless <= 0.0:
        return bad_share, 0.0
    part = bad_share / (len(BAD_KINDS) + 1)  # capless requests' share of all requests
    capless_send = min(1.0, part * (1 - capless) / (capless * (1 - part)))
    writer_bad = min(1.0, (bad_share - part) / (1 - part))
    return writer_bad, capless_send


class Budget:
    """Request slots and the deadline, shared by all workers."""

    def __init__(self, requests: int, deadline: float) -> None:
        self.left = requests
        self.deadline = deadline
        self.stopped = threading.Event()
        self._lock = threading.Lock()

    def over(self) -> bool:
        """No more work: slots used up, deadline passed, or stopped."""
        return self.left <= 0 or self.stopped.is_set() or time.monotonic() >= self.deadline

    def take(self) -> bool:
        """Claim one request slot."""
        with self._lock:
            if self.over():
                return False
            self.left -= 1
            return True


def tree_rss_mb() -> float:
    """Resident memory of this process and its children (actor processes), MB."""
    me = psutil.Process()
    total = int(me.memory_info().rss)
    for child in me.children(recursive=True):
        try:
            total += int(child.memory_info().rss)
        except psutil.Error:
            continue
    return total / (1024 * 1024)


def audit_head(store_path: str) -> int:
    """The store's last audit seq (0 for a new store)."""
    try:
        with open_readonly(store_path) as conn:
            row = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM audit").fetchone()
    except StoreUnreadable:
        return 0
    return int(row[0])


class Swarm:
    """One run: peers, workers, bookkeeping. Use `run_swarm` unless testing."""

    def __init__(self, cfg: SwarmConfig, transport: SwarmTransport, workdir: str,
                 audit_key: str | None = None) -> None:
        self.cfg = cfg
        self.transport = transport
        self.audit_key = audit_key
        self.leave_revokes = bool(getattr(transport, "leave_revokes", False))
        self.greet_interval = float(transport.greet_interval)
        self.history = PresenceHistory(expiry=2 * self.greet_interval,
                                       leave_revokes=self.leave_revokes)
        self.store_path = transport.store_path()
        # A cluster's transport reads its own evidence (runtime/cluster/swarm_transport.py).
        head = getattr(transport, "audit_head", None)
        self.start_seq = int(head()) if head is not None else audit_head(self.store_path)
        tag = f"s{cfg.seed}" if self.start_seq == 0 else f"s{cfg.seed}-{secrets.token_hex(3)}"
        fixed_ws = getattr(transport, "workspace", None) if cfg.transport == "nats" else None
        workspaces = ([str(fixed_ws)] if fixed_ws
                      else [f"ws-{i}" for i in range(cfg.workspaces)])
        channels = [f"ch-{i}" for i in range(cfg.channels)]
        capless = cfg.capless_share if cfg.peers > 1 else 0.0
        writer_bad, capless_send = bad_rates(cfg.bad_share, capless)
        settings = PeerSettings(
            channels=channels, greet_interval=self.greet_interval, churn=cfg.churn,
            writer_bad_p=writer_bad, capless_send_p=capless_send,
            tag=tag, leave_revokes=self.leave_revokes,
            allow_silence=2 * self.greet_interval <= MAX_SILENCE_WAIT,
        )
        self.settings = settings
        self.capless = capless
        self.peers = build_peers(cfg.peers, channels, workspaces, capless, settings, Pools(),
                                 cfg.seed)
        # Over NATS a peer writes under a verified handle (nickname@fingerprint): the
        # transport names the peers, so journal, audit and invariants agree on the IDs.
        rename = getattr(transport, "peer_name", None)
        if rename is not None:
            for peer in self.peers:
                peer.peer_id = rename(peer.peer_id)
        self.workers = min(cfg.concurrency, len(self.peers))
        self.journal = Journal(os.path.join(workdir, "journal.jsonl"))
        self.ack = AckLog(cfg.ack_log) if cfg.ack_log else None
        self.stats = Stats(start=time.monotonic())
        self.budget = Budget(cfg.requests, self.stats.start + cfg.duration)
        self.rss_timeline: list[tuple[float, float]] = []
        self.refused_greets: Counter[tuple[str, str, str]] = Counter()
        self.interrupted = False

    # ---- worker side -------------------------------------------------------------
    def _greet(self, peer: SimPeer) -> None:
        key = (peer.workspace, peer.channel, peer.peer_id)
        sent = time.monotonic()
        try:
            self.transport.greet(peer.workspace, peer.channel, peer.card())
        except Exception:
            self.refused_greets[key] += 1
            raise
        finally:
            # Recorded even when the call failed: it may have taken effect (conservative).
            returned = time.monotonic()
            self.history.record(key, PresenceEvent("greet", peer.writer, sent, returned))
        peer.greeted(returned)
        self.stats.presence("greet")

    def _leave(self, peer: SimPeer) -> None:
        sent = time.monotonic()
        self.transport.leave(peer.workspace, peer.channel, peer.peer_id)
        returned = time.monotonic()
        # Only a leave that returned is evidence of a revocation.
        self.history.record((peer.workspace, peer.channel, peer.peer_id),
                            PresenceEvent("leave", False, sent, returned))
        peer.left(returned)
        self.stats.presence("leave")

    def _send(self, peer: SimPeer, plan: Plan) -> None:
        sent = time.monotonic()
        reply: dict[str, Any] | None = None
        what = f"{plan.bad or plan.kind} {plan.peer_id} {plan.request_id!r}"
        try:
            raw = self.transport.deliver(plan.envelope, workspace=plan.workspace,
                                         channel=plan.channel, peer_id=plan.peer_id)
            reply = decode_reply(raw)
        except Exception as exc:
            what = f"{what}: {exc!r:.200}"
        returned = time.monotonic()
        self.journal.write(plan, sent, returned, reply)
        if reply is None:
            self.stats.record(returned, returned - sent, None, None, plan.bad, plan.expect, what)
            return
        accepted = bool(reply.get("accepted"))
        reason = reply.get("reason")
        self.stats.record(returned, returned - sent, accepted,
                          reason if isinstance(reason, str) else None, plan.bad, plan.expect,
                          what)
        if self.ack is not None:
            self.ack.write(plan, reply)
        peer.on_reply(plan, reply)

    def _work(self, peers: list[SimPeer]) -> None:
        idle = 0
        i = 0
        while not self.budget.over():
            peer = peers[i % len(peers)]
            i += 1
            step = peer.next_step(time.monotonic())
            if step is None:
                idle += 1
                if idle >= len(peers):
                    time.sleep(IDLE_SLEEP)
                    idle = 0
                continue
            idle = 0
            try:
                if isinstance(step, Greet):
                    self._greet(peer)
                elif isinstance(step, Leave):
                    self._leave(peer)
                elif self.budget.take():
                    self._send(peer, step)
            except Exception as exc:  # a failing greet/leave must not kill the worker
                self.stats.presence_failed(f"{type(step).__name__.lower()} {peer.peer_id}: "
                                           f"{exc!r:.200}")
                time.sleep(IDLE_SLEEP)

    # ---- driver side -------------------------------------------------------------
    def run(self, on_tick: Callable[[Snapshot], None] | None = None) -> tuple[float, float,
                                                                               float]:
        """Run the workers to the end; returns (elapsed, rss_start_mb, rss_end_mb)."""
        rss_start = tree_rss_mb()
        threads = [
            threading.Thread(target=self._work, args=(self.peers[w::self.workers],),
                             name=f"swarm-worker-{w}", daemon=True)
            for w in range(self.workers)
        ]
        for t in threads:
            t.start()
        next_rss = time.monotonic() + RSS_EVERY
        try:
            while any(t.is_alive() for t in threads):
                time.sleep(TICK)
                now = time.monotonic()
                if now >= next_rss:
                    next_rss += RSS_EVERY
                    self.rss_timeline.append((round(now - self.stats.start, 1),
                                              round(tree_rss_mb(), 1)))
                if on_tick is not None:
                    on_tick(self.stats.snapshot(now))
        except KeyboardInterrupt:
            # Ctrl-C: stop sending, let each worker finish the call it is in, and still
            # check and report what was sent (the command then exits 130).
            self.interrupted = True
            self.budget.stopped.set()
        for t in threads:
            t.join()
        end = time.monotonic()
        self.stats.finish(end)
        if on_tick is not None:
            on_tick(self.stats.snapshot(end))
        rss_end = tree_rss_mb()
        self.journal.close()
        if self.ack is not None:
            self.ack.close()
        return end - self.stats.start, rss_start, rss_end

    def check(self) -> list[Check]:
        """The invariants, over the store file and this run's journal and history."""
        sent = list(read_journal(self.journal.path))
        own = getattr(self.transport, "gather", None)
        try:
            if own is not None:
                evidence = own(self.start_seq, sent, self.history, self.audit_key,
                               self.refused_greets)
            else:
                evidence = gather(self.store_path, self.start_seq, sent, self.history,
                                  self.audit_key, self.refused_greets)
        except StoreUnreadable as exc:
            return [Check("store_readable", False, f"cannot read the store after the run: "
                                                   f"{exc}")]
        return check_all(evidence)

    def unsent_notes(self) -> dict[str, str]:
        """For each bad kind this run sent none of, why (configuration, or the transport)."""
        cfg, s = self.cfg, self.settings
        sent = self.stats.bad_sent
        expiry = 2 * self.greet_interval
        why: dict[str, str] = {}
        if cfg.bad_share <= 0:
            why.update({k: "--bad-share is 0" for k in (*BAD_KINDS, "no_capability")})
        if not self.capless:
            why["no_capability"] = "no capability-less peer (needs --peers 2 or more)"
        if cfg.churn <= 0:
            why.update(left_peer="--churn is 0", expired_peer="--churn is 0")
        if not s.leave_revokes:
            why["left_peer"] = ("a leave is silence in this run (always over NATS; "
                                "--leave silence in-process), not a revocation: the "
                                "expired_peer probe tests it instead")
        if not s.allow_silence:
            why["expired_peer"] = (f"expiry ({expiry:g} s, 2 x the greet interval) is "
                                   f"longer than the {MAX_SILENCE_WAIT:g} s a peer waits; "
                                   "a greet interval of 2 s or less includes it")
        notes = {}
        for kind in ALL_BAD_KINDS:
            if not sent[kind]:
                notes[kind] = why.get(kind, "not drawn in this run (too few requests)")
        return notes


def make_inproc(cfg: SwarmConfig, workdir: str) -> tuple[SwarmTransport, str | None]:
    """An in-process runtime on a durable file store (a temp file unless --store)."""
    from task_ingress.runtime.config import RuntimeConfig
    from task_ingress.runtime.swarm.transport import InProcTransport

    store = cfg.store or os.path.join(workdir, "store.db")
    # A throwaway store gets a throwaway key (no key-file warning); a named one uses the
    # operator's key (env or key file), as `audit verify` will.
    key = secrets.token_hex(32) if cfg.store is None else None
    rc = RuntimeConfig(store_path=store, durable=True, actor_base=cfg.actor_base,
                       process_mode=cfg.process_mode,
                       greet_interval=cfg.greet_interval, audit_key=key)
    return InProcTransport(rc, leave_revokes=cfg.leave_revokes), key


def run_swarm(
    cfg: SwarmConfig,
    transport_factory: Callable[[SwarmConfig, str], tuple[SwarmTransport, str | None]]
    = make_inproc,
    on_tick: Callable[[Snapshot], None] | None = None,
) -> SwarmResult:
    """One complete swarm run: start, drive, close, check. Temp files are removed."""
    workdir = tempfile.mkdtemp(prefix="task-ingress-swarm-")
    try:
        transport, key = transport_factory(cfg, workdir)
        try:
            swarm = Swarm(cfg, transport, workdir, key)
            elapsed, rss_start, rss_end = swarm.run(on_tick)
        finally:
            transport.close()
        checks = swarm.check()
        return SwarmResult(
            config=cfg, stats=swarm.stats, checks=checks, elapsed=elapsed,
            rss_start_mb=rss_start, rss_end_mb=rss_end, workers=swarm.workers,
            greet_interval=swarm.greet_interval, store_path=swarm.store_path,
            transport=cfg.transport, rss_timeline=swarm.rss_timeline,
            interrupted=swarm.interrupted, unsent_notes=swarm.unsent_notes(),
            leave_revokes=swarm.leave_revokes,
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
