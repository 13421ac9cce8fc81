"""`OutboxTaskStore`: the SQLite TaskStore writing outbox rows, for tests of that path.

It writes an outbox row per accepted mutation and leaves the chaining to Audit's own commit
(two commits per batch) instead of chaining under a lease. Production SQLite stores chain;
the outbox path still runs there (and on PostgreSQL) at shutdown, so its
guarantees (a committed write is never answered failed, a dead store's writes are drained)
are tested on SQLite with this store.
"""

from __future__ import annotations

from task_ingress.actors.task_store import TaskStore


class OutboxTaskStore(TaskStore):
    """The production TaskStore, writing outbox rows for Audit instead of chaining."""

    chains = False
