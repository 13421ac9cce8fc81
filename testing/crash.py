"""`ExitAfterStoreCommit`: a TaskStore that ends its process right after its batch's commit,
before the verdicts leave for Audit, for the crash tests of docs/durability.md.

A runtime started with `RuntimeConfig(store_actor_class=EXIT_AFTER_STORE_COMMIT)` behaves
like production until a batch holding an accepted request whose ID starts with
`CRASH_PREFIX` commits: then the process running the store calls `os._exit(CRASH_EXIT)`
before the batch's verdicts leave for Audit. On simpleSystemBase (and in the pipeline
process) that is the whole pipeline: nothing of that batch was answered, and its writes are
in the store with their chained records (committed under Audit's lease).
`EXIT_AFTER_OUTBOX_COMMIT` does the same as a store that does not chain (every store's
way at shutdown): the records are then only in the outbox, for Audit's start-up drain.
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


class ExitAfterOutboxCommit(ExitAfterStoreCommit):
    """`ExitAfterStoreCommit` as a store that writes outbox rows instead of chaining."""

    chains = False
