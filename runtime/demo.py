"""`task-ingress demo`: a scripted walkthrough that prints each outcome and the audit tail."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from task_ingress.messages import (
    CancelTask,
    CreateTask,
    EnqueueRun,
    IngressContext,
    PeerCard,
    UpdateTask,
)
from task_ingress.runtime.config import RuntimeConfig
from task_ingress.runtime.facade import IngressRuntime


def run_demo(store: str = ":memory:", console: Console | None = None) -> int:
    """Greet two peers, write through every action and rejection path, show the audit."""
    out = console or Console()
    table = Table(title="task-ingress demo: outcomes")
    for col in ("step", "peer", "channel", "action", "outcome", "reason / ids"):
        table.add_column(col)
    with IngressRuntime(RuntimeConfig(store_path=store)) as rt:
        rt.greet("ws", "ops", PeerCard(peer_id="peer-a", capabilities=["task.write"],
                                       proof="signed-by-a"))
        rt.greet("ws", "ops", PeerCard(peer_id="peer-b", capabilities=["task.read"]))
        rt.greet("ws", "dev", PeerCard(peer_id="peer-c", capabilities=["task.write"],
                                       proof="signed-by-c"))
        n = 0

        def step(label: str, peer: str, channel: str, request: object) -> str | None:
            nonlocal n
            n += 1
            ctx = IngressContext(workspace="ws", peer_id=peer, channel=channel,
                                 request_id=f"demo-{n}")
            o = rt.submit(ctx, request)
            detail = o.reason.value if o.reason else f"task={o.task_id} run={o.run_id or '-'}"
            table.add_row(label, peer, channel, o.action.value,
                          "[green]accepted" if o.accepted else "[red]rejected", detail)
            return o.task_id

        task = step("create bound to ops", "peer-a", "ops",
                    CreateTask(title="Ship it", network_channel="ops"))
        assert task is not None
        step("update title", "peer-a", "ops", UpdateTask(task_id=task, title="Ship it now"))
        step("enqueue a run", "peer-a", "ops", EnqueueRun(task_id=task, idempotency_key="k-1"))
        step("no task.write", "peer-b", "ops", CreateTask(title="nope"))
        step("other channel", "peer-c", "dev", UpdateTask(task_id=task, title="hijack"))
        step("unknown peer", "peer-z", "ops", CreateTask(title="who?"))
        step("empty title", "peer-a", "ops", CreateTask(title="  "))
        step("cancel", "peer-a", "ops", CancelTask(task_id=task, reason="done"))
        step("update cancelled", "peer-a", "ops", UpdateTask(task_id=task, title="again"))
        rt.leave("ws", "ops", "peer-a")
        step("after leave", "peer-a", "ops", CreateTask(title="too late"))
        out.print(table)
        tail = Table(title="audit tail (hash-chained)")
        for col in ("seq", "peer", "action", "outcome", "reason", "hash"):
            tail.add_column(col)
        for rec in rt.audit()[-10:]:
            tail.add_row(str(rec.seq), rec.peer_id, rec.action.value, rec.outcome,
                         rec.reason.value if rec.reason else "", rec.hash[:16] + "…")
        out.print(tail)
    return 0
