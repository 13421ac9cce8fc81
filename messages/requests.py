"""Task requests a peer may submit (SPEC §5) and the ingress context they arrive with.

The models check types only; grammar, sizes and policy are the gate's job so that
every bad request becomes an audited rejection rather than an exception.
"""

from __future__ import annotations

from pydantic import Field
from task_ingress.messages.base import Message
from task_ingress.messages.reasons import Action


class IngressContext(Message):
    """Trusted delivery facts for one request: who sent it, where, under which ID."""

    workspace: str = Field(description="Workspace the request targets.")
    peer_id: str = Field(description="Peer the transport authenticated.")
    channel: str = Field(description="Channel the request arrived on.")
    request_id: str = Field(description="Peer-chosen ID, unique per (workspace, channel, peer).")
    work_id: str = Field(default="", description="Optional work correlation ID.")
    trace_id: str = Field(default="", description="Optional trace ID.")
    causation_id: str = Field(default="", description="Optional causation ID.")
    trust: str = Field(default="embedded", description=(
        "How the peer's identity was known: 'embedded' (this API), or on the network "
        "AGH RFC 004's 'verified', 'unverified' or 'rejected'."))


class CreateTask(Message):
    """Request to create a task, optionally bound to the ingress channel."""

    title: str = Field(description="1-256 characters after trimming.")
    description: str = Field(default="", description="At most 16 KiB of UTF-8.")
    network_channel: str = Field(default="", description="Bind to this channel (must be ours).")
    priority: int | None = Field(default=None, description="0-100 when given.")
    metadata: dict[str, str] | None = Field(default=None, description="Up to 32 string pairs.")

    @property
    def action(self) -> Action:
        """The audit action name of this request."""
        return Action.CREATE


class UpdateTask(Message):
    """Request to patch a task; `None` leaves a field alone, `network_channel=""` unbinds."""

    task_id: str = Field(description="Task to patch.")
    title: str | None = Field(default=None, description="New title.")
    description: str | None = Field(default=None, description="New description.")
    network_channel: str | None = Field(default=None, description="Re-bind ('' clears).")
    metadata: dict[str, str] | None = Field(default=None, description="Replaces metadata.")
    expected_version: int | None = Field(default=None, description="Optimistic concurrency.")

    @property
    def action(self) -> Action:
        """The audit action name of this request."""
        return Action.UPDATE


class CancelTask(Message):
    """Request to cancel a task; cancelling a cancelled task is accepted and a no-op."""

    task_id: str = Field(description="Task to cancel.")
    reason: str = Field(default="", description="Free-text reason, stored with the task.")

    @property
    def action(self) -> Action:
        """The audit action name of this request."""
        return Action.CANCEL


class EnqueueRun(Message):
    """Request to queue a run of a task, idempotent per (peer, channel, key)."""

    task_id: str = Field(description="Task to run.")
    idempotency_key: str = Field(description="Required; same key returns the same run.")
    network_channel: str = Field(default="", description="Must be empty or the ingress channel.")

    @property
    def action(self) -> Action:
        """The audit action name of this request."""
        return Action.ENQUEUE


AnyRequest = CreateTask | UpdateTask | CancelTask | EnqueueRun
"""Any of the four task requests (a union: also usable with `isinstance`)."""

REQUEST_BY_ACTION: dict[Action, type[AnyRequest]] = {
    Action.CREATE: CreateTask,
    Action.UPDATE: UpdateTask,
    Action.CANCEL: CancelTask,
    Action.ENQUEUE: EnqueueRun,
}
