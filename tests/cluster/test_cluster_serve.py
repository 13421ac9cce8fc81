"""`serve --cluster` end to end: real daemons (processes), routed nats-servers, PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
from task_ingress.actors.rules.shards import shard_of
from task_ingress.runtime.cluster import pg_leases
from task_ingress.runtime.cluster.nats_cluster import NatsCluster

from tests.cluster.cluster_support import Daemon
from tests.cluster.load import Load, wait_until

SHARDS = 4
# Two workspaces in each of the 4 shards (ws-0..7 leave shard 3 empty, and a daemon holding
# only shard 3 would serve nothing the tests write to).
WORKSPACES = ["ws-1", "ws-3", "ws-0", "ws-4", "ws-2", "ws-5", "ws-10", "ws-15"]


def start(cluster_dir: Path, database: str, nats: NatsCluster, node: str, i: int,
          **kw: object) -> Daemon:
    return Daemon(workdir=cluster_dir, node=node, database=database,
                  nats_url=nats.urls[i % len(nats.urls)], token=nats.token, shards=SHARDS,
                  workspaces=WORKSPACES, key_file=cluster_dir / "cluster.key",
                  trust_file=cluster_dir / "trust.json", **kw)  # type: ignore[arg-type]


def owners(database: str) -> dict[int, str | None]:
    with psycopg.connect(database, autocommit=True) as conn:
        return {s.shard: s.owner for s in pg_leases.status(conn)}


def test_two_daemons_split_the_shards_serve_every_workspace_and_release_on_stop(
    database: str, nats_cluster: NatsCluster, cluster_dir: Path
) -> None:
    daemons = [start(cluster_dir, database, nats_cluster, f"node-{i}", i) for i in range(2)]
    load = None
    try:
        infos = [d.wait_ready() for d in daemons]
        assert infos[0]["node_id"] == "node-0" and infos[0]["shards"] == SHARDS
        assert infos[0]["daemon_handle"] == infos[1]["daemon_handle"]  # one cluster identity
        wait_until(lambda: sorted(v or "" for v in owners(database).values())
                   == ["node-0", "node-0", "node-1", "node-1"], 20, "shards split 2/2")
        load = Load(daemons[0].ready_file, nats_cluster.urls[2], WORKSPACES, database)
        load.greet_all()
        replies = load.round()
        assert all(r["accepted"] for r in replies.values()), replies
    finally:
        if load is not None:
            load.close()
        codes = [d.stop() for d in daemons]
    assert codes == [0, 0], [d.log() for d in daemons]
    assert set(owners(database).values()) == {None}  # every lease given back on stop


def test_serve_cluster_without_a_reachable_database_exits_2(
    nats_cluster: NatsCluster, cluster_dir: Path
) -> None:
    d = start(cluster_dir, "postgresql://nobody@127.0.0.1:1/none", nats_cluster, "node-x", 0)
    assert d.proc.wait(60) == 2, d.log()
    assert not d.ready_file.exists()


def test_serve_cluster_usage_errors_exit_2() -> None:
    out = subprocess.run([sys.executable, "-m", "task_ingress", "serve", "--cluster",
                          "--database", "postgresql://x@127.0.0.1:1/x"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--nats-url" in out.stderr
    out = subprocess.run([sys.executable, "-m", "task_ingress", "serve", "--shards", "3"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--cluster" in out.stderr
    env = {k: v for k, v in os.environ.items() if k != "TASK_INGRESS_AUDIT_KEY"}
    out = subprocess.run([sys.executable, "-m", "task_ingress", "serve", "--cluster",
                          "--database", "postgresql://x@127.0.0.1:1/x",
                          "--nats-url", "nats://127.0.0.1:1"],
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 2 and "TASK_INGRESS_AUDIT_KEY" in out.stderr


def test_the_test_workspaces_cover_every_shard_twice() -> None:
    assert sorted(shard_of(ws, SHARDS) for ws in WORKSPACES) == [0, 0, 1, 1, 2, 2, 3, 3]
