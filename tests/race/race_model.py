"""A small sequential model of SPEC §3-§5: what each call must answer, one call at a time.

Written from SPEC, not from the implementation: check order §4 (context, visibility,
capability, replay, requested channel, task found, binding, payload, version, idempotency
key, authorization), expiry `now - last_greet >= 2 x greet_interval`, replays of accepted
request IDs, idempotent run keys. Identifiers the store generates (task and run IDs) are
learned from the runtime's answers when a prediction says "new".
"""

from __future__ import annotations

from dataclasses import dataclass, field

from task_ingress.messages import (
    CancelTask,
    CreateTask,
    EnqueueRun,
    IngressContext,
    PeerCard,
    UpdateTask,
)
from task_ingress.messages.reasons import Action, Reason
from task_ingress.messages.requests import AnyRequest

PresenceKey = tuple[str, str, str]
RequestKey = tuple[str, str, str, str]

BAD_PEERS = frozenset({"Bad Peer", "-dash-first"})
BAD_REQUEST_IDS = frozenset({"a/b", ""})
BAD_CHANNELS = frozenset({"BAD!", "-x"})
BAD_WORKSPACES = frozenset({"bad.ws", "b/d"})  # SPEC 2: AGH's rule (any case, no dots...)
MAX_PRIORITY = 100


@dataclass
class MTask:
    """What the model knows about a stored task."""

    task_id: str
    workspace: str
    binding: str
    title: str
    status: str = "open"
    version: int = 1
    locked: bool = False


@dataclass(frozen=True)
class Prediction:
    """The model's answer to one submit."""

    accepted: bool
    reason: Reason | None
    action: Action
    replay: bool = False
    task_id: str | None = None
    run_id: str | None = None
    new_task: bool = False
    new_run: bool = False


def _grants(card: PeerCard) -> bool:
    return "task.write" in [c.strip() for c in card.capabilities] and card.proof.strip() != ""


@dataclass
class SpecModel:
    """Sequential SPEC: presence with expiry, cards, tasks, runs, accepted request IDs."""

    greet_interval: float
    local_peer_id: str
    now: float
    greets: dict[PresenceKey, tuple[float, bool]] = field(default_factory=dict)
    tasks: dict[str, MTask] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    accepted: dict[RequestKey, tuple[Action, str | None, str | None]] = field(
        default_factory=dict)
    runs: dict[tuple[str, str, str, str], tuple[str, str]] = field(default_factory=dict)

    # ---- presence and time ----------------------------------------------------------
    def greet(self, workspace: str, channel: str, card: PeerCard) -> None:
        """A greet refreshes visibility and replaces the card."""
        self.greets[(workspace, channel, card.peer_id)] = (self.now, _grants(card))

    def leave(self, workspace: str, channel: str, peer_id: str) -> None:
        """A leave ends visibility."""
        self.greets.pop((workspace, channel, peer_id), None)

    def visible(self, writers_only: bool = False) -> list[PresenceKey]:
        """Keys of peers visible now (sorted, so draws are reproducible)."""
        return sorted(k for k, (last, grants) in self.greets.items()
                      if self.now - last < 2 * self.greet_interval
                      and (grants or not writers_only))

    def advance(self, seconds: float) -> None:
        """Time passes."""
        self.now += seconds

    def lock(self, task_id: str) -> None:
        """Operator lock: network writes become permission_denied."""
        self.tasks[task_id].locked = True

    # ---- judging ----------------------------------------------------------------------
    def predict(self, ctx: IngressContext, request: AnyRequest) -> Prediction:
        """What SPEC says the runtime answers to this submit, now."""
        reason = self._before_replay(ctx)
        if reason is not None:
            return Prediction(accepted=False, reason=reason, action=request.action)
        key = (ctx.workspace, ctx.channel, ctx.peer_id, ctx.request_id)
        if key in self.accepted:
            action, task_id, run_id = self.accepted[key]
            return Prediction(accepted=True, reason=None, action=action, replay=True,
                              task_id=task_id, run_id=run_id)
        return self._judge(ctx, request)

    def _before_replay(self, ctx: IngressContext) -> Reason | None:
        if (ctx.peer_id in BAD_PEERS or ctx.request_id in BAD_REQUEST_IDS
                or ctx.channel in BAD_CHANNELS or ctx.workspace in BAD_WORKSPACES):
            return Reason.INVALID_REQUEST
        seen = self.greets.get((ctx.workspace, ctx.channel, ctx.peer_id))
        visible = (seen is not None and self.now - seen[0] < 2 * self.greet_interval
                   and ctx.peer_id != self.local_peer_id)
        if not visible:
            return Reason.PEER_NOT_FOUND
        assert seen is not None
        return None if seen[1] else Reason.CAPABILITY_DENIED

    def _judge(self, ctx: IngressContext, request: AnyRequest) -> Prediction:
        action = request.action

        def no(reason: Reason) -> Prediction:
            return Prediction(accepted=False, reason=reason, action=action)

        wanted = None if isinstance(request, CancelTask) else request.network_channel
        if wanted is not None and wanted.strip() not in ("", ctx.channel):
            return no(Reason.INVALID_REQUEST if wanted.strip() in BAD_CHANNELS
                      else Reason.CHANNEL_MISMATCH)
        if isinstance(request, CreateTask):
            bad = not request.title.strip() or (
                request.priority is not None and not 0 <= request.priority <= MAX_PRIORITY)
            if bad:
                return no(Reason.VALIDATION_FAILED)
            return Prediction(accepted=True, reason=None, action=action, new_task=True)
        task = self.tasks.get(request.task_id)
        if task is None or task.workspace != ctx.workspace:
            return no(Reason.TASK_NOT_FOUND)
        if task.binding not in ("", ctx.channel):
            return no(Reason.CHANNEL_MISMATCH)
        if self._payload_bad(request):
            return no(Reason.VALIDATION_FAILED)
        if (isinstance(request, UpdateTask) and request.expected_version is not None
                and request.expected_version != task.version):
            return no(Reason.VALIDATION_FAILED)
        run = None
        if isinstance(request, EnqueueRun):
            run = self.runs.get((ctx.workspace, ctx.channel, ctx.peer_id,
                                 request.idempotency_key))
            if run is not None and run[1] != task.task_id:
                return no(Reason.VALIDATION_FAILED)
        if task.locked or (task.status == "canceled"
                           and isinstance(request, UpdateTask | EnqueueRun)):
            return no(Reason.PERMISSION_DENIED)
        if isinstance(request, EnqueueRun):
            return Prediction(accepted=True, reason=None, action=action, task_id=task.task_id,
                              run_id=run[0] if run else None, new_run=run is None)
        return Prediction(accepted=True, reason=None, action=action, task_id=task.task_id)

    @staticmethod
    def _payload_bad(request: UpdateTask | CancelTask | EnqueueRun) -> bool:
        if isinstance(request, UpdateTask):
            return (request.title is not None and not request.title.strip()) or (
                request.expected_version is not None and request.expected_version < 1)
        if isinstance(request, EnqueueRun):
            return not request.idempotency_key.strip()
        return False

    # ---- applying -----------------------------------------------------------------------
    def commit(self, ctx: IngressContext, request: AnyRequest, pred: Prediction,
               task_id: str | None, run_id: str | None) -> None:
        """Apply an accepted prediction; `task_id`/`run_id` are the runtime's answer."""
        if not pred.accepted or pred.replay:
            return
        assert task_id is not None
        self.accepted[(ctx.workspace, ctx.channel, ctx.peer_id, ctx.request_id)] = (
            pred.action, task_id, run_id)
        if isinstance(request, CreateTask):
            binding = ctx.channel if request.network_channel.strip() else ""
            self.tasks[task_id] = MTask(task_id=task_id, workspace=ctx.workspace,
                                        binding=binding, title=request.title.strip())
            self.order.append(task_id)
            return
        task = self.tasks[task_id]
        if isinstance(request, UpdateTask):
            if request.title is not None:
                task.title = request.title.strip()
            if request.network_channel is not None:
                task.binding = ctx.channel if request.network_channel.strip() else ""
            task.version += 1
        elif isinstance(request, CancelTask):
            if task.status != "canceled":
                task.status, task.version = "canceled", task.version + 1
        elif pred.new_run:
            assert run_id is not None
            self.runs[(ctx.workspace, ctx.channel, ctx.peer_id, request.idempotency_key)] = (
                run_id, task_id)
