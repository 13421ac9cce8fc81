"""Adopting the audit chains of a cluster database that has no roster (written before the
roster existed, or its roster deleted): the operator's deliberate act, never automatic.

The roster is pinned only when the database verifies in every other respect under the key
(`audit verify --database` finds nothing but the missing roster), so adoption never blesses
a chain that was edited, cut or forged. What it cannot see is a shard emptied whole before
it runs (docs/cluster.md): compare with anchors kept outside the database first.
"""

from __future__ import annotations

from typing import Any

import psycopg
from task_ingress.actors.rules.chain import ChainKey
from task_ingress.actors.storage import pg_roster
from task_ingress.actors.storage.chainstart import ChainRefused
from task_ingress.actors.storage.pg_schema import configured_shards
from task_ingress.runtime.audit.anchor import Anchor
from task_ingress.runtime.audit.pg_verify import verify_database


def adopt_roster(conn: psycopg.Connection[Any], key: bytes,
                 anchors: tuple[Anchor, ...] = ()) -> pg_roster.Roster:
    """Write the roster from the head rows there (a genesis chain for each shard without
    one); the roster already there when there is one. ChainRefused, writing nothing, when
    the database does not verify apart from its missing roster (`anchors` checked too)."""
    existing = pg_roster.read_roster(conn)
    if existing is not None:
        return existing
    shards = configured_shards(conn)
    if shards is None:
        raise ChainRefused("the database is not set up for cluster mode (no shard count)")
    verdict = verify_database(conn, key, anchors)
    problems = [f"shard {v.shard}: {p}" for v in verdict.shards for p in v.problems
                if p.kind != "roster"] + [str(p) for p in verdict.problems]
    if problems:
        raise ChainRefused("not adopting the audit chains of a database that does not "
                           f"verify: {problems[0]}" + (f" (and {len(problems) - 1} more)"
                                                       if len(problems) > 1 else ""))
    return pg_roster.ensure_roster(conn, ChainKey(key), shards, adopt=True)
