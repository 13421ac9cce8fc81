"""`task-ingress demo`: a scripted walkthrough of every outcome, one line each, then the
audit tail.

Every reason code of SPEC §6 and a replay, each reached the way it happens in production:
a card without `task.write`, a write from another channel, a binding left by an older
version (edited in SQLite), a store that refuses a write (a SQLite trigger makes the
commit fail, then is dropped), a peer flooding past its rate limit, and a runtime whose
task service is switched off. The demo checks each outcome and exits 1 if one differs.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sqlite3
import tempfile
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table
from task_ingress.messages import (
    CancelTask,
    CreateTask,
    EnqueueRun,
    IngressContext,
    Outcome,
    PeerCard,
    Reason,
    UpdateTask,
)
from task_ingress.messages.audit import AuditRecord
from task_ingress.runtime.config import RuntimeConfig
from task_ingress.runtime.facade import IngressRuntime

FLOOD_BURST = 20
"""The demo runtime's per-peer burst: the flooding peer's next request is `overloaded`."""
FLOOD_RATE = 0.5
"""Per-peer refill, requests/second: slow enough that a burst cannot refill mid-flood."""
TAIL = 8
REFUSE_TITLE = "refused by the store"


@dataclass
class Step:
    """One line of the demo: what was done and what came back."""

    what: str
    who: str
    outcome: Outcome
    expected: Reason | None
    """None: accepted is expected."""
    replay: bool = False

    @property
    def as_expected(self) -> bool:
        """The outcome is the one the step exists to show."""
        if self.expected is not None:
            return not self.outcome.accepted and self.outcome.reason == self.expected
        return self.outcome.accepted and self.outcome.replay == self.replay


class Demo:
    """Runs the steps against one runtime and collects them."""

    def __init__(self, rt: IngressRuntime, steps: list[Step]) -> None:
        self.rt = rt
        self.steps = steps
        self.n = len(steps)

    def submit(self, peer: str, channel: str, request: object, request_id: str = "") -> Outcome:
        """Submit `request` as `peer` in ws/`channel` with a fresh (or the given) ID."""
        self.n += 1
        ctx = IngressContext(workspace="ws", peer_id=peer, channel=channel,
                             request_id=request_id or f"demo-{self.n}")
        return self.rt.submit(ctx, request)

    def step(self, what: str, peer: str, channel: str, request: object,
             expected: Reason | None = None, *, request_id: str = "",
             replay: bool = False) -> Outcome:
        """Submit and record one line."""
        out = self.submit(peer, channel, request, request_id)
        self.steps.append(Step(what, f"{peer}/{channel}", out, expected, replay))
        return out


def _with_store(path: str, sql: str, *args: object) -> None:
    """One statement on the store file, as an operator's sqlite3 shell would run it."""
    conn = sqlite3.connect(path, timeout=30.0)
    try:
        conn.execute(sql, args)
        conn.commit()
    finally:
        conn.close()


def _walk(demo: Demo, store: str) -> None:
    rt = demo.rt
    rt.greet("ws", "ops", PeerCard(peer_id="peer-a", capabilities=["task.write"],
                                   proof="signed-by-a"))
    rt.greet("ws", "ops", PeerCard(peer_id="peer-b", capabilities=["task.read"]))
    rt.greet("ws", "dev", PeerCard(peer_id="peer-c", capabilities=["task.write"],
                                   proof="signed-by-c"))
    rt.greet("ws", "ops", PeerCard(peer_id="peer-f", capabilities=["task.write"],
                                   proof="signed-by-f"))
    first = demo.step("create a task bound to ops", "peer-a", "ops",
                      CreateTask(title="Ship it", network_channel="ops"))
    task = first.task_id or "task_missing"
    demo.step("update its title", "peer-a", "ops", UpdateTask(task_id=task, title="Ship it now"))
    demo.step("enqueue a run", "peer-a", "ops", EnqueueRun(task_id=task, idempotency_key="k-1"))
    demo.step("same request ID again", "peer-a", "ops",
              EnqueueRun(task_id=task, idempotency_key="k-1"),
              request_id=f"demo-{demo.n}", replay=True)
    demo.step("card without task.write", "peer-b", "ops", CreateTask(title="nope"),
              Reason.CAPABILITY_DENIED)
    demo.step("write from another channel", "peer-c", "dev",
              UpdateTask(task_id=task, title="hijack"), Reason.CHANNEL_MISMATCH)
    demo.step("peer that never greeted", "peer-z", "ops", CreateTask(title="who?"),
              Reason.PEER_NOT_FOUND)
    demo.step("empty title", "peer-a", "ops", CreateTask(title="  "), Reason.VALIDATION_FAILED)
    demo.step("request ID with a slash", "peer-a", "ops", CreateTask(title="x"),
              Reason.INVALID_REQUEST, request_id="bad/id")
    demo.step("update a missing task", "peer-a", "ops",
              UpdateTask(task_id="task_missing", title="x"), Reason.TASK_NOT_FOUND)
    _with_store(store, f"CREATE TRIGGER demo_refuse BEFORE INSERT ON tasks WHEN NEW.title = "
                       f"'{REFUSE_TITLE}' BEGIN SELECT RAISE(ABORT, 'disk full'); END")
    try:
        demo.step("the store fails the commit", "peer-a", "ops",
                  CreateTask(title=REFUSE_TITLE), Reason.TASK_INGRESS_FAILED)
    finally:
        _with_store(store, "DROP TRIGGER IF EXISTS demo_refuse")
    _flood(demo)
    demo.step("cancel the task", "peer-a", "ops", CancelTask(task_id=task, reason="done"))
    demo.step("update the cancelled task", "peer-a", "ops",
              UpdateTask(task_id=task, title="again"), Reason.PERMISSION_DENIED)
    _with_store(store, "UPDATE tasks SET network_channel = 'Old.Channel' WHERE task_id = ?",
                task)
    demo.step("legacy binding Old.Channel", "peer-a", "ops",
              UpdateTask(task_id=task, title="x"), Reason.STALE_CHANNEL)
    rt.leave("ws", "ops", "peer-a")
    demo.step("write after the peer left", "peer-a", "ops", CreateTask(title="too late"),
              Reason.PEER_NOT_FOUND)


def _flood(demo: Demo) -> None:
    """peer-f sends creates back to back until its token bucket is empty: one line."""
    accepted = 0
    out = None
    for i in range(3 * FLOOD_BURST):
        out = demo.submit("peer-f", "ops", CreateTask(title=f"flood {i}"))
        if not out.accepted:
            break
        accepted += 1
    assert out is not None
    demo.steps.append(Step(f"flood: create {accepted + 1} in a row", "peer-f/ops",
                           out, Reason.OVERLOADED))


def run_demo(store: str = ":memory:", console: Console | None = None) -> int:
    """Walk through every outcome, print one line each and the audit tail; 0 when every
    step got its expected outcome, 1 otherwise."""
    out = console or Console()
    workdir = tempfile.mkdtemp(prefix="task-ingress-demo-") if store == ":memory:" else None
    path = os.path.join(workdir, "demo.db") if workdir else store
    # A throwaway store gets a throwaway key; a kept one uses the operator's (env or key
    # file), as `audit verify` will.
    key = secrets.token_hex(32) if workdir else None
    steps: list[Step] = []
    try:
        config = RuntimeConfig(store_path=path, audit_key=key, peer_rate=FLOOD_RATE,
                               peer_burst=FLOOD_BURST)
        with IngressRuntime(config) as rt:
            _walk(Demo(rt, steps), path)
        off = RuntimeConfig(store_path=path, audit_key=key, tasks_enabled=False)
        with IngressRuntime(off) as rt:
            rt.greet("ws", "ops", PeerCard(peer_id="peer-a", capabilities=["task.write"],
                                           proof="signed-by-a"))
            demo = Demo(rt, steps)
            demo.n = len(rt.audit())
            demo.step("task service switched off", "peer-a", "ops",
                      CreateTask(title="later"), Reason.TASK_INGRESS_UNAVAILABLE)
            records = rt.audit()
        out.print(_steps_table(steps))
        out.print(_tail_table(records[-TAIL:], len(records)))
        if workdir:
            out.print("temp store removed; to keep it, pass --store FILE and check it "
                      "afterwards with\n  task-ingress audit verify --store FILE",
                      highlight=False)
        else:
            out.print(f"store: {store}; check it with\n  task-ingress audit verify --store "
                      f"{store}", highlight=False, soft_wrap=True)
    finally:
        if workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    wrong = [s for s in steps if not s.as_expected]
    for s in wrong:
        out.print(f"[red]demo: {s.what!r} got {_outcome_text(s)}, expected "
                  f"{s.expected or 'accepted'}", highlight=False)
    return 1 if wrong else 0


def _outcome_text(step: Step) -> str:
    o = step.outcome
    if o.accepted:
        return "accepted (replay)" if o.replay else "accepted"
    return str(o.reason)


def _steps_table(steps: list[Step]) -> Table:
    table = Table(title="task-ingress demo: every outcome", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("what happens")
    table.add_column("peer/channel", no_wrap=True)
    table.add_column("outcome", no_wrap=True)
    for i, s in enumerate(steps, 1):
        text = _outcome_text(s)
        style = "green" if s.outcome.accepted else "yellow"
        if not s.as_expected:
            style = "bold red"
        table.add_row(str(i), s.what, s.who, f"[{style}]{text}")
    return table


def _tail_table(records: list[AuditRecord], total: int) -> Table:
    table = Table(title=f"audit tail: the last {len(records)} of {total} records, "
                        "hash-chained", title_justify="left")
    for col in ("seq", "peer", "action", "outcome", "hash"):
        table.add_column(col, no_wrap=True, justify="right" if col == "seq" else "left")
    for rec in records:
        outcome = str(rec.reason) if rec.reason else rec.outcome
        table.add_row(str(rec.seq), rec.peer_id, str(rec.action), outcome, rec.hash[:12] + "…")
    return table
