"""What a cluster run left in its store, for the failover tests — the one place that knows
where shard writes go (kept in step with runtime/cluster/serve.py's shard_runtime_config)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import psycopg
from task_ingress.runtime.audit.verify import verify_store
from task_ingress.runtime.cluster.history import fencing_violations


def _shard_files(workdir: Path) -> list[Path]:
    return sorted(workdir.glob("cluster.shard-*.db"))


def stored_request_ids(database: str, workdir: Path) -> set[str]:
    """Request IDs of every accepted write the cluster stored."""
    ids: set[str] = set()
    for path in _shard_files(workdir):
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            ids |= {r[0] for r in conn.execute("SELECT request_id FROM accepted_requests")}
        finally:
            conn.close()
    with psycopg.connect(database, autocommit=True) as pg:
        if pg.execute("SELECT to_regclass('accepted_requests') IS NOT NULL").fetchone()[0]:
            ids |= {r[0] for r in pg.execute("SELECT request_id FROM accepted_requests")}
    return ids


def audit_chains_verify(database: str, workdir: Path) -> list[str]:
    """One line per shard chain that does not verify; empty when all do."""
    problems = []
    for path in _shard_files(workdir):
        result = verify_store(str(path))
        if not result.ok:
            problems.append(f"{path.name}: {result.problems}")
    return problems


def fencing_problems(database: str, shards: int) -> list[str]:
    """The history checker over the PostgreSQL store (empty while writes go elsewhere)."""
    with psycopg.connect(database, autocommit=True) as pg:
        if not pg.execute("SELECT to_regclass('accepted_requests') IS NOT NULL").fetchone()[0]:
            return []
        return fencing_violations(pg, shards)
