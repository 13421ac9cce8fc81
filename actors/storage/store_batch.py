"""One TaskStore batch as a unit of work: a few statements per batch, not several per request.

`StoreBatch.load` reads, in one query per table, everything the batch's requests can look
at (earlier accepted requests with their IDs, the tasks they name, the runs their
idempotency keys name); `judge` runs replay detection and rules 5-10 against that state
in memory and returns the `Change` an acceptance makes, without applying it; `apply`
merges a change into the state later requests of the batch see; `write` turns every
merged change into one `executemany` per table. All of it runs inside the caller's
transaction (BEGIN IMMEDIATE holds SQLite's write lock from `load` to COMMIT), so the
checks and the writes are still one atomic step.

`judge` never mutates: a request that raises, in it or between it and `apply`, leaves the
batch exactly as it was, so it fails alone without savepoints.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from task_ingress.actors.rules import gate, jsontext
from task_ingress.actors.storage.store_ops import RUN_COLUMNS, TASK_COLUMNS, new_id
from task_ingress.messages.limits import Limits
from task_ingress.messages.outcomes import Outcome
from task_ingress.messages.reasons import Action, Reason
from task_ingress.messages.requests import (
    AnyRequest,
    CancelTask,
    CreateTask,
    EnqueueRun,
    IngressContext,
    UpdateTask,
)

Key = tuple[str, str, str, str]
"""(workspace, channel, peer_id, request ID or idempotency key)."""

_REPLAY_ONE = ("SELECT action, task_id, run_id FROM accepted_requests WHERE workspace = ? "
               "AND channel = ? AND peer_id = ? AND request_id = ?")
_TASK_ONE = f"SELECT {TASK_COLUMNS} FROM tasks WHERE task_id = ?"
_RUN_ONE = ("SELECT run_id, task_id FROM runs WHERE workspace = ? AND channel = ? AND "
            "peer_id = ? AND idempotency_key = ?")

_metadata_text = jsontext.encoder((", ", ": "))
"""A task's stored metadata text: json.dumps's, without its per-call set-up (~1.2 us of a
create or update; rules/jsontext.py)."""

IN_CHUNK = 256
"""Most keys per `IN (...)` query (4 bound values each, far below SQLite's 32,766)."""


@dataclass(slots=True)
class TaskRow:
    """A task as the batch sees it (a `TASK_COLUMNS` row; metadata kept as stored JSON).
    Rules 9-10 judge it as it is (gate.TaskFacts)."""

    task_id: str
    workspace: str
    title: str
    description: str
    network_channel: str
    status: str
    priority: int | None
    metadata: str
    version: int
    locked: int
    cancel_reason: str
    created_at: float
    updated_at: float

    def values(self) -> tuple[Any, ...]:
        """The row in `TASK_COLUMNS` order."""
        return (self.task_id, self.workspace, self.title, self.description,
                self.network_channel, self.status, self.priority, self.metadata, self.version,
                self.locked, self.cancel_reason, self.created_at, self.updated_at)


@dataclass(frozen=True, slots=True)
class TaskPatch:
    """What an accepted update or cancel sets on a task; the version goes up by one."""

    task_id: str
    updated_at: float
    title: str | None = None
    description: str | None = None
    network_channel: str | None = None
    metadata: str | None = None
    cancel_reason: str | None = None
    """Set for a cancel: status becomes 'canceled'."""


@dataclass(frozen=True, slots=True)
class NewRun:
    """A run an accepted enqueue creates (unless its key has a run by the time it applies)."""

    run_id: str
    task_id: str
    workspace: str
    key: Key
    created_at: float


@dataclass(frozen=True, slots=True)
class Change:
    """What one accepted (not replayed) request writes: its accepted-request row, and the
    task, patch or run it makes."""

    context: IngressContext
    action: Action
    task_id: str
    run_id: str | None = None
    new_task: TaskRow | None = None
    patch: TaskPatch | None = None
    new_run: NewRun | None = None


@dataclass
class StoreBatch:
    """The state one batch's requests are judged against, and the rows it will write."""

    replays: dict[Key, tuple[str, str | None, str | None]]
    tasks: dict[str, TaskRow | None]
    runs: dict[Key, tuple[str, str] | None]
    next_outbox: int
    outbox_ok: bool = True
    """False (`load_one`): loaded without the outbox sequence; no outbox row may be added."""
    new_tasks: dict[str, TaskRow] = field(default_factory=dict)
    changed_tasks: dict[str, TaskRow] = field(default_factory=dict)
    new_runs: list[tuple[Any, ...]] = field(default_factory=list)
    accepted: list[tuple[Any, ...]] = field(default_factory=list)
    outbox: list[tuple[int, bytes]] = field(default_factory=list)

    @classmethod
    def load(cls, conn: sqlite3.Connection,
             items: Iterable[tuple[IngressContext, AnyRequest]],
             next_outbox: int | None = None) -> StoreBatch:
        """Read what these requests can look at: one query per table (per IN_CHUNK keys),
        and where the outbox's ids go on (`next_outbox`, when the caller knows it: the
        PostgreSQL store keeps its own counter per shard; else SQLite's AUTOINCREMENT
        sequence)."""
        replay_keys: dict[Key, None] = {}
        task_ids: dict[str, None] = {}
        run_keys: dict[Key, None] = {}
        for ctx, request in items:
            replay_keys[(ctx.workspace, ctx.channel, ctx.peer_id, ctx.request_id)] = None
            if not isinstance(request, CreateTask):
                task_ids[request.task_id.strip()] = None
            if isinstance(request, EnqueueRun):
                run_keys[_run_key(ctx, request)] = None
        replays: dict[Key, tuple[str, str | None, str | None]] = {}
        for row in _select_keys(conn, "SELECT workspace, channel, peer_id, request_id, action, "
                                "task_id, run_id FROM accepted_requests WHERE (workspace, "
                                "channel, peer_id, request_id) IN", list(replay_keys)):
            replays[row[:4]] = (row[4], row[5], row[6])
        tasks: dict[str, TaskRow | None] = dict.fromkeys(task_ids)
        for row in _select_ids(conn, f"SELECT {TASK_COLUMNS} FROM tasks WHERE task_id IN",
                               list(task_ids)):
            tasks[row[0]] = TaskRow(*row)
        runs: dict[Key, tuple[str, str] | None] = dict.fromkeys(run_keys)
        for row in _select_keys(conn, "SELECT workspace, channel, peer_id, idempotency_key, "
                                "run_id, task_id FROM runs WHERE (workspace, channel, peer_id, "
                                "idempotency_key) IN", list(run_keys)):
            runs[row[:4]] = (row[4], row[5])
        if next_outbox is None:
            seq = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'"
                               ).fetchone()
            next_outbox = int(seq[0]) + 1 if seq else 1
        return cls(replays=replays, tasks=tasks, runs=runs, next_outbox=next_outbox)

    @classmethod
    def load_one(cls, conn: sqlite3.Connection, ctx: IngressContext, request: AnyRequest
                 ) -> StoreBatch:
        """`load` for a batch of one that writes no outbox row, with one plain lookup per
        table (what `judge_and_apply` runs per request)."""
        rkey = (ctx.workspace, ctx.channel, ctx.peer_id, ctx.request_id)
        row = conn.execute(_REPLAY_ONE, rkey).fetchone()
        replays = {rkey: (row[0], row[1], row[2])} if row else {}
        tasks: dict[str, TaskRow | None] = {}
        runs: dict[Key, tuple[str, str] | None] = {}
        if not isinstance(request, CreateTask):
            task_id = request.task_id.strip()
            row = conn.execute(_TASK_ONE, (task_id,)).fetchone()
            tasks[task_id] = TaskRow(*row) if row else None
        if isinstance(request, EnqueueRun):
            key = _run_key(ctx, request)
            row = conn.execute(_RUN_ONE, key).fetchone()
            runs[key] = (row[0], row[1]) if row else None
        return cls(replays=replays, tasks=tasks, runs=runs, next_outbox=0, outbox_ok=False)

    # ---- judging (reads only) --------------------------------------------------------
    def judge(self, ctx: IngressContext, request: AnyRequest, limits: Limits, now: float
              ) -> tuple[Outcome, Change | None]:
        """Replay detection and rules 5-10 against the batch's state; the outcome, and the
        change an acceptance makes (None for a rejection or a replay). Applies nothing."""
        action = request.action
        replay = self.replays.get((ctx.workspace, ctx.channel, ctx.peer_id, ctx.request_id))
        if replay is not None:
            return Outcome(request_id=ctx.request_id, action=Action(replay[0]), accepted=True,
                           task_id=replay[1], run_id=replay[2], replay=True), None
        reason = gate.check_requested_channel(request, ctx.channel)
        change: Change | None = None
        if reason is None and isinstance(request, CreateTask):
            reason = gate.check_payload(request, limits)
            if reason is None:
                change = _create(ctx, request, now)
        elif reason is None:
            assert not isinstance(request, CreateTask)
            reason, task = self._judge_existing(ctx, request, limits)
            if reason is None and task is not None:
                change = self._mutation(ctx, request, task, now)
        if change is None:
            assert reason is not None, "a request without a change was rejected for a reason"
            return Outcome.rejected(ctx.request_id, action, reason), None
        return Outcome(request_id=ctx.request_id, action=action, accepted=True,
                       task_id=change.task_id, run_id=change.run_id), change

    def task(self, workspace: str, task_id: str) -> TaskRow | None:
        """The task with this ID in this workspace as the batch sees it; a task of another
        workspace is not found. Only IDs `load` was given (or created since) are known."""
        row = self.tasks.get(task_id)
        return row if row is not None and row.workspace == workspace else None

    def run_by_key(self, key: Key) -> tuple[str, str] | None:
        """(run_id, task_id) of the run this (workspace, channel, peer, key) names, if any."""
        return self.runs.get(key)

    def _judge_existing(self, ctx: IngressContext, request: UpdateTask | CancelTask | EnqueueRun,
                        limits: Limits) -> tuple[Reason | None, TaskRow | None]:
        task = self.task(ctx.workspace, request.task_id.strip())
        if task is None:
            return Reason.TASK_NOT_FOUND, None
        reason = (
            gate.check_binding(task.network_channel, ctx.channel, request)
            or gate.check_payload(request, limits)
            or gate.check_version(request, task)
            or self._check_idempotency_key(ctx, request, task)
            or gate.authorize(request, task)
        )
        return reason, task

    def _check_idempotency_key(self, ctx: IngressContext,
                               request: UpdateTask | CancelTask | EnqueueRun, task: TaskRow
                               ) -> Reason | None:
        if not isinstance(request, EnqueueRun):
            return None
        existing = self.run_by_key(_run_key(ctx, request))
        if existing is not None and existing[1] != task.task_id:
            return Reason.VALIDATION_FAILED
        return None

    def _mutation(self, ctx: IngressContext, request: UpdateTask | CancelTask | EnqueueRun,
                  task: TaskRow, now: float) -> Change:
        action = request.action
        if isinstance(request, UpdateTask):
            binding = None
            if request.network_channel is not None:
                binding = ctx.channel if request.network_channel.strip() else ""
            payload_meta = (json.loads(task.metadata) if request.metadata is None
                            else request.metadata)
            patch = TaskPatch(
                task_id=task.task_id, updated_at=now,
                title=task.title if request.title is None else request.title.strip(),
                description=(task.description if request.description is None
                             else request.description),
                network_channel=task.network_channel if binding is None else binding,
                metadata=_metadata_text(gate.trusted_metadata(payload_meta, ctx)),
            )
            return Change(context=ctx, action=action, task_id=task.task_id, patch=patch)
        if isinstance(request, CancelTask):
            cancel = None
            if task.status != "canceled":  # cancelling a canceled task changes nothing
                cancel = TaskPatch(task_id=task.task_id, updated_at=now,
                                   cancel_reason=request.reason)
            return Change(context=ctx, action=action, task_id=task.task_id, patch=cancel)
        key = _run_key(ctx, request)
        existing = self.run_by_key(key)
        if existing is not None:
            return Change(context=ctx, action=action, task_id=task.task_id, run_id=existing[0])
        run = NewRun(run_id=new_id("run"), task_id=task.task_id, workspace=ctx.workspace,
                     key=key, created_at=now)
        return Change(context=ctx, action=action, task_id=task.task_id, run_id=run.run_id,
                      new_run=run)

    # ---- applying (in memory, then one write per table) --------------------------------
    def apply(self, change: Change, outbox_record: bytes | None) -> int | None:
        """Merge an accepted request's change into the batch (later requests see it) and
        queue its rows, with its outbox record when given; returns the outbox row's id.

        Applies blindly, onto whatever the state is now: an update sets its fields and adds
        one to the version, a run whose key already has one is not created again, and a
        request ID already accepted gets no second row. None of that happens when each
        change is judged right before it is applied (production); the race tests' naive
        store applies changes judged against an older state, which is what they catch."""
        ctx = change.context
        run_id = change.run_id
        if change.new_task is not None:
            self.tasks[change.task_id] = self.new_tasks[change.task_id] = change.new_task
        if change.patch is not None:
            self._patch(change.patch)
        if change.new_run is not None:
            run = change.new_run
            existing = self.runs.get(run.key)
            if existing is None:
                self.runs[run.key] = (run.run_id, run.task_id)
                self.new_runs.append((run.run_id, run.task_id, run.workspace, run.key[3],
                                      ctx.peer_id, ctx.channel, run.created_at))
            else:
                run_id = existing[0]
        key = (ctx.workspace, ctx.channel, ctx.peer_id, ctx.request_id)
        if key not in self.replays:
            action = str(change.action)  # its code, as auditlog.audit_fields reads it
            self.replays[key] = (action, change.task_id, run_id)
            self.accepted.append((*key, action, change.task_id, run_id))
        if outbox_record is None:
            return None
        assert self.outbox_ok, "loaded with outbox=False"
        outbox_id = self.next_outbox
        self.next_outbox += 1
        self.outbox.append((outbox_id, outbox_record))
        return outbox_id

    def _patch(self, patch: TaskPatch) -> None:
        row = self.tasks.get(patch.task_id)
        assert row is not None, "a patch names a task the batch has"
        if patch.cancel_reason is not None:
            row.status, row.cancel_reason = "canceled", patch.cancel_reason
        if patch.title is not None:
            row.title = patch.title
        if patch.description is not None:
            row.description = patch.description
        if patch.network_channel is not None:
            row.network_channel = patch.network_channel
        if patch.metadata is not None:
            row.metadata = patch.metadata
        row.version += 1
        row.updated_at = patch.updated_at
        if patch.task_id not in self.new_tasks:
            self.changed_tasks[patch.task_id] = row

    def write(self, conn: sqlite3.Connection) -> None:
        """Every applied change as one `executemany` per table (inside the caller's
        transaction; a database error leaves the transaction to roll back)."""
        if self.new_tasks:
            conn.executemany(
                f"INSERT INTO tasks ({TASK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
                "?)", [row.values() for row in self.new_tasks.values()])
        if self.changed_tasks:
            conn.executemany(
                "UPDATE tasks SET title = ?, description = ?, network_channel = ?, status = ?, "
                "metadata = ?, version = ?, cancel_reason = ?, updated_at = ? WHERE task_id = ?",
                [(r.title, r.description, r.network_channel, r.status, r.metadata, r.version,
                  r.cancel_reason, r.updated_at, r.task_id) for r in self.changed_tasks.values()])
        if self.new_runs:
            conn.executemany(
                f"INSERT INTO runs ({RUN_COLUMNS}) VALUES (?, ?, ?, 'queued', ?, ?, ?, ?)",
                self.new_runs)
        if self.accepted:
            conn.executemany(
                "INSERT INTO accepted_requests (workspace, channel, peer_id, request_id, action, "
                "task_id, run_id) VALUES (?, ?, ?, ?, ?, ?, ?)", self.accepted)
        if self.outbox:
            # Explicit ids, the ones AUTOINCREMENT would give (the write lock is ours since
            # `load` read the sequence), so each verdict knows its row without a query.
            conn.executemany("INSERT INTO outbox (id, record) VALUES (?, ?)", self.outbox)


def judge_and_apply(conn: sqlite3.Connection, ctx: IngressContext, request: AnyRequest,
                    limits: Limits, now: float) -> Outcome:
    """One request as a batch of one: replay detection, rules 5-10, and its writes (no
    outbox row). Must be called inside a transaction. The benchmark's lock baseline
    judges with it, so both systems run the same store-side checks."""
    work = StoreBatch.load_one(conn, ctx, request)
    outcome, change = work.judge(ctx, request, limits, now)
    if change is not None:
        work.apply(change, None)
        work.write(conn)
    return outcome


def _run_key(ctx: IngressContext, request: EnqueueRun) -> Key:
    return (ctx.workspace, ctx.channel, ctx.peer_id, request.idempotency_key.strip())


def _create(ctx: IngressContext, request: CreateTask, now: float) -> Change:
    task_id = new_id("task")
    row = TaskRow(
        task_id=task_id, workspace=ctx.workspace, title=request.title.strip(),
        description=request.description,
        network_channel=ctx.channel if request.network_channel.strip() else "",
        status="open", priority=request.priority,
        metadata=_metadata_text(gate.trusted_metadata(request.metadata, ctx)), version=1, locked=0,
        cancel_reason="", created_at=now, updated_at=now,
    )
    return Change(context=ctx, action=request.action, task_id=task_id, new_task=row)


def _padded(values: Sequence[Any]) -> list[Any]:
    """The values, the last repeated up to a power of two: a handful of distinct statement
    texts, which sqlite3's statement cache keeps prepared."""
    size = 1
    while size < len(values):
        size *= 2
    return [*values, *[values[-1]] * (size - len(values))]


def _select_ids(conn: sqlite3.Connection, head: str, ids: list[str]) -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = []
    for start in range(0, len(ids), IN_CHUNK):
        chunk = _padded(ids[start:start + IN_CHUNK])
        marks = ", ".join("?" * len(chunk))
        rows += conn.execute(f"{head} ({marks})", chunk).fetchall()
    return rows


def _select_keys(conn: sqlite3.Connection, head: str, keys: list[Key]) -> list[tuple[Any, ...]]:
    """Rows whose 4-column key is one of `keys`. The `IN (SELECT ... FROM (VALUES ...))`
    form is the one SQLite answers from the key's index (a bare `IN (VALUES ...)` scans);
    the alias is for PostgreSQL 15, which wants one on every subquery in FROM."""
    rows: list[tuple[Any, ...]] = []
    for start in range(0, len(keys), IN_CHUNK):
        chunk = _padded(keys[start:start + IN_CHUNK])
        values = ", ".join(["(?, ?, ?, ?)"] * len(chunk))
        flat = [v for key in chunk for v in key]
        rows += conn.execute(f"{head} (SELECT column1, column2, column3, column4 FROM "
                             f"(VALUES {values}) AS v)", flat).fetchall()
    return rows
