"""AGH network envelopes: parsing by AGH's rules, building, subjects (v0 and v1).

The rules are AGH's `ParseEnvelope` (`compozy/agh` `internal/network/validate.go`, cited
as validate.go:LINE; `envelope.go` likewise) so that what this daemon accepts and, above
all, what it publishes is what AGH's own parser accepts. v1 (`agh-network/v1`, RFC 004)
keeps every v0 rule except the protocol string and the peer-ID form: a v1 `from`/`to` (and
card `peer_id`) may also be a verified handle `nickname@fingerprint`. Proofs are judged by
identity.py, not here.

Parsing never raises anything but `EnvelopeError`, which carries what could be read (kind,
id, from) so a rejection can be audited under the claimed names, and the AGH reason code.

Where AGH's parser is lax in a way a relay, a SIEM or this daemon could read differently
(issue 13), the daemon is stricter than AGH: a JSON object with a repeated key, nesting
deeper than MAX_DEPTH, identifiers padded with non-ASCII whitespace (Go's TrimSpace also
trims NBSP and friends) and an `expires_at` that would lift the `ts` window are refused.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

from task_ingress.actors.rules import gate
from task_ingress.messages.limits import SPEC_LIMITS

PROTOCOL_V0 = "agh-network/v0"  # envelope.go:12
PROTOCOL_V1 = "agh-network/v1"  # RFC 004 section 8 examples
PREFIX_V0 = "agh.network.v0"  # transport.go:24
PREFIX_V1 = "agh.network.v1"  # RFC 004 section 6.2
PREFIXES = {PROTOCOL_V0: PREFIX_V0, PROTOCOL_V1: PREFIX_V1}
KINDS = frozenset({"greet", "whois", "say", "capability", "receipt", "trace"})  # envelope.go:26
DISCOVERY_KINDS = frozenset({"greet", "whois"})  # validate.go:348
RECEIPT_STATUSES = frozenset(  # envelope.go:76
    {"accepted", "rejected", "duplicate", "expired", "unsupported", "canceled"})
REASON_CODES = frozenset({  # envelope.go:135
    "malformed", "expired", "duplicate", "unsupported_kind", "unsupported_profile",
    "verification_failed", "not_target", "not_found", "busy", "internal", "invalid_surface",
    "conversation_not_found", "work_closed", "work_container_mismatch",
    "legacy_field_rejected"})
WORK_STATES = frozenset(  # envelope.go:173
    {"submitted", "working", "needs_input", "completed", "failed", "canceled"})
MAX_REPLAY_AGE = 300
"""Seconds: AGH's DefaultMaxReplayAge (validate.go:61); `expires_at` may only shorten it."""
MAX_DEPTH = 32
"""Deepest nesting of JSON objects and arrays the daemon decodes (the envelope is depth 1):
AGH's own envelopes need 5, and nothing deeper reaches canonicalization or validation."""
ASCII_WHITESPACE = " \t\n\r\x0b\x0c"
MAX_ENVELOPE_BYTES = SPEC_LIMITS.max_envelope_bytes
"""SPEC 2's wire limit for what the daemon reads (AGH's own cap is 1 MiB)."""
AGH_MAX_ENVELOPE_BYTES = 1 << 20  # capability_catalog.go:16
TASK_WRITE = "task.write"  # tasks.go:20

V0_PEER_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}")  # validate.go:54
THREAD_ID_RE = re.compile(r"thread_[a-z0-9][a-z0-9_-]{2,95}")  # validate.go:55
DIRECT_ID_RE = re.compile(r"direct_[a-f0-9]{32}")  # validate.go:56
_ID_FIELDS = ("to", "work_id", "reply_to", "trace_id", "causation_id")


class EnvelopeError(Exception):
    """Bytes that are not a valid envelope; `kind`, `id`, `sender` hold what was readable.

    `code` is the AGH reason code a receipt would carry (router.go:1294: expired,
    unsupported_kind, verification_failed, else malformed). Not raised for a bad proof
    (identity.py judges proofs).
    """

    def __init__(self, detail: str, *, code: str = "malformed", kind: str = "",
                 id: str = "", sender: str = "", workspace: str = "", channel: str = "",
                 protocol: str = "") -> None:
        super().__init__(detail)
        self.detail = detail
        self.code = code
        self.kind = kind
        self.id = id
        self.sender = sender
        self.workspace = workspace
        self.channel = channel
        self.protocol = protocol


@dataclass(frozen=True)
class Envelope:
    """A valid envelope, normalized as AGH's normalizeEnvelopeCopy (validate.go:387) does.

    `raw` is the decoded JSON object exactly as received: the proof is verified over it,
    never over the normalized fields (RFC 004 section 4.6: no default injection).
    """

    raw: dict[str, Any]
    protocol: str
    id: str
    workspace_id: str
    kind: str
    channel: str
    sender: str
    ts: int
    body: dict[str, Any]
    proof: dict[str, Any] | None
    ext: dict[str, Any]
    surface: str | None = None
    thread_id: str | None = None
    direct_id: str | None = None
    to: str | None = None
    work_id: str | None = None
    reply_to: str | None = None
    trace_id: str | None = None
    causation_id: str | None = None
    expires_at: int | None = None
    size: int = 0


# ---- identifiers and subjects ------------------------------------------------------
def ascii_strip(value: str) -> str:
    """`value` without surrounding ASCII whitespace (never NBSP or other Unicode spaces: a
    padded identifier must not read as another peer's)."""
    return value.strip(ASCII_WHITESPACE)


def is_v0_peer_id(value: str) -> bool:
    """AGH's ValidatePeerID (validate.go:135)."""
    return V0_PEER_RE.fullmatch(value) is not None


def is_peer_for(protocol: str, value: str) -> bool:
    """v0: AGH's peer grammar; v1: that or a verified handle (RFC 004 section 4.4)."""
    if protocol == PROTOCOL_V1:
        return gate.is_peer_id(value)
    return is_v0_peer_id(value)


def is_handle(value: str) -> bool:
    """True for a verified handle `nickname@fingerprint`."""
    return gate.HANDLE_RE.fullmatch(value) is not None


def route_token(peer_id: str) -> str:
    """v0 route token (validate.go:362): hex of the first 16 bytes of sha256(peer_id)."""
    peer = ascii_strip(peer_id)
    if not is_v0_peer_id(peer):
        raise ValueError(f"malformed v0 peer id {peer_id!r}")
    return hashlib.sha256(peer.encode()).digest()[:16].hex()


def v1_route_token(handle: str) -> str:
    """v1 route token of a verified handle: its fingerprint (RFC 004 section 6.1)."""
    if not is_handle(handle):
        raise ValueError(f"not a verified handle {handle!r}")
    return handle.rsplit("@", 1)[1]


def broadcast_subject(workspace: str, channel: str, protocol: str = PROTOCOL_V0) -> str:
    """`<prefix>.<workspace>.<channel>.broadcast` (transport.go:362); channel may be `*`."""
    return f"{PREFIXES[protocol]}.{workspace}.{channel}.broadcast"


def peer_subject(workspace: str, channel: str, peer_id: str,
                 protocol: str = PROTOCOL_V0) -> str:
    """The peer-targeted subject (transport.go:375); on v1 a handle's token is its
    fingerprint (RFC 004 section 6.1), a plain peer's the v0 derivation."""
    token = v1_route_token(peer_id) if is_handle(peer_id) else route_token(peer_id)
    return f"{PREFIXES[protocol]}.{workspace}.{channel}.peer.{token}"


def direct_id(workspace: str, channel: str, peer_a: str, peer_b: str) -> str:
    """AGH's DirectRoomIdentity (validate.go:218): the pair's deterministic room id."""
    a, b = sorted((ascii_strip(peer_a), ascii_strip(peer_b)))
    if a == b:
        raise ValueError("direct room peers must differ")
    material = "\x00".join(("agh-network/direct-room/v0", ascii_strip(workspace),
                            ascii_strip(channel), a, b))
    return "direct_" + hashlib.sha256(material.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Subject:
    """A parsed envelope subject: where a message arrived."""

    protocol: str
    workspace: str
    channel: str
    direct: bool


def parse_subject(subject: str) -> Subject | None:
    """Split a v0/v1 subject; None when it is not one (never raises)."""
    parts = subject.split(".")
    prefix = ".".join(parts[:3])
    protocol = {PREFIX_V0: PROTOCOL_V0, PREFIX_V1: PROTOCOL_V1}.get(prefix)
    if protocol is None:
        return None
    if len(parts) == 6 and parts[5] == "broadcast":
        return Subject(protocol, parts[3], parts[4], False)
    if len(parts) == 7 and parts[5] == "peer":
        return Subject(protocol, parts[3], parts[4], True)
    return None


def wire_form(data: bytes) -> str:
    """'json', 'msgpack' (the compact form) or 'unknown', by the first (non-blank) byte."""
    stripped = data.lstrip(b" \t\r\n")
    if stripped[:1] == b"{":
        return "json"
    if data and (0x80 <= data[0] <= 0x8F or data[0] in (0xDE, 0xDF)):
        return "msgpack"
    return "unknown"


def new_message_id() -> str:
    """A fresh envelope id in AGH's `msg_...` style."""
    return "msg_" + uuid.uuid4().hex


# ---- raw-secret rule (validate.go:618-725, diagnostics/redact.go:116) ----------------
_SENSITIVE = ("api[_-]?key|access[_-]?token|refresh[_-]?token|mcp[_-]?auth[_-]?token|"
              "claim[_-]?token|lease[_-]?token|bot[_-]?token|oauth[_-]?code|"
              "authorization[_-]?code|oauth[_-]?client[_-]?secret|client[_-]?secret|"
              "webhook[_-]?secret|code[_-]?verifier|pkce[_-]?verifier|secret[_-]?binding|"
              "token|secret|password|authorization")  # redact.go:18
_FLAGS = re.IGNORECASE | re.ASCII
_AUTH_HEADER = re.compile(r"\b((?:proxy[-_])?authorization)\b(\s*[=:]\s*)([^\r\n,;]+)", _FLAGS)
_BEARER = re.compile(r"\bBearer\s+[A-Za-z0-9._~+/=-]+", _FLAGS)
_CLAIM = re.compile(r"agh_claim_[A-Za-z0-9_-]+")  # task/lease.go:43 (covers redact.go:43)
_QUOTED = re.compile(r"([\"'])(" + _SENSITIVE + r")([\"'])(\s*:\s*)([\"'])(?:\\.|[^\\])*?([\"'])",
                     _FLAGS)
_ASSIGN = re.compile(r"\b(" + _SENSITIVE + r")\b(\s*[=:]\s*)(\"[^\"]*\"|'[^']*'|[^\s,;]+)",
                     _FLAGS)
_RAW_SECRET_KEYS = frozenset({  # validate.go:705
    "apikey", "accesstoken", "refreshtoken", "mcpauthtoken", "oauthcode", "authorizationcode",
    "codeverifier", "pkceverifier", "secretbinding", "clientsecret", "authorization",
    "password", "secret", "token", "claimtoken"})
_REDACTED = ("[REDACTED]", "__AGH_REDACTED")


def text_looks_secret(text: str) -> bool:
    """True when AGH's redactors would change `text` (validate.go:678)."""
    if not text.strip():
        return False
    if _BEARER.search(text) or _CLAIM.search(text):
        return True
    for pattern in (_AUTH_HEADER, _ASSIGN):
        for match in pattern.finditer(text):
            if not any(mark in match.group(3) for mark in _REDACTED):
                return True
    return any(m.group(0) != m.group(1) + m.group(2) + m.group(3) + m.group(4) + m.group(5)
               + "[REDACTED]" + m.group(6) for m in _QUOTED.finditer(text))


def _key_carries_secret(key: str) -> bool:
    normalized = key.strip().lower().replace("_", "").replace("-", "").replace(".", "")
    return bool(normalized) and "hash" not in normalized and normalized in _RAW_SECRET_KEYS


def value_has_secret(key: str, value: Any, depth: int = 0) -> bool:
    """AGH's envelopeValueContainsSecret (validate.go:649), depth-capped."""
    if depth > 64:
        return True
    non_empty = (value.strip() != "" if isinstance(value, str)
                 else value is not None and value != [] and value != {})
    if text_looks_secret(key) or (_key_carries_secret(key) and non_empty):
        return True
    if isinstance(value, str):
        return text_looks_secret(value)
    if isinstance(value, list):
        return any(value_has_secret("", item, depth + 1) for item in value)
    if isinstance(value, dict):
        return any(value_has_secret(k, v, depth + 1) for k, v in value.items())
    return False


# ---- parsing -----------------------------------------------------------------------
def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name}")


class DuplicateKey(ValueError):
    """A JSON object names one key twice (readers disagree on which one counts)."""


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise DuplicateKey("repeated key")
    return obj


def nesting_depth(value: Any, limit: int) -> int:
    """Depth of nested objects and arrays in `value` (a scalar is 0), counted without
    recursion; stops counting at `limit` + 1."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return depth
            deepest = max(deepest, depth)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children
                         if isinstance(child, dict | list))
    return deepest


def decode_json_object(data: bytes, max_bytes: int = MAX_ENVELOPE_BYTES,
                       max_depth: int = MAX_DEPTH) -> dict[str, Any]:
    """Strict JSON object decode: UTF-8, no NaN/Infinity, no repeated key, at most
    `max_depth` levels, size-capped; EnvelopeError else."""
    if len(data) > max_bytes:
        raise EnvelopeError(f"envelope larger than {max_bytes} bytes")
    try:
        obj = json.loads(data.decode("utf-8"), parse_constant=_reject_constant,
                         object_pairs_hook=_unique_pairs)
    except DuplicateKey:
        raise EnvelopeError("a JSON object repeats a key") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise EnvelopeError(f"not JSON: {type(exc).__name__}") from None
    if not isinstance(obj, dict):
        raise EnvelopeError("envelope is not a JSON object")
    if nesting_depth(obj, max_depth) > max_depth:
        raise EnvelopeError(f"nested deeper than {max_depth} levels")
    return obj


def _text(value: object) -> str:
    return ascii_strip(value) if isinstance(value, str) else ""


def _optional_id(obj: dict[str, Any], key: str, fail: Any) -> str | None:
    # normalizeOptionalIdentifier (validate.go:1017): absent, null or blank -> absent.
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise fail(f"{key} must be a string")
    return ascii_strip(value) or None


def parse_envelope(data: bytes, *, now: float | None = None,
                   max_bytes: int = MAX_ENVELOPE_BYTES,
                   protocols: frozenset[str] = frozenset(PREFIXES)) -> Envelope:
    """Decode and validate one JSON envelope the way AGH's ParseEnvelope does."""
    obj = decode_json_object(data, max_bytes)
    return validate_object(obj, now=now, size=len(data), protocols=protocols)


def validate_object(obj: dict[str, Any], *, now: float | None = None, size: int = 0,
                    protocols: frozenset[str] = frozenset(PREFIXES)) -> Envelope:
    """AGH's NormalizeEnvelope (validate.go:83) over a decoded object."""
    partial = {"kind": _text(obj.get("kind")), "id": _text(obj.get("id")),
               "sender": _text(obj.get("from")), "workspace": _text(obj.get("workspace_id")),
               "channel": _text(obj.get("channel")), "protocol": _text(obj.get("protocol"))}

    def fail(detail: str, code: str = "malformed") -> EnvelopeError:
        return EnvelopeError(detail, code=code, **partial)

    if "interaction_id" in obj:  # validate.go:732
        raise fail("legacy field interaction_id", "legacy_field_rejected")
    for key in ("protocol", "id", "workspace_id", "kind", "channel", "from"):
        if key in obj and obj[key] is not None and not isinstance(obj[key], str):
            raise fail(f"{key} must be a string")
    # Header: validate.go:411
    protocol = partial["protocol"]
    if protocol not in protocols:
        raise fail(f"protocol must be one of {sorted(protocols)}")
    env_id = partial["id"]
    if not env_id:
        raise fail("id is required")
    workspace = partial["workspace"]
    if not gate.is_workspace(workspace):
        raise fail("workspace_id is malformed")
    kind = partial["kind"]
    if kind not in KINDS:
        raise fail(f"unsupported kind {kind[:40]!r}", "unsupported_kind")
    channel = partial["channel"]
    if not gate.is_channel(channel):
        raise fail("channel is malformed")
    # Participants: validate.go:433
    sender = partial["sender"]
    if not is_peer_for(protocol, sender):
        raise fail("from is malformed")
    ids = {key: _optional_id(obj, key, fail) for key in _ID_FIELDS}
    if ids["to"] is not None and not is_peer_for(protocol, ids["to"]):
        raise fail("to is malformed")
    # References: validate.go:448
    ts = obj.get("ts")
    if type(ts) is not int or ts <= 0:
        raise fail("ts is required")
    expires_at = obj.get("expires_at")
    if expires_at is not None and type(expires_at) is not int:
        raise fail("expires_at must be an integer")
    surface = _optional_id(obj, "surface", fail)  # validate.go:1006
    thread = _optional_id(obj, "thread_id", fail)
    direct = _optional_id(obj, "direct_id", fail)
    _check_conversation(kind, surface, thread, direct, ids["work_id"], fail)
    # Body, proof, ext: validate.go:471
    body = obj.get("body")
    if not isinstance(body, dict):
        raise fail("body must be a JSON object")
    proof = obj.get("proof")
    if proof is not None and not isinstance(proof, dict):
        raise fail("proof must be an object or null")
    ext = obj.get("ext")
    if ext is not None and not isinstance(ext, dict):
        raise fail("ext must be an object")
    _check_body(kind, body, sender, ids["reply_to"], proof, fail)
    if (value_has_secret("", body) or any(value_has_secret("", v) for v in (proof or {}).values())
            or any(value_has_secret("", v) for v in (ext or {}).values())):
        raise fail("raw secret material in body, proof or ext")  # validate.go:618
    wall = time.time() if now is None else now
    _check_freshness(ts, expires_at, int(wall), fail)
    return Envelope(
        raw=obj, protocol=protocol, id=env_id, workspace_id=workspace, kind=kind,
        channel=channel, sender=sender, ts=ts, body=body, proof=proof, ext=ext or {},
        surface=surface, thread_id=thread, direct_id=direct, to=ids["to"],
        work_id=ids["work_id"], reply_to=ids["reply_to"], trace_id=ids["trace_id"],
        causation_id=ids["causation_id"], expires_at=expires_at, size=size)


def _check_conversation(kind: str, surface: str | None, thread: str | None,
                        direct: str | None, work: str | None, fail: Any) -> None:
    """ValidateEnvelopeConversation (validate.go:271)."""
    if work is not None and not gate.is_request_id(work):  # validate.go:158
        raise fail("work_id is malformed")
    if kind in DISCOVERY_KINDS:  # validate.go:332
        if surface is not None or thread is not None or direct is not None or work is not None:
            raise fail(f"{kind} must not carry surface, thread_id, direct_id or work_id",
                       "invalid_surface")
        return
    if surface is None:  # validate.go:305
        raise fail("surface is required", "invalid_surface")
    if surface == "thread":  # envelope.go:280
        if thread is None or THREAD_ID_RE.fullmatch(thread) is None or direct is not None:
            raise fail("surface thread needs a valid thread_id and no direct_id",
                       "invalid_surface")
    elif surface == "direct":
        if direct is None or DIRECT_ID_RE.fullmatch(direct) is None or thread is not None:
            raise fail("surface direct needs a valid direct_id and no thread_id",
                       "invalid_surface")
    else:
        raise fail("unknown surface", "invalid_surface")
    if kind in ("capability", "receipt", "trace") and work is None:  # validate.go:286
        raise fail(f"{kind} needs work_id")


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def check_card(card: object, protocol: str, fail: Any) -> dict[str, Any]:
    """normalizeAndValidatePeerCard (validate.go:745); the card as given."""
    if not isinstance(card, dict):
        raise fail("peer_card must be an object")
    if not isinstance(card.get("peer_id"), str) or not is_peer_for(
            protocol, ascii_strip(card["peer_id"])):
        raise fail("peer_card.peer_id is malformed")
    name = card.get("display_name")
    if name is not None and not isinstance(name, str):
        raise fail("peer_card.display_name must be a string")
    for key in ("profiles_supported", "capabilities", "artifacts_supported",
                "trust_modes_supported"):
        if not _strings(card.get(key)):
            raise fail(f"peer_card.{key} is required (a list of strings)")
    if card.get("ext") is not None and not isinstance(card.get("ext"), dict):
        raise fail("peer_card.ext must be an object")
    return card


def card_capabilities(card: dict[str, Any]) -> list[str]:
    """The card's capabilities trimmed, blanks dropped (normalizeStringList, 1048)."""
    return [ascii_strip(c) for c in card.get("capabilities", []) if ascii_strip(c)]


def _check_privileged(card: dict[str, Any], proof: dict[str, Any] | None, fail: Any) -> None:
    # validate.go:604: a card claiming task.write must come with a non-empty proof.
    if TASK_WRITE in card_capabilities(card) and not proof:
        raise fail("peer_card capability task.write requires proof", "verification_failed")


def _check_body(kind: str, body: dict[str, Any], sender: str, reply_to: str | None,
                proof: dict[str, Any] | None, fail: Any) -> None:
    """Kind bodies (validate.go:487-581, 738-898); the capability digest is not checked."""
    # A card's peer_id must equal `from`, already checked for the envelope's protocol.
    card: dict[str, Any]
    if kind == "greet":
        card = check_card(body.get("peer_card"), PROTOCOL_V1, fail)
        if ascii_strip(card["peer_id"]) != sender:
            raise fail("greet peer_card.peer_id must match from")
        if body.get("summary") is not None and not isinstance(body.get("summary"), str):
            raise fail("greet summary must be a string")
        _check_privileged(card, proof, fail)
    elif kind == "whois":
        whois_type = _text(body.get("type"))
        if whois_type == "request":
            if body.get("peer_card") is not None:
                raise fail("whois request must not include peer_card")
            if body.get("query") is not None and not isinstance(body.get("query"), str):
                raise fail("whois query must be a string")
        elif whois_type == "response":
            checked = check_card(body.get("peer_card"), PROTOCOL_V1, fail)
            if reply_to is None:
                raise fail("whois response needs reply_to")
            if ascii_strip(checked["peer_id"]) != sender:
                raise fail("whois response peer_card.peer_id must match from")
            _check_privileged(checked, proof, fail)
        else:
            raise fail("whois type must be request or response")
    elif kind == "say":
        if not isinstance(body.get("text"), str) or not body["text"].strip():
            raise fail("say text is required")
        if body.get("intent") is not None and not isinstance(body.get("intent"), str):
            raise fail("say intent must be a string")
        if body.get("artifacts") is not None and not isinstance(body.get("artifacts"), list):
            raise fail("say artifacts must be a list")
    elif kind == "receipt":
        _check_receipt(body, fail)
    elif kind == "trace":
        if _text(body.get("state")) not in WORK_STATES:
            raise fail("trace state is not a work state")
    elif kind == "capability" and not isinstance(body.get("capability"), dict):
        raise fail("capability body must wrap a capability object")


def _check_receipt(body: dict[str, Any], fail: Any) -> None:
    """normalizeAndValidateReceiptBody (validate.go:858)."""
    if not isinstance(body.get("for_id"), str) or not body["for_id"].strip():
        raise fail("receipt for_id is required")
    status = _text(body.get("status"))
    if status not in RECEIPT_STATUSES:
        raise fail("receipt status is not registered")
    code = body.get("reason_code")
    if code is not None and (not isinstance(code, str) or ascii_strip(code) not in REASON_CODES):
        raise fail("receipt reason_code is not registered")
    detail = body.get("detail")
    if detail is not None and not isinstance(detail, str):
        raise fail("receipt detail must be a string")
    if status == "accepted" and code is not None:
        raise fail("accepted receipt must not include reason_code")
    if status in ("rejected", "duplicate", "expired", "unsupported") and code is None:
        raise fail(f"receipt status {status} requires reason_code")


def _check_freshness(ts: int, expires_at: int | None, now: int, fail: Any) -> None:
    # validate.go:583: too far in the future is refused whatever expires_at says. AGH lets
    # a future expires_at replace the age check; here it may only shorten the window, so a
    # captured envelope is never fresh for longer than MAX_REPLAY_AGE.
    if ts - now > MAX_REPLAY_AGE:
        raise fail("ts is in the future beyond the replay window", "expired")
    if now - ts > MAX_REPLAY_AGE:
        raise fail("ts is older than the replay window", "expired")
    if expires_at is not None and expires_at <= now:
        raise fail("envelope expired", "expired")


# ---- building ----------------------------------------------------------------------
def build_envelope(*, kind: str, workspace: str, channel: str, sender: str,
                   body: dict[str, Any], protocol: str = PROTOCOL_V0, to: str | None = None,
                   surface: str | None = None, thread_id: str | None = None,
                   direct: str | None = None, work_id: str | None = None,
                   reply_to: str | None = None, trace_id: str | None = None,
                   causation_id: str | None = None, env_id: str | None = None,
                   ts: int | None = None, expires_at: int | None = None,
                   ext: dict[str, Any] | None = None) -> dict[str, Any]:
    """An unsigned envelope object with the keys AGH's Envelope writes (omitempty kept).

    For a `direct` surface with a `to`, `direct_id` is AGH's deterministic room id of the
    pair (router.go:935) unless given.
    """
    obj: dict[str, Any] = {"protocol": protocol, "id": env_id or new_message_id(),
                           "workspace_id": workspace, "kind": kind, "channel": channel}
    if surface == "direct" and direct is None and to is not None:
        direct = direct_id(workspace, channel, sender, to)
    optional = (("surface", surface), ("thread_id", thread_id), ("direct_id", direct),
                ("from", sender), ("to", to), ("work_id", work_id), ("reply_to", reply_to),
                ("trace_id", trace_id), ("causation_id", causation_id))
    for key, value in optional:
        if value is not None:
            obj[key] = value
    obj["ts"] = int(time.time()) if ts is None else ts
    if expires_at is not None:
        obj["expires_at"] = expires_at
    obj["body"] = body
    obj["proof"] = None
    if ext:
        obj["ext"] = ext
    return obj


def encode_json(obj: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON bytes of an envelope object."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")
