"""Test seams of the runtime, in the spirit of `trio.testing`: never imported by production.

Installed with the package because a multiprocess actor system creates actors from dotted
class names in its child processes, so they must import these classes. A runtime uses them
only when a test names them in `RuntimeConfig`:

- `RuntimeConfig(store_proxy_class=HOLD)`: a `Hold` actor between Capability and TaskStore
  stops requests right before the store until the test releases them (`HoldArm`,
  `HoldRelease`, `HoldQuery` -> `HoldState`).
- `RuntimeConfig(store_proxy_class=DELAY)`: a `Delay` actor keeps each batch 0.3 s before
  the store (tests/cluster: a paused daemon always has admitted, uncommitted writes).
- `RuntimeConfig(channel_actor_class=NAIVE_CHANNEL)`: channel actors without the fence.
- `RuntimeConfig(store_actor_class=NAIVE_STORE)`: a check-then-act TaskStore.
- `RuntimeConfig(store_actor_class=FAIL_SECOND_COMMIT)`: a TaskStore whose second batch
  fails as a disk error would, before its commit.
- `RuntimeConfig(store_actor_class=EXIT_AFTER_STORE_COMMIT)`: a TaskStore whose process
  exits right after its batch's commit, before Audit hears of it (tests/crash,
  docs/durability.md); `EXIT_AFTER_OUTBOX_COMMIT` the same for a store writing outbox rows,
  `PG_EXIT_AFTER_STORE_COMMIT` and `PG_EXIT_AFTER_OUTBOX_COMMIT` on PostgreSQL
  (tests/cluster).
- `RuntimeConfig(store_actor_class=OUTBOX_STORE)`: a TaskStore that writes outbox rows for
  Audit to chain instead of chaining under a lease (what every store does at shutdown);
  `PG_OUTBOX_STORE` the same on PostgreSQL.

tests/race uses them to show that its checks catch a missing protection (docs/race-freedom.md).
"""

from task_ingress.testing.crash import (
    CRASH_EXIT,
    CRASH_PREFIX,
    ExitAfterOutboxCommit,
    ExitAfterStoreCommit,
)
from task_ingress.testing.delay import Delay
from task_ingress.testing.failing import FailSecondCommit
from task_ingress.testing.hold import Hold
from task_ingress.testing.messages import HoldArm, HoldQuery, HoldRelease, HoldState
from task_ingress.testing.naive import NaiveChannelIngress, NaiveTaskStore
from task_ingress.testing.outbox import OutboxTaskStore

DELAY = "task_ingress.testing.Delay"
"""Dotted name of `Delay`, for `RuntimeConfig.store_proxy_class`."""
HOLD = "task_ingress.testing.Hold"
"""Dotted name of `Hold`, for `RuntimeConfig.store_proxy_class`."""
NAIVE_CHANNEL = "task_ingress.testing.NaiveChannelIngress"
"""Dotted name of `NaiveChannelIngress`, for `RuntimeConfig.channel_actor_class`."""
NAIVE_STORE = "task_ingress.testing.NaiveTaskStore"
"""Dotted name of `NaiveTaskStore`, for `RuntimeConfig.store_actor_class`."""
FAIL_SECOND_COMMIT = "task_ingress.testing.FailSecondCommit"
"""Dotted name of `FailSecondCommit`, for `RuntimeConfig.store_actor_class`."""
EXIT_AFTER_STORE_COMMIT = "task_ingress.testing.ExitAfterStoreCommit"
"""Dotted name of `ExitAfterStoreCommit`, for `RuntimeConfig.store_actor_class`."""
EXIT_AFTER_OUTBOX_COMMIT = "task_ingress.testing.ExitAfterOutboxCommit"
"""Dotted name of `ExitAfterOutboxCommit`, for `RuntimeConfig.store_actor_class`."""
OUTBOX_STORE = "task_ingress.testing.OutboxTaskStore"
"""Dotted name of `OutboxTaskStore`, for `RuntimeConfig.store_actor_class`."""
PG_EXIT_AFTER_STORE_COMMIT = "task_ingress.testing.pg_crash.PgExitAfterStoreCommit"
"""Dotted name of `PgExitAfterStoreCommit` (a runtime on PostgreSQL), for
`RuntimeConfig.store_actor_class`."""
PG_EXIT_AFTER_OUTBOX_COMMIT = "task_ingress.testing.pg_crash.PgExitAfterOutboxCommit"
"""Dotted name of `PgExitAfterOutboxCommit` (a runtime on PostgreSQL), for
`RuntimeConfig.store_actor_class`."""

PG_OUTBOX_STORE = "task_ingress.testing.pg_outbox.PgOutboxTaskStore"
"""Dotted name of `PgOutboxTaskStore` (a runtime on PostgreSQL), for
`RuntimeConfig.store_actor_class`."""

__all__ = ["CRASH_EXIT", "CRASH_PREFIX", "DELAY", "EXIT_AFTER_OUTBOX_COMMIT",
           "EXIT_AFTER_STORE_COMMIT", "FAIL_SECOND_COMMIT", "HOLD", "NAIVE_CHANNEL",
           "NAIVE_STORE", "OUTBOX_STORE", "PG_EXIT_AFTER_OUTBOX_COMMIT",
           "PG_EXIT_AFTER_STORE_COMMIT", "PG_OUTBOX_STORE", "Delay",
           "ExitAfterOutboxCommit", "ExitAfterStoreCommit", "FailSecondCommit", "Hold",
           "HoldArm", "HoldQuery", "HoldRelease", "HoldState", "NaiveChannelIngress",
           "NaiveTaskStore", "OutboxTaskStore"]
