"""`FailSecondCommit`: a TaskStore whose second batch fails as a disk error would.

The failure comes after the batch's writes and before its COMMIT, inside the transaction,
so the production error path runs as for a real disk error: the batch is rolled back and
each of its requests is answered `task_ingress_failed` (tests/actors/test_reason_codes.py).
"""

from __future__ import annotations

import sqlite3

from task_ingress.actors.task_store import Applied, TaskStore
from task_ingress.messages.protocol import InFlight

FAILING_BATCH = 2
"""The batch (counted from 1 in this store's life) that fails."""


class InjectedCommitFailure(sqlite3.OperationalError):
    """Raised in place of a disk error."""


class FailSecondCommit(TaskStore):
    """The production TaskStore, whose second batch fails before its commit."""

    def __init__(self) -> None:
        super().__init__()
        self.batches = 0

    def apply_in_order(
        self, conn: sqlite3.Connection, batch: list[InFlight], now: float
    ) -> list[Applied]:
        """The real batch, then (once) a disk error before the caller commits it."""
        applied = super().apply_in_order(conn, batch, now)
        self.batches += 1
        if self.batches == FAILING_BATCH:
            raise InjectedCommitFailure("disk I/O error (injected)")
        return applied
