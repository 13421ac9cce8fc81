"""Violation detectors for SPEC §8, fed by what a test observed and by the audit log.

- `FenceMonitor`: after a leave / expiry / capability drop of (P, C) has *returned*, no
  accepted write of P in C may commit until P is granted again. The audit sequence is
  commit order, so a revocation is marked with the audit high-water mark read right after
  it returned, and a re-grant with the mark read right before it was issued; any accepted
  record of (P, C) strictly inside that window committed after the revocation returned.
- `commit_order_violations`: replays the accepted requests in audit (= commit) order against
  a sequential model of the store-side rules (task exists in the workspace, binding, not
  canceled, expected version, one application per request ID). A non-atomic store shows up
  as an acceptance the sequential order could not have produced.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from task_ingress.messages import (
    AuditRecord,
    CancelTask,
    CreateTask,
    EnqueueRun,
    Task,
    UpdateTask,
)
from task_ingress.messages.reasons import Reason
from task_ingress.messages.requests import AnyRequest
from task_ingress.runtime import IngressRuntime

RequestKey = tuple[str, str, str, str]


def high_water(rt: IngressRuntime) -> int:
    """The last committed audit sequence number (0 when empty)."""
    records = rt.audit()
    return records[-1].seq if records else 0


@dataclass
class Window:
    """Audit seqs (after, until] during which P may not have writes accepted in C."""

    key: tuple[str, str, str]
    after: int
    until: int | None = None


@dataclass
class FenceMonitor:
    """Records revocations and re-grants of (workspace, channel, peer) as audit marks."""

    rt: IngressRuntime
    windows: list[Window] = field(default_factory=list)

    def revoked(self, workspace: str, channel: str, peer_id: str) -> None:
        """Call right after a leave / capability drop returned, or an expiry was observed."""
        key = (workspace, channel, peer_id)
        if not any(w.key == key and w.until is None for w in self.windows):
            self.windows.append(Window(key=key, after=high_water(self.rt)))

    def regranted(self, workspace: str, channel: str, peer_id: str) -> None:
        """Call right before issuing a greet that grants `task.write` again."""
        for w in self.windows:
            if w.key == (workspace, channel, peer_id) and w.until is None:
                w.until = high_water(self.rt)

    def violations(self, records: list[AuditRecord] | None = None) -> list[AuditRecord]:
        """Accepted records that committed after their peer's revocation had returned."""
        records = self.rt.audit() if records is None else records
        found = []
        for r in records:
            if r.outcome != "accepted":
                continue
            for w in self.windows:
                inside = r.seq > w.after and (w.until is None or r.seq <= w.until)
                if inside and (r.workspace, r.channel, r.peer_id) == w.key:
                    found.append(r)
        return found


@dataclass
class ModelTask:
    """The store-side facts the sequential model tracks per task."""

    workspace: str
    binding: str
    status: str = "open"
    version: int = 1


def commit_order_violations(
    records: list[AuditRecord], requests: dict[RequestKey, AnyRequest]
) -> tuple[list[str], dict[str, ModelTask]]:
    """Replay the audit in commit order; return (violations, the model's final tasks)."""
    tasks: dict[str, ModelTask] = {}
    first: dict[RequestKey, AuditRecord] = {}
    problems: list[str] = []
    for r in records:
        key = (r.workspace, r.channel, r.peer_id, r.request_id)
        request = requests.get(key)
        if request is None:
            continue
        if r.outcome != "accepted":
            problems += _unjustified_rejection(r, request, tasks)
            continue
        if r.replay or key in first:
            original = first.get(key)
            if not r.replay:
                problems.append(f"seq {r.seq}: request {r.request_id} applied a second time")
            elif original is None or (original.task_id, original.run_id) != (r.task_id,
                                                                              r.run_id):
                problems.append(f"seq {r.seq}: replay of {r.request_id} differs from original")
            continue
        first[key] = r
        problems += _apply(r, request, tasks)
    return problems, tasks


def _apply(r: AuditRecord, request: AnyRequest, tasks: dict[str, ModelTask]) -> list[str]:
    if isinstance(request, CreateTask):
        assert r.task_id is not None
        binding = r.channel if request.network_channel.strip() else ""
        tasks[r.task_id] = ModelTask(workspace=r.workspace, binding=binding)
        return []
    task = tasks.get(request.task_id)
    if task is None or task.workspace != r.workspace:
        return [f"seq {r.seq}: {r.request_id} accepted on a task the store did not hold"]
    if task.binding not in ("", r.channel):
        return [f"seq {r.seq}: {r.request_id} from {r.channel} mutated a task bound to "
                f"{task.binding}"]
    if task.status == "canceled" and isinstance(request, UpdateTask | EnqueueRun):
        return [f"seq {r.seq}: {r.request_id} changed a canceled task"]
    if isinstance(request, UpdateTask):
        if request.expected_version is not None and request.expected_version != task.version:
            return [f"seq {r.seq}: {r.request_id} accepted with a stale expected_version"]
        if request.network_channel is not None:
            task.binding = r.channel if request.network_channel.strip() else ""
        task.version += 1
    elif isinstance(request, CancelTask) and task.status != "canceled":
        task.status = "canceled"
        task.version += 1
    return []


def _unjustified_rejection(r: AuditRecord, request: AnyRequest,
                           tasks: dict[str, ModelTask]) -> list[str]:
    """A store-side rejection must be explained by the state the commit order left."""
    if isinstance(request, CreateTask):
        return []
    task = tasks.get(request.task_id)
    if task is None:
        return []
    if r.reason == Reason.CHANNEL_MISMATCH and task.binding in ("", r.channel):
        wanted = getattr(request, "network_channel", None)
        if wanted in (None, "", r.channel):
            return [f"seq {r.seq}: {r.request_id} rejected channel_mismatch, task unbound"]
    if (r.reason == Reason.PERMISSION_DENIED and task.status != "canceled"):
        return [f"seq {r.seq}: {r.request_id} rejected permission_denied on an open task"]
    return []


def state_mismatches(model: dict[str, ModelTask], stored: dict[str, Task | None]) -> list[str]:
    """Differences between the model's tasks and what the store holds."""
    out = []
    for task_id, want in model.items():
        got = stored.get(task_id)
        if got is None:
            out.append(f"{task_id}: missing from the store")
        elif (got.network_channel, got.status, got.version) != (want.binding, want.status,
                                                               want.version):
            out.append(f"{task_id}: store has {(got.network_channel, got.status, got.version)}"
                       f", commit order gives {(want.binding, want.status, want.version)}")
    return out
