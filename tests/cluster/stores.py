"""What a cluster run left in PostgreSQL, for the failover tests: the stored request IDs,
every shard's audit chain verified, and the fencing history checker."""

from __future__ import annotations

from pathlib import Path

import psycopg
from task_ingress.runtime.audit.pg_verify import verify_database
from task_ingress.runtime.cluster.history import fencing_violations


def stored_request_ids(database: str) -> set[str]:
    """Request IDs of every accepted write the cluster stored."""
    with psycopg.connect(database, autocommit=True) as pg:
        return {r[0] for r in pg.execute("SELECT request_id FROM accepted_requests")}


def audit_chains_verify(database: str, workdir: Path) -> list[str]:
    """One line per shard whose chain, head row or store does not verify (`audit verify
    --database`'s checks, with the cluster's audit key); empty when all do."""
    key = bytes.fromhex((workdir / "audit.key").read_text())
    with psycopg.connect(database, autocommit=True) as pg:
        verdict = verify_database(pg, key)
    assert verdict.shards, "no shard chain to verify"
    return ([f"shard {v.shard}: {v.first_problem}" for v in verdict.shards if not v.ok]
            + [str(p) for p in verdict.problems])


def fencing_problems(database: str, shards: int) -> list[str]:
    """The history checker over the whole store: nothing committed under a stale epoch."""
    with psycopg.connect(database, autocommit=True) as pg:
        return fencing_violations(pg, shards)

