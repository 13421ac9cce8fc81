"""The history checker: did any write commit under a holding that was no longer current?

Every accepted request in the cluster store records the shard and epoch it committed under,
and `seq` (commit order within a shard, since a shard's writes are serialized by its lease
row lock). Fencing held when, for every shard, epochs never go down in commit order (nothing
committed under an epoch after a later epoch's holder wrote), every epoch was granted (it is
in lease_history), and every workspace was written under its own shard.
"""

from __future__ import annotations

from typing import Any

import psycopg
from task_ingress.actors.rules.shards import shard_of


def fencing_violations(conn: psycopg.Connection[Any], shards: int) -> list[str]:
    """One line per violation found in the whole store; empty when fencing held."""
    granted = {(int(s), int(e)) for s, e in
               conn.execute("SELECT shard, epoch FROM lease_history").fetchall()}
    problems: list[str] = []
    last: dict[int, int] = {}
    rows = conn.execute(
        "SELECT shard, epoch, seq, workspace, request_id FROM accepted_requests "
        "ORDER BY shard, seq").fetchall()
    for shard, epoch, seq, workspace, request_id in rows:
        where = f"request {request_id} (shard {shard}, seq {seq})"
        if shard_of(workspace, shards) != shard:
            problems.append(f"{where}: workspace {workspace} is not in shard {shard}")
        if (shard, epoch) not in granted:
            problems.append(f"{where}: epoch {epoch} was never granted")
        if epoch < last.get(shard, 0):
            problems.append(f"{where}: committed under epoch {epoch} after epoch "
                            f"{last[shard]} had written")
        last[shard] = max(epoch, last.get(shard, 0))
    return problems
