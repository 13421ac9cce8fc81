"""`task-ingress cluster status` against a real PostgreSQL, through the console script."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import psycopg
from task_ingress.runtime.cluster import pg_leases


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "task_ingress", *args],
                          capture_output=True, text=True, timeout=60)


def test_status_shows_each_shard_with_its_owner_epoch_and_lease_age(database: str) -> None:
    with psycopg.connect(database, autocommit=True) as conn:
        pg_leases.ensure_schema(conn, shards=3)
        pg_leases.acquire(conn, 0, "node-a", ttl=60, sent_at=time.monotonic())
        lease = pg_leases.acquire(conn, 2, "node-b", ttl=60, sent_at=time.monotonic())
        assert lease is not None and pg_leases.release(conn, lease)
        pg_leases.acquire(conn, 2, "node-a", ttl=60, sent_at=time.monotonic())
    done = _cli("cluster", "status", "--database", database, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["shards"] == 3
    rows = [(r["shard"], r["owner"], r["epoch"]) for r in report["leases"]]
    assert rows == [(0, "node-a", 1), (1, None, 0), (2, "node-a", 2)]
    assert report["leases"][0]["held_for_s"] >= 0 and report["leases"][0]["expires_in_s"] > 0
    assert report["leases"][1]["held_for_s"] is None
    table = _cli("cluster", "status", "--database", database)
    assert table.returncode == 0
    assert "(free)" in table.stdout and "2 of 3 shards held by 1 node(s)" in table.stdout


def test_status_of_an_unreachable_or_non_cluster_database_exits_2(database: str) -> None:
    empty = _cli("cluster", "status", "--database", database)
    assert empty.returncode == 2 and "not a cluster database" in empty.stderr
    gone = _cli("cluster", "status", "--database", database.rsplit("/", 1)[0] + "/nope")
    assert gone.returncode == 2 and "cannot read the cluster database" in gone.stderr
