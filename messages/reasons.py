"""The closed set of rejection reason codes (SPEC §6) and the action names (SPEC §5, plus
the presence changes a refusal is audited under)."""

from __future__ import annotations

from enum import StrEnum


class _Code(StrEnum):
    """A StrEnum that prints as its code everywhere, `repr` included, so a reason inside a
    list or tuple reads `'peer_not_found'` like the plain strings beside it."""

    def __repr__(self) -> str:
        return repr(self.value)


class Reason(_Code):
    """Why a request was rejected; exactly the codes SPEC §6 lists."""

    CHANNEL_MISMATCH = "channel_mismatch"
    STALE_CHANNEL = "stale_channel"
    CAPABILITY_DENIED = "capability_denied"
    PEER_NOT_FOUND = "peer_not_found"
    TASK_INGRESS_UNAVAILABLE = "task_ingress_unavailable"
    TASK_NOT_FOUND = "task_not_found"
    VALIDATION_FAILED = "validation_failed"
    PERMISSION_DENIED = "permission_denied"
    INVALID_REQUEST = "invalid_request"
    TASK_INGRESS_FAILED = "task_ingress_failed"
    OVERLOADED = "overloaded"


class Action(_Code):
    """Audit action names; `UNKNOWN` marks wire bytes whose kind could not be read."""

    CREATE = "task.create"
    UPDATE = "task.update"
    CANCEL = "task.cancel"
    ENQUEUE = "task.run.enqueue"
    GREET = "greet"
    """A greet the runtime refused (AGH's kind name); applied greets are not audited."""
    LEAVE = "leave"
    """A leave the runtime refused (malformed identifiers)."""
    UNKNOWN = "unknown"
