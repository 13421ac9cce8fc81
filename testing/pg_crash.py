"""`PgExitAfterStoreCommit`: `ExitAfterStoreCommit` (testing/crash.py) on PostgreSQL.

Its own module because it imports psycopg (the `cluster` extra), which the rest of
task_ingress.testing must not need. Named by `PG_EXIT_AFTER_STORE_COMMIT` and
`PG_EXIT_AFTER_OUTBOX_COMMIT`.
"""

from __future__ import annotations

from task_ingress.actors.pg_task_store import PgTaskStore
from task_ingress.messages.protocol import InFlight, Verdict
from task_ingress.testing.crash import exit_if_marked


class PgExitAfterStoreCommit(PgTaskStore):
    """The PostgreSQL TaskStore, ending its process right after committing a marked write
    (its record chained with it under the lease in the fenced transaction; PgAudit never
    got the lease back)."""

    def _apply_batch(self, batch: list[InFlight]) -> list[Verdict]:
        verdicts = super()._apply_batch(batch)
        exit_if_marked(verdicts)
        return verdicts


class PgExitAfterOutboxCommit(PgExitAfterStoreCommit):
    """`PgExitAfterStoreCommit` as a store that writes outbox rows instead of chaining (its
    outbox row committed with the write; PgAudit never saw it)."""

    chains = False
