"""What the runtime answers: an Outcome per request, and the stored Task and Run views."""

from __future__ import annotations

from pydantic import Field
from task_ingress.messages.base import Message
from task_ingress.messages.reasons import Action, Reason


class Outcome(Message):
    """The judgement of one request, returned to the peer after its audit record is durable."""

    request_id: str = Field(description="The request's ID as received (safe form).")
    action: Action = Field(description="Audit action name.")
    accepted: bool = Field(description="True when the write committed (or was replayed).")
    reason: Reason | None = Field(default=None, description="Set exactly when rejected.")
    task_id: str | None = Field(default=None, description="Resulting task, when accepted.")
    run_id: str | None = Field(default=None, description="Resulting run, for enqueues.")
    replay: bool = Field(default=False, description="True when an earlier outcome was replayed.")

    @classmethod
    def rejected(cls, request_id: str, action: Action, reason: Reason) -> Outcome:
        """The outcome of a request rejected for `reason`: nothing was applied."""
        return cls(request_id=request_id, action=action, accepted=False, reason=reason)

    @classmethod
    def failed(cls, request_id: str, action: Action) -> Outcome:
        """`task_ingress_failed`: the runtime failed on the request and applied nothing."""
        return cls.rejected(request_id, action, Reason.TASK_INGRESS_FAILED)


class Task(Message):
    """A stored task as the task domain sees it."""

    task_id: str
    workspace: str
    title: str
    description: str
    network_channel: str = Field(description="Bound channel, '' when unbound.")
    status: str = Field(description="'open' or 'canceled'.")
    priority: int | None
    metadata: dict[str, str]
    version: int = Field(description="Starts at 1; every accepted change adds 1.")
    locked: bool = Field(description="Operator lock: network writes are permission_denied.")
    cancel_reason: str
    created_at: float
    updated_at: float


class Run(Message):
    """A queued run of a task."""

    run_id: str
    task_id: str
    workspace: str
    status: str
    idempotency_key: str
    peer_id: str
    channel: str
    created_at: float
