"""The store's tables as rows: columns, IDs, single-row reads and the operator lock.

The gate's store-side checks and the writes of a batch are in store_batch.py. Functions
take an open connection and never commit: the caller owns the transaction.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from typing import Any

from task_ingress.messages.outcomes import Run, Task

TASK_COLUMNS = (
    "task_id, workspace, title, description, network_channel, status, priority, metadata, "
    "version, locked, cancel_reason, created_at, updated_at"
)
RUN_COLUMNS = "run_id, task_id, workspace, status, idempotency_key, peer_id, channel, created_at"


def new_id(prefix: str) -> str:
    """An opaque, URL-safe, unique ID."""
    return f"{prefix}_{secrets.token_urlsafe(12)}"


def task_from_row(row: tuple[Any, ...]) -> Task:
    """Build a Task from a `TASK_COLUMNS` row."""
    return Task(
        task_id=row[0], workspace=row[1], title=row[2], description=row[3],
        network_channel=row[4], status=row[5], priority=row[6], metadata=json.loads(row[7]),
        version=row[8], locked=bool(row[9]), cancel_reason=row[10],
        created_at=row[11], updated_at=row[12],
    )


def run_from_row(row: tuple[Any, ...]) -> Run:
    """Build a Run from a `RUN_COLUMNS` row."""
    return Run(
        run_id=row[0], task_id=row[1], workspace=row[2], status=row[3],
        idempotency_key=row[4], peer_id=row[5], channel=row[6], created_at=row[7],
    )


def load_task(conn: sqlite3.Connection, workspace: str, task_id: str) -> Task | None:
    """The task with this ID in this workspace; a task of another workspace is not found."""
    row = conn.execute(
        f"SELECT {TASK_COLUMNS} FROM tasks WHERE task_id = ? AND workspace = ?",
        (task_id, workspace),
    ).fetchone()
    return task_from_row(row) if row else None


def load_run(conn: sqlite3.Connection, workspace: str, run_id: str) -> Run | None:
    """The run with this ID in this workspace."""
    row = conn.execute(
        f"SELECT {RUN_COLUMNS} FROM runs WHERE run_id = ? AND workspace = ?", (run_id, workspace)
    ).fetchone()
    return run_from_row(row) if row else None


def set_lock(conn: sqlite3.Connection, workspace: str, task_id: str, locked: bool) -> bool:
    """Operator lock against network writes; True when the task exists."""
    cur = conn.execute(
        "UPDATE tasks SET locked = ? WHERE task_id = ? AND workspace = ?",
        (int(locked), task_id, workspace),
    )
    return cur.rowcount == 1
