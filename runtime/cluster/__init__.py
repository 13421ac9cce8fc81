"""Cluster mode: workspaces sharded over several daemons, one owner per shard by a
PostgreSQL lease with a fencing epoch (docs/cluster.md). Nothing here is imported by the
embedded runtime; the PostgreSQL parts need the `cluster` extra (psycopg 3)."""
