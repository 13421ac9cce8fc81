"""`PgOutboxTaskStore`: the PostgreSQL TaskStore writing outbox rows instead of chaining
under a lease, for tests of that path (it still runs at every store's shutdown).

Its own module because it imports psycopg (the `cluster` extra), which the rest of
task_ingress.testing must not need. Named by `PG_OUTBOX_STORE`.
"""

from __future__ import annotations

from task_ingress.actors.pg_task_store import PgTaskStore


class PgOutboxTaskStore(PgTaskStore):
    """The production PgTaskStore, writing outbox rows for PgAudit instead of chaining."""

    chains = False
