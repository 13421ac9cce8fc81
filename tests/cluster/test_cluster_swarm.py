"""The swarm against a 3-daemon cluster (3 routed nats-servers, 1 PostgreSQL): every
invariant holds, with the shards spread over the daemons.

Normal suite: 1,200 requests. `TASK_INGRESS_SLOW=1`: 20,000 requests from 48 peers
(bounded at 10 minutes)."""

from __future__ import annotations

import os
from pathlib import Path

from task_ingress.runtime.cluster.nats_cluster import NatsCluster
from task_ingress.runtime.cluster.swarm_transport import ClusterSwarmTransport
from task_ingress.runtime.swarm.config import SwarmConfig
from task_ingress.runtime.swarm.runner import run_swarm

from tests.cluster.cluster_support import Daemon
from tests.cluster.load import wait_until
from tests.cluster.stores import fencing_problems
from tests.cluster.test_cluster_serve import owners

SLOW = os.environ.get("TASK_INGRESS_SLOW") == "1"
SHARDS = 6
WORKSPACES = [f"ws-{i}" for i in range(6)]


def test_a_swarm_against_three_daemons_passes_every_invariant(
    database: str, nats_cluster: NatsCluster, cluster_dir: Path
) -> None:
    daemons = [Daemon(workdir=cluster_dir, node=f"node-{i}", database=database,
                      nats_url=nats_cluster.urls[i], token=nats_cluster.token, shards=SHARDS,
                      workspaces=WORKSPACES, key_file=cluster_dir / "cluster.key",
                      trust_file=cluster_dir / "trust.json", lease_ttl=5.0)
               for i in range(3)]
    try:
        for d in daemons:
            d.wait_ready()
        wait_until(lambda: sorted(o or "" for o in owners(database).values())
                   == ["node-0"] * 2 + ["node-1"] * 2 + ["node-2"] * 2, 30,
                   "two shards on each daemon")
        spread = owners(database)

        def factory(cfg: SwarmConfig, workdir: str) -> tuple[ClusterSwarmTransport, str]:
            transport = ClusterSwarmTransport(ready_file=str(daemons[1].ready_file),
                                              nats_url=nats_cluster.urls[2],
                                              database=database, request_timeout=10.0)
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
    assert fencing_problems(database, SHARDS) == []
