"""The audit record (SPEC §6, field names fixed by SPEC §7)."""

from __future__ import annotations

from pydantic import Field
from task_ingress.messages.base import Message
from task_ingress.messages.reasons import Action, Reason

GENESIS_HASH = "0" * 64
CHECKPOINT_EVERY = 1000
"""Audit writes a checkpoint at least every this many records (`audit verify` expects it)."""
CHECKPOINT_SECONDS = 1.0
"""... and at least this often while records arrive."""


class AuditRecord(Message):
    """One committed outcome in the hash-chained audit log."""

    seq: int = Field(description="1-based position in commit order.")
    at: float = Field(description="Unix time the record was chained.")
    workspace: str
    channel: str
    peer_id: str
    actor: str = Field(description="Derived actor 'peer:<peer>/channel:<channel>'.")
    request_id: str
    action: Action
    outcome: str = Field(description="'accepted' or 'rejected'.")
    reason: Reason | None
    task_id: str | None
    run_id: str | None
    payload_size: int
    replay: bool = Field(default=False, description="An accepted request ID seen again.")
    trust: str | None = Field(default=None, description=(
        "How the identity was known: 'embedded', 'verified', 'unverified' or 'rejected' "
        "(AGH RFC 004 section 3.2); None only in records written before the field existed."))
    prev_hash: str
    hash: str
