"""The roster of a cluster's audit chains: which shards have a chain, and which one.

Shard chains used to start lazily, when a runtime first opened the shard, so a shard
whose records, head row and store rows were all deleted read as a shard nobody had written
(issue 13: never excuse a missing chain from what the database itself says). The roster is
written once, with the audit key, in one transaction: a genesis head row for EVERY shard
0..N-1 and one row holding every shard's chain id in shard order, MAC'd under the key. From
then on a shard with no head row, or a head row of another chain, is refused by
`open_shard_chain` and fails `audit verify --database`; forging a roster needs the key.

A roster is written on its own only where no shard has a head row yet (a new cluster).
Head rows without a roster mean either a database written before the roster existed or a
roster deleted by someone who can write the database: the two cannot be told apart from
inside it, so nothing re-writes the roster then (that would bless a shard emptied after
deleting it) and every runtime refuses its shard. The operator adopts the chains there
once, deliberately (runtime/cluster/adopt.py: only when everything else verifies), which
pins the chain ids of the head rows there and starts a genesis chain for each shard
without one. A shard emptied before adoption cannot be told from one never written:
docs/cluster.md says so.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

import psycopg
from task_ingress.actors.rules.chain import ChainKey, genesis_hash
from task_ingress.actors.storage.chainstart import ChainRefused
from task_ingress.actors.storage.pg_auditlog import ShardChain, read_head_row, write_head
from task_ingress.actors.storage.pg_schema import configured_shards

ROSTER_LOCK = 7316003
"""Advisory lock serializing roster writers (pg_leases uses 7316001, pg_schema 7316002)."""


@dataclass(frozen=True)
class Roster:
    """Every shard's chain id, shard i's at index i, and the MAC over them."""

    chain_ids: tuple[str, ...]
    at: float
    mac: str

    @property
    def shards(self) -> int:
        """How many shards the roster names."""
        return len(self.chain_ids)

    def verifies(self, key: ChainKey) -> bool:
        """True when the roster's MAC holds under `key`."""
        return secrets.compare_digest(key.roster_mac(list(self.chain_ids), self.at), self.mac)


def read_roster(conn: psycopg.Connection[Any]) -> Roster | None:
    """The roster, or None when there is none (or no roster table: an older schema)."""
    found = conn.execute("SELECT to_regclass('audit_roster')").fetchone()
    if found is None or found[0] is None:
        return None
    row = conn.execute("SELECT chain_ids, at, mac FROM audit_roster WHERE id = 1").fetchone()
    if row is None:
        return None
    return Roster(tuple(str(c) for c in row[0]), float(row[1]), str(row[2]))


def ensure_roster(conn: psycopg.Connection[Any], key: ChainKey, shards: int,
                  adopt: bool = False) -> Roster:
    """The roster, written (with a genesis head row for every shard) when there is none and
    no shard has a head row yet; with `adopt`, also when head rows exist (pinning their chain
    ids). Safe when several daemons start at once: writers take an advisory lock and
    re-read. Does not check an existing roster (its callers do, each its own way). Raises
    ChainRefused when head rows exist without a roster (and not `adopt`), or none of them
    verifies under `key`. Runs in its own transaction, or in the caller's (a savepoint)."""
    roster = read_roster(conn)
    if roster is not None:
        return roster
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (ROSTER_LOCK,))
        roster = read_roster(conn)
        if roster is not None:
            return roster
        heads = [read_head_row(conn, shard) for shard in range(shards)]
        present = [h for h in heads if h is not None]
        if present and not adopt:
            raise ChainRefused(
                f"{len(present)} shard(s) have audit chains but the cluster has no chain "
                "roster (deleted, or the database predates it): check it with `task-ingress "
                "audit verify --database URL`, then adopt its chains once: `task-ingress "
                "cluster adopt-roster --database URL`")
        if present and not any(h.verifies(key) for h in present):
            raise ChainRefused(f"none of the {len(present)} shard head rows verifies under "
                               "this audit key: not writing the chain roster with it (wrong "
                               "key?)")
        chain_ids: list[str] = []
        for shard, head in enumerate(heads):
            if head is None:
                chain_id = secrets.token_hex(16)
                write_head(conn, key, ShardChain(shard, chain_id, 0, genesis_hash(chain_id)))
                chain_ids.append(chain_id)
            else:
                chain_ids.append(head.chain_id)
        at = time.time()
        conn.execute("INSERT INTO audit_roster (id, chain_ids, at, mac) VALUES (1, %s, %s, %s)",
                     (chain_ids, at, key.roster_mac(chain_ids, at)))
        return Roster(tuple(chain_ids), at, key.roster_mac(chain_ids, at))


def rostered_chain_id(conn: psycopg.Connection[Any], key: ChainKey, shard: int) -> str:
    """The chain id the roster names for `shard` (the roster written first when there is
    none); ChainRefused when the roster does not verify under `key` or has no such shard."""
    shards = configured_shards(conn)
    if shards is None:
        raise ChainRefused("the database is not set up for cluster mode (no shard count)")
    roster = ensure_roster(conn, key, shards)
    if not roster.verifies(key):
        raise ChainRefused("the audit chain roster does not verify under this key (wrong "
                           "key, or forged); run `task-ingress audit verify --database URL`")
    if roster.shards != shards or not 0 <= shard < shards:
        raise ChainRefused(f"the audit chain roster names {roster.shards} shards, the cluster "
                           f"has {shards} (shard {shard}); run `task-ingress audit verify "
                           "--database URL`")
    return roster.chain_ids[shard]
