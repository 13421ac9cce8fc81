"""Set a PostgreSQL database up for cluster mode, in one call a daemon makes at start.

Each part is idempotent and safe when several daemons start at once (each takes its own
advisory lock): the lease table with one row per shard (refusing another shard count), the
store and audit tables, and the trust policy table.
"""

from __future__ import annotations

from typing import Any

import psycopg
from task_ingress.actors.storage.pg_schema import ensure_store_schema
from task_ingress.runtime.cluster import pg_leases
from task_ingress.runtime.cluster.pg_trust import ensure_trust_schema


def ensure_cluster_database(conn: psycopg.Connection[Any], shards: int) -> None:
    """Create what cluster mode needs; `pg_leases.ShardCountMismatch` when the database
    was set up for another number of shards."""
    pg_leases.ensure_schema(conn, shards)
    ensure_store_schema(conn)
    ensure_trust_schema(conn)
