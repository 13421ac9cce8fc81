"""Shared base for every message model: frozen, strict about types, closed to extra keys."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Message(BaseModel):
    """Base of all messages: immutable, no type coercion, unknown fields refused.

    Strictness matters on the wire path: a body whose `title` is an int must be an
    `invalid_request`, not silently turned into the string "5".
    """

    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")


class InternalMessage(BaseModel):
    """Base of the pydantic actor-protocol messages; may carry Thespian actor addresses.

    The ones built per request or per batch are plain classes instead (`messages/frozen.py`).
    """

    model_config = ConfigDict(
        frozen=True, strict=True, extra="forbid", arbitrary_types_allowed=True
    )
