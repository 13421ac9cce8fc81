"""Peer identity messages: the card a peer presents when it greets a channel."""

from __future__ import annotations

from pydantic import Field
from task_ingress.messages.base import Message


class PeerCard(Message):
    """A peer's self-description, carried by its greet; replaces any earlier card."""

    peer_id: str = Field(description="Peer ID the card belongs to.")
    display_name: str = Field(default="", description="Human-readable name; never trusted.")
    capabilities: list[str] = Field(default_factory=list, description="Claimed capability names.")
    proof: str = Field(default="", description="Proof backing the claims; empty grants nothing.")
