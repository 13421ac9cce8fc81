"""The swarm against a 3-daemon cluster (3 routed nats-servers, 1 PostgreSQL): every
invariant holds, with the shards spread over the daemons — and still when one daemon is
SIGKILLed mid-swarm.

Normal suite: 1,200 requests. `TASK_INGRESS_SLOW=1`: 20,000 requests from 48 peers
(bounded at 10 minutes)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import psycopg
from task_ingress.actors.rules.shards import shard_of
from task_ingress.runtime.cluster.nats_cluster import NatsCluster
from task_ingress.runtime.cluster.swarm_transport import ClusterSwarmTransport
from task_ingress.runtime.swarm.config import SwarmConfig
from task_ingress.runtime.swarm.runner import run_swarm
from task_ingress.runtime.swarm.stats import Snapshot

from tests.cluster.cluster_support import Daemon
from tests.cluster.load import wait_until
from tests.cluster.stores import audit_chains_verify, fencing_problems, stored_request_ids
from tests.cluster.test_cluster_serve import owners

SLOW = os.environ.get("TASK_INGRESS_SLOW") == "1"
# Three shards, one per daemon, and the swarm's workspaces ws-0..5 two in each (with six
# shards ws-0..5 left one empty, and a SIGKILLed daemon could hold almost no traffic).
SHARDS = 3
WORKSPACES = [f"ws-{i}" for i in range(6)]


def three_daemons(cluster_dir: Path, database: str, nats_cluster: NatsCluster,
                  lease_ttl: float) -> list[Daemon]:
    return [Daemon(workdir=cluster_dir, node=f"node-{i}", database=database,
                   nats_url=nats_cluster.urls[i], token=nats_cluster.token, shards=SHARDS,
                   workspaces=WORKSPACES, key_file=cluster_dir / "cluster.key",
                   trust_file=cluster_dir / "trust.json", lease_ttl=lease_ttl)
            for i in range(3)]


def spread_evenly(daemons: list[Daemon], database: str) -> dict[int, str | None]:
    for d in daemons:
        d.wait_ready()
    wait_until(lambda: sorted(o or "" for o in owners(database).values())
               == ["node-0", "node-1", "node-2"], 30, "one shard on each daemon")
    return owners(database)


def test_a_swarm_against_three_daemons_passes_every_invariant(
    database: str, nats_cluster: NatsCluster, cluster_dir: Path
) -> None:
    daemons = three_daemons(cluster_dir, database, nats_cluster, lease_ttl=5.0)
    transports: list[ClusterSwarmTransport] = []
    try:
        spread = spread_evenly(daemons, database)

        def factory(cfg: SwarmConfig, workdir: str) -> tuple[ClusterSwarmTransport, str]:
            transport = ClusterSwarmTransport(ready_file=str(daemons[1].ready_file),
                                              nats_url=nats_cluster.urls[2],
                                              database=database, request_timeout=10.0)
            transports.append(transport)
            return transport, (cluster_dir / "audit.key").read_text()

        cfg = SwarmConfig(requests=20_000 if SLOW else 1200, duration=600 if SLOW else 60,
                          peers=48 if SLOW else 18, channels=2, workspaces=len(WORKSPACES),
                          concurrency=12 if SLOW else 6, transport="nats", progress=False,
                          seed=16)
        result = run_swarm(cfg, factory)
        assert owners(database) == spread, "the shards moved during the run"
    finally:
        codes = [d.stop() for d in daemons]
    assert codes == [0, 0, 0], [d.log() for d in daemons]
    failed = [c for c in result.checks if not c.ok]
    assert not failed, failed
    stats = result.stats
    print(f"cluster swarm: {stats.requests} requests, {stats.accepted} accepted, "
          f"reasons {dict(stats.reasons)}, {result.elapsed:.1f} s")
    for check in result.checks:
        print(f"  {check.name}: {check.detail}")
    assert stats.accepted > 0 and stats.errors == 0, stats
    assert stats.leaves > 0, "no peer left: the leave check proved nothing"
    assert transports[0].leave_problems == []
    assert fencing_problems(database, SHARDS) == []


def test_a_swarm_passes_every_invariant_when_a_shard_owner_is_sigkilled_mid_swarm(
    database: str, nats_cluster: NatsCluster, cluster_dir: Path
) -> None:
    """node-1 is SIGKILLed once the swarm has had 300 answers. Requests it never answered
    are answered task_ingress_unavailable by the transport (after its 3 s timeout) and
    acknowledge nothing; every acknowledged one must be stored, every shard's chain verify,
    and node-1's shards be owned again within TTL + 2 s."""
    ttl = 2.0
    daemons = three_daemons(cluster_dir, database, nats_cluster, lease_ttl=ttl)
    victim = daemons[1]
    ack_log = cluster_dir / "ack.jsonl"
    transports: list[ClusterSwarmTransport] = []
    killed = threading.Event()
    lost: list[int] = []
    took: list[float] = []

    def watch_takeover() -> None:
        started = time.monotonic()
        with_deadline = started + ttl + 2 + 5  # measured below against TTL + 2 s
        while time.monotonic() < with_deadline:
            now = owners(database)
            if all(now[s] not in (None, victim.node) for s in lost):
                took.append(time.monotonic() - started)
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=watch_takeover, daemon=True)

    def on_tick(snap: Snapshot) -> None:
        if not killed.is_set() and snap.requests >= 300:
            lost.extend(s for s, o in owners(database).items() if o == victim.node)
            victim.signal(signal.SIGKILL)
            killed.set()
            watcher.start()

    try:
        spread_evenly(daemons, database)

        def factory(cfg: SwarmConfig, workdir: str) -> tuple[ClusterSwarmTransport, str]:
            transport = ClusterSwarmTransport(ready_file=str(daemons[0].ready_file),
                                              nats_url=nats_cluster.urls[2],
                                              database=database, request_timeout=3.0)
            transports.append(transport)
            return transport, (cluster_dir / "audit.key").read_text()

        cfg = SwarmConfig(requests=3000, duration=90, peers=18, channels=2,
                          workspaces=len(WORKSPACES), concurrency=6, transport="nats",
                          progress=False, seed=17, ack_log=str(ack_log))
        result = run_swarm(cfg, factory, on_tick=on_tick)
        if killed.is_set():
            watcher.join(ttl + 10)
    finally:
        codes = [d.stop() for d in daemons]
    assert killed.is_set() and len(lost) == 1, "node-1 was not killed holding its shard"
    assert codes[0] == 0 and codes[2] == 0, [d.log() for d in daemons]
    assert took and took[0] <= ttl + 2, f"shards {lost} not owned again within TTL + 2 s"
    failed = [c for c in result.checks if not c.ok]
    assert not failed, failed
    acks = [json.loads(line) for line in ack_log.read_text().splitlines()]
    acked = {a["request_id"] for a in acks if a["accepted"]}
    stored = stored_request_ids(database)
    assert acked and acked <= stored, f"acknowledged, not stored: {sorted(acked - stored)[:5]}"
    assert audit_chains_verify(database, cluster_dir) == []
    assert fencing_problems(database, SHARDS) == []
    assert transports[0].leave_problems == []
    stats = result.stats
    # The kill met traffic when the dead daemon's shard was written under its epoch before
    # the kill and under the new owner's after it (how many requests were in flight at the
    # kill, answered task_ingress_unavailable, is chance: often only one).
    with psycopg.connect(database, autocommit=True) as pg:
        epochs = {int(e) for (e,) in pg.execute(
            "SELECT DISTINCT epoch FROM accepted_requests WHERE shard = ANY(%s)", (lost,))}
    assert len(epochs) >= 2, (
        f"shard {lost} was not written both before and after the kill (epochs {epochs}): "
        "the kill proved nothing")
    print(f"swarm with a SIGKILL: {stats.requests} requests, {stats.accepted} accepted, "
          f"reasons {dict(stats.reasons)}, shards {lost} owned again "
          f"{took[0]:.2f} s after the kill (TTL {ttl} s), {result.elapsed:.1f} s")
    for check in result.checks:
        print(f"  {check.name}: {check.detail}")


def test_the_swarms_workspaces_put_two_in_every_shard() -> None:
    assert sorted(shard_of(ws, SHARDS) for ws in WORKSPACES) == [0, 0, 1, 1, 2, 2]
