"""`task-ingress bench --cluster`: the cluster bench from the command line, bounded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg

from tests.cluster.pg_support import PostgresServer


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "task_ingress", "bench", "--cluster", *args],
                          capture_output=True, text=True, timeout=180,
                          env={k: v for k, v in os.environ.items()
                               if k != "TASK_INGRESS_DATABASE"})


def test_bench_cluster_measures_each_daemon_count_and_drops_its_databases(
    postgres: PostgresServer, tmp_path: Path,
) -> None:
    server = postgres.url("postgres")
    out = tmp_path / "cluster.json"
    done = _bench("--database", server, "--daemons", "1", "--seconds", "1", "--threads", "2",
                  "--json", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "1 daemon(s):" in done.stdout and "cannot show scale-out" in done.stdout
    [row] = json.loads(out.read_text())["results"]
    assert row["daemons"] == 1 and row["accepted"] > 0 and row["accepted_per_s"] > 0
    with psycopg.connect(server, autocommit=True) as conn:
        left = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'ti_bench_%'"
                            ).fetchall()
    assert left == []


def test_bench_cluster_usage_problems_exit_2_before_starting_anything(
    postgres: PostgresServer,
) -> None:
    server = postgres.url("postgres")
    for args, words in [((), "--database"),
                        (("--database", server, "--daemons", "0,2"), "--daemons"),
                        (("--database", server, "--daemons", "x"), "--daemons"),
                        (("--database", server, "--seconds", "1000"), "--seconds"),
                        (("--database", "postgresql://nobody@127.0.0.1:1/x"), "cannot connect")]:
        done = _bench(*args)
        assert done.returncode == 2 and words in done.stderr, (args, done.stderr)
