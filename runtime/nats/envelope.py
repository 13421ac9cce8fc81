"""AGH network v0 envelopes (`internal/network/envelope.go`, `validate.go`) and subjects.

A receiver tells the two wire forms apart by the first byte: JSON envelopes are UTF-8
objects and start with `{` (after optional whitespace); the compact form is a msgpack map
(first byte 0x80-0x8f, 0xde or 0xdf). Anything else is garbage (`invalid_request`).

Parsing never raises anything but `EnvelopeError`, which carries what could be read
(kind, id, from) so the rejection can be audited under the claimed names.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from task_ingress.actors.rules import gate
from task_ingress.messages.limits import SPEC_LIMITS

PROTOCOL = "agh-network/v0"
SUBJECT_PREFIX = "agh.network.v0"
KIND_GREET = "greet"
KIND_TASK_RESULT = "task.result"
KIND_GREET_RESULT = "greet.result"
TASK_KINDS = frozenset({"task.create", "task.update", "task.cancel", "task.run.enqueue"})
AGH_KINDS = frozenset({"greet", "whois", "say", "capability", "receipt", "trace"})
MAX_REPLAY_AGE = 300
"""Seconds: AGH's DefaultMaxReplayAge; older (or further in the future) `ts` is refused."""
MAX_ENVELOPE_BYTES = SPEC_LIMITS.max_envelope_bytes
_OPTIONAL_IDS = ("to", "reply_to", "trace_id", "causation_id", "work_id")


class EnvelopeError(Exception):
    """Bytes that are not a valid envelope; `kind`, `id` and `sender` hold what was readable.

    Raised for malformed JSON, a wrong protocol, bad grammar, stale `ts`, an expired
    `expires_at` or a malformed body. Not raised for a bad signature (see signing.py).
    """

    def __init__(self, detail: str, *, kind: str = "", id: str = "", sender: str = "",
                 workspace: str = "", channel: str = "") -> None:
        super().__init__(detail)
        self.detail = detail
        self.kind = kind
        self.id = id
        self.sender = sender
        self.workspace = workspace
        self.channel = channel


@dataclass(frozen=True)
class Envelope:
    """A structurally valid AGH v0 envelope; `raw` is the decoded object (signature input)."""

    raw: dict[str, Any]
    id: str
    workspace_id: str
    kind: str
    channel: str
    sender: str
    ts: int
    body: dict[str, Any]
    proof: dict[str, Any] | None
    to: str | None = None
    reply_to: str | None = None
    trace_id: str | None = None
    causation_id: str | None = None
    work_id: str | None = None
    expires_at: int | None = None
    size: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def route_token(peer_id: str) -> str:
    """AGH `RouteToken`: hex of the first 16 bytes of sha256(peer_id) (32 characters)."""
    peer = peer_id.strip()
    if not gate.is_peer_id(peer):
        raise ValueError(f"malformed peer id {peer_id!r}")
    return hashlib.sha256(peer.encode()).digest()[:16].hex()


def is_workspace_token(value: str) -> bool:
    """AGH `ValidateWorkspaceID` plus our grammar: usable as one NATS subject token."""
    return gate.is_channel(value)


def broadcast_subject(workspace: str, channel: str) -> str:
    """`agh.network.v0.<workspace>.<channel>.broadcast` (channel may be the `*` wildcard)."""
    return f"{SUBJECT_PREFIX}.{workspace}.{channel}.broadcast"


def peer_subject(workspace: str, channel: str, peer_id: str) -> str:
    """`agh.network.v0.<workspace>.<channel>.peer.<route_token(peer_id)>`."""
    return f"{SUBJECT_PREFIX}.{workspace}.{channel}.peer.{route_token(peer_id)}"


@dataclass(frozen=True)
class Subject:
    """A parsed envelope subject: where a message arrived."""

    workspace: str
    channel: str
    direct: bool


def parse_subject(subject: str) -> Subject | None:
    """Split a v0 subject; None when it is not one (never raises)."""
    parts = subject.split(".")
    if len(parts) < 6 or ".".join(parts[:3]) != SUBJECT_PREFIX:
        return None
    if len(parts) == 6 and parts[5] == "broadcast":
        return Subject(parts[3], parts[4], False)
    if len(parts) == 7 and parts[5] == "peer":
        return Subject(parts[3], parts[4], True)
    return None


def wire_form(data: bytes) -> str:
    """'json', 'msgpack' or 'unknown', judged by the first (non-blank) byte."""
    stripped = data.lstrip(b" \t\r\n")
    if stripped[:1] == b"{":
        return "json"
    if data and (0x80 <= data[0] <= 0x8F or data[0] in (0xDE, 0xDF)):
        return "msgpack"
    return "unknown"


def new_message_id() -> str:
    """A fresh envelope id in AGH's `msg_...` style."""
    return "msg_" + uuid.uuid4().hex


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name}")


def decode_json_object(data: bytes, max_bytes: int = MAX_ENVELOPE_BYTES) -> dict[str, Any]:
    """Strict JSON object decode: UTF-8, no NaN/Infinity, size-capped; EnvelopeError else."""
    if len(data) > max_bytes:
        raise EnvelopeError(f"envelope larger than {max_bytes} bytes")
    try:
        obj = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise EnvelopeError(f"not JSON: {type(exc).__name__}") from None
    if not isinstance(obj, dict):
        raise EnvelopeError("envelope is not a JSON object")
    return obj


def parse_envelope(data: bytes, *, now: float | None = None,
                   max_bytes: int = MAX_ENVELOPE_BYTES) -> Envelope:
    """Decode and validate one JSON envelope the way AGH's `ParseEnvelope` does.

    Identifiers are trimmed; `ts` must lie within MAX_REPLAY_AGE of `now` (unless
    `expires_at` is set and still in the future). Kind-specific bodies are checked by
    `greet_card` / the daemon, not here; any kind string is kept so the caller decides.
    """
    obj = decode_json_object(data, max_bytes)
    partial = _partial(obj)
    wall = time.time() if now is None else now

    def fail(detail: str) -> EnvelopeError:
        return EnvelopeError(detail, **partial)

    if _text(obj.get("protocol")) != PROTOCOL:
        raise fail("protocol must be agh-network/v0")
    env_id = _text(obj.get("id"))
    if not env_id:
        raise fail("id is required")
    workspace = _text(obj.get("workspace_id"))
    if not is_workspace_token(workspace):
        raise fail("workspace_id is malformed")
    kind = _text(obj.get("kind"))
    if not kind:
        raise fail("kind is required")
    channel = _text(obj.get("channel"))
    if not gate.is_channel(channel):
        raise fail("channel is malformed")
    sender = _text(obj.get("from"))
    if not gate.is_peer_id(sender):
        raise fail("from is malformed")
    optional: dict[str, str | None] = {}
    for key in _OPTIONAL_IDS:
        value = obj.get(key)
        if value is None:
            optional[key] = None
        elif isinstance(value, str) and value.strip():
            optional[key] = value.strip()
        else:
            raise fail(f"{key} must be a non-empty string when present")
    if optional["to"] is not None and not gate.is_peer_id(optional["to"]):
        raise fail("to is malformed")
    ts = obj.get("ts")
    if type(ts) is not int or ts <= 0:
        raise fail("ts is required")
    expires_at = obj.get("expires_at")
    if expires_at is not None and type(expires_at) is not int:
        raise fail("expires_at must be an integer")
    _check_freshness(ts, expires_at, wall, fail)
    body = obj.get("body")
    if not isinstance(body, dict):
        raise fail("body must be a JSON object")
    proof = obj.get("proof")
    if proof is not None and not isinstance(proof, dict):
        raise fail("proof must be an object or null")
    return Envelope(
        raw=obj, id=env_id, workspace_id=workspace, kind=kind, channel=channel, sender=sender,
        ts=ts, body=body, proof=proof, to=optional["to"], reply_to=optional["reply_to"],
        trace_id=optional["trace_id"], causation_id=optional["causation_id"],
        work_id=optional["work_id"], expires_at=expires_at, size=len(data),
    )


def _check_freshness(ts: int, expires_at: int | None, now: float, fail: Any) -> None:
    # AGH validateEnvelopeFreshness: too far in the future is refused whatever expires_at says.
    if ts - now > MAX_REPLAY_AGE:
        raise fail("ts is in the future beyond the replay window")
    if expires_at is not None:
        if expires_at <= math.floor(now):
            raise fail("envelope expired")
        return
    if now - ts > MAX_REPLAY_AGE:
        raise fail("ts is older than the replay window")


def _text(value: object) -> str:
    return value.strip() if isinstance(value, str) else ""


def _partial(obj: dict[str, Any]) -> dict[str, str]:
    return {
        "kind": _text(obj.get("kind")), "id": _text(obj.get("id")),
        "sender": _text(obj.get("from")), "workspace": _text(obj.get("workspace_id")),
        "channel": _text(obj.get("channel")),
    }


@dataclass(frozen=True)
class GreetCard:
    """What a greet body says about its sender (AGH `GreetBody.peer_card`)."""

    peer_id: str
    display_name: str
    capabilities: list[str]
    summary: str


def greet_card(env: Envelope) -> GreetCard:
    """Read a greet body; EnvelopeError when the card is malformed or not the sender's.

    AGH requires every list of the card to be present; we require `peer_id` and
    `capabilities` and accept the others' absence, since we never use them.
    """
    card = env.body.get("peer_card")
    fail = EnvelopeError  # same partial facts as the envelope
    partial = {"kind": env.kind, "id": env.id, "sender": env.sender,
               "workspace": env.workspace_id, "channel": env.channel}
    if not isinstance(card, dict):
        raise fail("greet body needs a peer_card object", **partial)
    peer_id = _text(card.get("peer_id"))
    if peer_id != env.sender:
        raise fail("greet peer_card.peer_id must match from", **partial)
    caps = card.get("capabilities")
    if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
        raise fail("peer_card.capabilities must be a list of strings", **partial)
    for key in ("profiles_supported", "artifacts_supported", "trust_modes_supported"):
        value = card.get(key)
        if value is not None and not isinstance(value, list):
            raise fail(f"peer_card.{key} must be a list", **partial)
    name = card.get("display_name")
    summary = env.body.get("summary")
    return GreetCard(
        peer_id=peer_id, display_name=name.strip() if isinstance(name, str) else "",
        capabilities=[c.strip() for c in caps if c.strip()],
        summary=summary if isinstance(summary, str) else "",
    )


def build_envelope(*, kind: str, workspace: str, channel: str, sender: str,
                   body: dict[str, Any], to: str | None = None, reply_to: str | None = None,
                   env_id: str | None = None, ts: int | None = None,
                   trace_id: str | None = None, causation_id: str | None = None,
                   ) -> dict[str, Any]:
    """An unsigned envelope object, keys as AGH's `Envelope` writes them (omitempty kept)."""
    obj: dict[str, Any] = {
        "protocol": PROTOCOL,
        "id": env_id or new_message_id(),
        "workspace_id": workspace,
        "kind": kind,
        "channel": channel,
        "from": sender,
    }
    for key, value in (("to", to), ("reply_to", reply_to), ("trace_id", trace_id),
                       ("causation_id", causation_id)):
        if value is not None:
            obj[key] = value
    obj["ts"] = int(time.time()) if ts is None else ts
    obj["body"] = body
    obj["proof"] = None
    return obj


def encode_json(obj: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON bytes of an envelope object."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
