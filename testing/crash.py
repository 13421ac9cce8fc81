"""`ExitAfterStoreCommit`: a TaskStore that ends its process between the store's commit and
Audit's, for the crash test of the one-fsync-per-batch design (docs/durability.md).

A runtime started with `RuntimeConfig(store_actor_class=EXIT_AFTER_STORE_COMMIT)` behaves
like production until a batch holding an accepted request whose ID starts with
`CRASH_PREFIX` commits: then the process running the store calls `os._exit(CRASH_EXIT)`
before the batch's verdicts leave for Audit. On simpleSystemBase (and in the pipeline
process) that is the whole pipeline: nothing of that batch was answered, its writes are in
the store and their audit records only in the outbox.
"""

from __future__ import annotations

import os

from task_ingress.actors.task_store import TaskStore
from task_ingress.messages.protocol import InFlight, Verdict

CRASH_PREFIX = "crash-"
"""Request IDs that make the store's commit the last thing its process does."""
CRASH_EXIT = 86
"""Exit status of the process the seam ended."""


def exit_if_marked(verdicts: list[Verdict]) -> None:
    """End the process at once when the batch accepted a marked (`CRASH_PREFIX`) write."""
    if any(v.outcome.accepted and not v.outcome.replay
           and v.flight.context.request_id.startswith(CRASH_PREFIX) for v in verdicts):
        os._exit(CRASH_EXIT)  # no flush, no atexit: as abrupt as a kill


class ExitAfterStoreCommit(TaskStore):
    """The production TaskStore, ending its process right after committing a marked write."""

    def _apply_batch(self, batch: list[InFlight]) -> list[Verdict]:
        verdicts = super()._apply_batch(batch)
        exit_if_marked(verdicts)
        return verdicts
