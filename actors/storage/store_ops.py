"""SQL the TaskStore runs inside its transactions: store-side gate checks (rules 6-10),
idempotent replay, and the mutations. Functions take an open connection and never commit;
the caller owns the transaction so that check and write are one atomic step.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from typing import Any

from task_ingress.actors.rules import gate
from task_ingress.actors.rules.gate import StoredTask
from task_ingress.messages.limits import Limits
from task_ingress.messages.outcomes import Outcome, Run, Task
from task_ingress.messages.reasons import Action, Reason
from task_ingress.messages.requests import (
    AnyRequest,
    CancelTask,
    CreateTask,
    EnqueueRun,
    IngressContext,
    UpdateTask,
)

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


def find_replay(
    conn: sqlite3.Connection, ctx: IngressContext
) -> tuple[str, str | None, str | None] | None:
    """(action, task_id, run_id) of an earlier accepted request with this ID, if any."""
    row = conn.execute(
        "SELECT action, task_id, run_id FROM accepted_requests "
        "WHERE workspace = ? AND channel = ? AND peer_id = ? AND request_id = ?",
        (ctx.workspace, ctx.channel, ctx.peer_id, ctx.request_id),
    ).fetchone()
    return (row[0], row[1], row[2]) if row else None


def judge_and_apply(
    conn: sqlite3.Connection,
    ctx: IngressContext,
    request: AnyRequest,
    limits: Limits,
    now: float,
) -> Outcome:
    """Run replay detection and rules 5-10 against the store, then the mutation.

    Must be called inside a transaction: the reads and the write are one atomic step,
    which is what makes a channel's binding check race-free against other channels.
    """
    action = request.action
    replay = find_replay(conn, ctx)
    if replay is not None:
        return Outcome(
            request_id=ctx.request_id, action=Action(replay[0]), accepted=True,
            task_id=replay[1], run_id=replay[2], replay=True,
        )
    reason = gate.check_requested_channel(request, ctx.channel)
    if reason is None and isinstance(request, CreateTask):
        reason = gate.check_payload(request, limits)
        if reason is None:
            return _accepted(conn, ctx, action, _create(conn, ctx, request, now), None)
    elif reason is None:
        assert not isinstance(request, CreateTask)
        reason, task = _judge_existing(conn, ctx, request, limits)
        if reason is None and task is not None:
            task_id, run_id = _mutate(conn, ctx, request, task, now)
            return _accepted(conn, ctx, action, task_id, run_id)
    return Outcome(request_id=ctx.request_id, action=action, accepted=False, reason=reason)


def _judge_existing(
    conn: sqlite3.Connection,
    ctx: IngressContext,
    request: UpdateTask | CancelTask | EnqueueRun,
    limits: Limits,
) -> tuple[Reason | None, Task | None]:
    task = load_task(conn, ctx.workspace, request.task_id.strip())
    if task is None:
        return Reason.TASK_NOT_FOUND, None
    stored = StoredTask(
        workspace=task.workspace, network_channel=task.network_channel, status=task.status,
        version=task.version, locked=task.locked,
    )
    reason = (
        gate.check_binding(task.network_channel, ctx.channel, request)
        or gate.check_payload(request, limits)
        or gate.check_version(request, stored)
        or _check_idempotency_key(conn, ctx, request, task)
        or gate.authorize(request, stored)
    )
    return reason, task


def _check_idempotency_key(
    conn: sqlite3.Connection,
    ctx: IngressContext,
    request: UpdateTask | CancelTask | EnqueueRun,
    task: Task,
) -> Reason | None:
    if not isinstance(request, EnqueueRun):
        return None
    existing = _run_by_key(conn, ctx, request.idempotency_key.strip())
    if existing is not None and existing[1] != task.task_id:
        return Reason.VALIDATION_FAILED
    return None


def _run_by_key(conn: sqlite3.Connection, ctx: IngressContext, key: str) -> tuple[str, str] | None:
    row = conn.execute(
        "SELECT run_id, task_id FROM runs WHERE workspace = ? AND channel = ? AND peer_id = ? "
        "AND idempotency_key = ?",
        (ctx.workspace, ctx.channel, ctx.peer_id, key),
    ).fetchone()
    return (row[0], row[1]) if row else None


def _create(conn: sqlite3.Connection, ctx: IngressContext, request: CreateTask, now: float) -> str:
    task_id = new_id("task")
    binding = ctx.channel if request.network_channel.strip() else ""
    conn.execute(
        f"INSERT INTO tasks ({TASK_COLUMNS}) VALUES (?, ?, ?, ?, ?, 'open', ?, ?, 1, 0, '', ?, ?)",
        (
            task_id, ctx.workspace, request.title.strip(), request.description, binding,
            request.priority, json.dumps(gate.trusted_metadata(request.metadata, ctx)), now, now,
        ),
    )
    return task_id


def _mutate(
    conn: sqlite3.Connection,
    ctx: IngressContext,
    request: UpdateTask | CancelTask | EnqueueRun,
    task: Task,
    now: float,
) -> tuple[str, str | None]:
    if isinstance(request, UpdateTask):
        _update(conn, ctx, request, task, now)
        return task.task_id, None
    if isinstance(request, CancelTask):
        if task.status != "canceled":
            conn.execute(
                "UPDATE tasks SET status = 'canceled', cancel_reason = ?, version = version + 1, "
                "updated_at = ? WHERE task_id = ?",
                (request.reason, now, task.task_id),
            )
        return task.task_id, None
    key = request.idempotency_key.strip()
    existing = _run_by_key(conn, ctx, key)
    if existing is not None:
        return task.task_id, existing[0]
    run_id = new_id("run")
    conn.execute(
        f"INSERT INTO runs ({RUN_COLUMNS}) VALUES (?, ?, ?, 'queued', ?, ?, ?, ?)",
        (run_id, task.task_id, ctx.workspace, key, ctx.peer_id, ctx.channel, now),
    )
    return task.task_id, run_id


def _update(
    conn: sqlite3.Connection, ctx: IngressContext, request: UpdateTask, task: Task, now: float
) -> None:
    title = task.title if request.title is None else request.title.strip()
    description = task.description if request.description is None else request.description
    binding = task.network_channel
    if request.network_channel is not None:
        binding = ctx.channel if request.network_channel.strip() else ""
    payload_meta = task.metadata if request.metadata is None else request.metadata
    metadata = gate.trusted_metadata(payload_meta, ctx)
    conn.execute(
        "UPDATE tasks SET title = ?, description = ?, network_channel = ?, metadata = ?, "
        "version = version + 1, updated_at = ? WHERE task_id = ?",
        (title, description, binding, json.dumps(metadata), now, task.task_id),
    )


def _accepted(
    conn: sqlite3.Connection,
    ctx: IngressContext,
    action: Action,
    task_id: str,
    run_id: str | None,
) -> Outcome:
    conn.execute(
        "INSERT INTO accepted_requests (workspace, channel, peer_id, request_id, action, task_id, "
        "run_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (ctx.workspace, ctx.channel, ctx.peer_id, ctx.request_id, action.value, task_id, run_id),
    )
    return Outcome(
        request_id=ctx.request_id, action=action, accepted=True, task_id=task_id, run_id=run_id
    )
