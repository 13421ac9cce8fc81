"""What a cluster run left in PostgreSQL, for the failover tests: the stored request IDs,
every shard's audit chain checked link by link, and the fencing history checker."""

from __future__ import annotations

from pathlib import Path

import psycopg
from task_ingress.actors.rules.chain import ChainKey, genesis_hash
from task_ingress.actors.storage.pg_auditlog import read_head_row, shard_rows
from task_ingress.runtime.cluster.history import fencing_violations


def stored_request_ids(database: str) -> set[str]:
    """Request IDs of every accepted write the cluster stored."""
    with psycopg.connect(database, autocommit=True) as pg:
        return {r[0] for r in pg.execute("SELECT request_id FROM accepted_requests")}


def audit_chains_verify(database: str, workdir: Path) -> list[str]:
    """One line per shard chain that does not verify; empty when all do: the head row's MAC
    holds, seq counts 1, 2, ... from the chain's genesis, each record's prev_hash is the one
    before's hash and its hash is its HMAC under the cluster's audit key."""
    key = ChainKey.from_hex((workdir / "audit.key").read_text())
    problems = []
    with psycopg.connect(database, autocommit=True) as pg:
        shards = [int(r[0]) for r in pg.execute("SELECT shard FROM audit_chains ORDER BY 1")]
        for shard in shards:
            head = read_head_row(pg, shard)
            assert head is not None
            if not head.verifies(key):
                problems.append(f"shard {shard}: head row MAC fails")
            seq, prev = 0, genesis_hash(head.chain_id)
            for fields in shard_rows(pg, shard):
                seq += 1
                if (fields["seq"] != seq or fields["prev_hash"] != prev
                        or key.seal(fields) != fields["hash"]):
                    problems.append(f"shard {shard}: record {fields['seq']} breaks the chain")
                    break
                prev = fields["hash"]
            if (seq, prev) != (head.seq, head.hash):
                problems.append(f"shard {shard}: chain ends at {seq}, head row names {head.seq}")
    return problems


def fencing_problems(database: str, shards: int) -> list[str]:
    """The history checker over the whole store: nothing committed under a stale epoch."""
    with psycopg.connect(database, autocommit=True) as pg:
        return fencing_violations(pg, shards)
