"""The msgpack wire envelope of SPEC §7, decoded under hard limits; decoding never raises.

Envelope: {"v": 1, "kind": <action>, "request_id": str, "body": {...request fields}}.
Reply:    {"v": 1, "request_id", "accepted", "reason", "task_id", "run_id"}.
Identity (peer, channel, workspace) is never read from the bytes: the transport supplies it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack
from pydantic import ValidationError
from task_ingress.messages.limits import SPEC_LIMITS
from task_ingress.messages.outcomes import Outcome
from task_ingress.messages.reasons import Action, Reason
from task_ingress.messages.requests import REQUEST_BY_ACTION, AnyRequest

WIRE_VERSION = 1
MAX_ENVELOPE_BYTES = SPEC_LIMITS.max_envelope_bytes
MAX_CONTAINER_LEN = 1024
ENVELOPE_KEYS = frozenset({"v", "kind", "request_id", "body"})


@dataclass(frozen=True)
class DecodedEnvelope:
    """What could be read from wire bytes; `rejection` is set when they cannot be judged."""

    action: Action
    request_id: str
    request: AnyRequest | None
    rejection: Reason | None
    size: int


def decode_envelope(data: object, max_bytes: int = MAX_ENVELOPE_BYTES) -> DecodedEnvelope:
    """Decode wire bytes into a request, or say why not. Never raises, whatever `data` is.

    Oversized bytes break a payload rule (`validation_failed`); anything that is not a map
    with a known `v`/`kind`, a string `request_id` and a well-typed map `body` with no
    unknown keys is `invalid_request`.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        return DecodedEnvelope(Action.UNKNOWN, "", None, Reason.INVALID_REQUEST, 0)
    raw = bytes(data)
    if len(raw) > max_bytes:
        return DecodedEnvelope(Action.UNKNOWN, "", None, Reason.VALIDATION_FAILED, len(raw))
    try:
        obj = msgpack.unpackb(
            raw, raw=False, strict_map_key=True, use_list=True,
            max_str_len=max_bytes, max_bin_len=max_bytes, max_ext_len=0,
            max_array_len=MAX_CONTAINER_LEN, max_map_len=MAX_CONTAINER_LEN,
        )
    except Exception:  # msgpack raises many types (ExtraData, ValueError, RecursionError...)
        return DecodedEnvelope(Action.UNKNOWN, "", None, Reason.INVALID_REQUEST, len(raw))
    return _interpret(obj, len(raw))


def _interpret(obj: Any, size: int) -> DecodedEnvelope:
    if not isinstance(obj, dict):
        return DecodedEnvelope(Action.UNKNOWN, "", None, Reason.INVALID_REQUEST, size)
    rid = obj.get("request_id")
    request_id = rid if isinstance(rid, str) else ""
    kind = obj.get("kind")
    action = Action(kind) if isinstance(kind, str) and kind in _KINDS else Action.UNKNOWN
    version = obj.get("v")
    body = obj.get("body")
    well_formed = (
        set(obj) == ENVELOPE_KEYS
        and type(version) is int
        and version == WIRE_VERSION
        and action is not Action.UNKNOWN
        and isinstance(rid, str)
        and isinstance(body, dict)
    )
    if not well_formed:
        return DecodedEnvelope(action, request_id, None, Reason.INVALID_REQUEST, size)
    try:
        request = REQUEST_BY_ACTION[action].model_validate(body)
    except (ValidationError, TypeError, ValueError, RecursionError):
        return DecodedEnvelope(action, request_id, None, Reason.INVALID_REQUEST, size)
    return DecodedEnvelope(action, request_id, request, None, size)


_KINDS = frozenset(a.value for a in REQUEST_BY_ACTION)  # task kinds only: never greet/leave


def encode_envelope(request: AnyRequest, request_id: str) -> bytes:
    """Encode a request as a wire envelope (what a peer sends)."""
    body = request.model_dump(exclude_none=True)
    return bytes(
        msgpack.packb(
            {"v": WIRE_VERSION, "kind": request.action.value, "request_id": request_id,
             "body": body},
            use_bin_type=True,
        )
    )


def encode_reply(outcome: Outcome) -> bytes:
    """Encode an outcome as the wire reply."""
    return bytes(
        msgpack.packb(
            {
                "v": WIRE_VERSION,
                "request_id": outcome.request_id,
                "accepted": outcome.accepted,
                "reason": outcome.reason.value if outcome.reason else None,
                "task_id": outcome.task_id,
                "run_id": outcome.run_id,
            },
            use_bin_type=True,
        )
    )


def decode_reply(data: bytes) -> dict[str, Any]:
    """Decode a wire reply (what a peer receives); raises on malformed bytes."""
    obj = msgpack.unpackb(data, raw=False)
    if not isinstance(obj, dict):
        raise ValueError("reply is not a map")
    return obj
