"""Set a PostgreSQL database up for cluster mode, in one call a daemon makes at start.

Each part is idempotent and safe when several daemons start at once (each takes its own
advisory lock): the lease table with one row per shard (refusing another shard count), the
store and audit tables, the trust policy table, the greet marks (pg_greets.py: an existing
database gets them at its next daemon's start), and (given the audit key) the roster of the
shards' audit chains (actors/storage/pg_roster.py), so every shard's chain exists from the
first start on and a chain deleted whole is found.
"""

from __future__ import annotations

from typing import Any

import psycopg
from task_ingress.actors.rules.chain import ChainKey
from task_ingress.actors.storage.pg_roster import ensure_roster
from task_ingress.actors.storage.pg_schema import ensure_store_schema
from task_ingress.runtime.cluster import pg_leases
from task_ingress.runtime.cluster.pg_greets import ensure_greets_schema
from task_ingress.runtime.cluster.pg_trust import ensure_trust_schema


def ensure_cluster_database(conn: psycopg.Connection[Any], shards: int,
                            key: ChainKey | None = None) -> None:
    """Create what cluster mode needs, and with `key` the chain roster; raises
    `pg_leases.ShardCountMismatch` when the database was set up for another number of
    shards, ChainRefused when head rows exist and none verifies under `key`."""
    pg_leases.ensure_schema(conn, shards)
    ensure_store_schema(conn)
    ensure_trust_schema(conn)
    ensure_greets_schema(conn)
    if key is not None:
        ensure_roster(conn, key, shards)
