"""The compact (msgpack) task form: this project's opt-in fast path, NOT an AGH envelope.

Outer map: {"v": 2, "from": peer, "to": daemon peer, "ts": unix seconds,
"env": <SPEC 7 envelope bytes>, "pubkey": <32 bytes> | nil, "sig": <64 bytes> | nil}.
It travels only as a NATS request to the daemon's peer subject. The SPEC 7 msgpack reply goes
only to the NATS reply subject (never onto an AGH subject), wrapped and signed by the
daemon's key: {"v": 2, "answers": sha256 of the request's bytes, "reply": <SPEC 7 reply>,
"sig": Ed25519 over REPLY_DOMAIN, answers, reply}, so a client takes only an answer that
its daemon signed for exactly the bytes it sent. Trust states as RFC 004:
a handle `from` whose fingerprint is sha256(pubkey) and whose signature verifies is
verified; a plain `from` without pubkey/sig is unverified; anything else is rejected.
Signed bytes: DOMAIN, the JCS form of {channel, from, pubkey (base64url), to, ts,
workspace_id}, NUL, the `env` bytes (workspace and channel come from the subject).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import msgpack
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from task_ingress.runtime.nats import ed25519
from task_ingress.runtime.nats.envelope import ascii_strip
from task_ingress.runtime.nats.identity import (
    Evaluation,
    Trust,
    b64url,
    canonical,
    fingerprint,
    handle_fingerprint,
    raw_public_key,
)

COMPACT_VERSION = 2
DOMAIN = b"task-ingress/compact/v2\x00"
REPLY_DOMAIN = b"task-ingress/compact-reply/v2\x00"
_KEYS = frozenset({"v", "from", "to", "ts", "env", "pubkey", "sig"})
_REPLY_KEYS = frozenset({"v", "answers", "reply", "sig"})
MAX_COMPACT_BYTES = 1024 * 1024
"""Outer limit (the local server's max_payload): an oversized inner envelope still reaches
the runtime's decoder, which judges it `validation_failed` exactly as in-process."""


@dataclass(frozen=True)
class Compact:
    """A decoded compact envelope (trust not yet evaluated)."""

    sender: str
    to: str
    ts: int
    inner: bytes
    pubkey: bytes | None
    signature: bytes | None


class CompactError(Exception):
    """Bytes that are not a compact envelope; `sender` is the claimed peer, if readable."""

    def __init__(self, detail: str, sender: str = "") -> None:
        super().__init__(detail)
        self.sender = sender


def signing_bytes(*, workspace: str, channel: str, sender: str, to: str, ts: int,
                  pubkey: bytes, inner: bytes) -> bytes:
    """What a compact signature covers."""
    head = canonical({"channel": channel, "from": sender, "pubkey": b64url(pubkey), "to": to,
                      "ts": ts, "workspace_id": workspace})
    return DOMAIN + head + b"\x00" + inner


def encode_compact(inner: bytes, *, workspace: str, channel: str, sender: str, to: str,
                   ts: int, key: Ed25519PrivateKey | None) -> bytes:
    """Wrap SPEC 7 envelope bytes; signed by `key` (sender must be its handle) or unsigned."""
    pubkey = raw_public_key(key) if key is not None else None
    sig = None
    if key is not None and pubkey is not None:
        sig = key.sign(signing_bytes(workspace=workspace, channel=channel, sender=sender,
                                     to=to, ts=ts, pubkey=pubkey, inner=inner))
    return bytes(msgpack.packb(
        {"v": COMPACT_VERSION, "from": sender, "to": to, "ts": ts, "env": inner,
         "pubkey": pubkey, "sig": sig}, use_bin_type=True))


def decode_compact(data: bytes, max_bytes: int = MAX_COMPACT_BYTES) -> Compact:
    """Decode the outer map under hard limits; CompactError when it is not one."""
    if len(data) > max_bytes:
        raise CompactError("compact envelope too large")
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True, max_str_len=max_bytes,
                              max_bin_len=max_bytes, max_ext_len=0, max_array_len=16,
                              max_map_len=16)
    except Exception:  # msgpack raises many types for bad bytes
        raise CompactError("not msgpack") from None
    if not isinstance(obj, dict):
        raise CompactError("not a map")
    sender = obj.get("from")
    claimed = ascii_strip(sender) if isinstance(sender, str) else ""
    pubkey, sig = obj.get("pubkey"), obj.get("sig")
    if (set(obj) != _KEYS or obj.get("v") != COMPACT_VERSION or not isinstance(sender, str)
            or not isinstance(obj.get("to"), str) or type(obj.get("ts")) is not int
            or not isinstance(obj.get("env"), bytes)
            or not (pubkey is None or isinstance(pubkey, bytes))
            or not (sig is None or isinstance(sig, bytes))):
        raise CompactError("malformed compact envelope", claimed)
    return Compact(sender=claimed, to=ascii_strip(obj["to"]), ts=obj["ts"], inner=obj["env"],
                   pubkey=pubkey, signature=sig)


def evaluate_compact(c: Compact, *, workspace: str, channel: str) -> Evaluation:
    """Trust state of a compact envelope (the RFC 004 rules, over the compact bytes)."""
    claimed_fp = handle_fingerprint(c.sender)
    if c.pubkey is None and c.signature is None:
        if claimed_fp is not None:
            return Evaluation(Trust.REJECTED, "verified-format from without proof")
        return Evaluation(Trust.UNVERIFIED, "no proof")
    if c.pubkey is None or c.signature is None or len(c.pubkey) != 32:
        return Evaluation(Trust.REJECTED, "incomplete proof")
    if claimed_fp != fingerprint(c.pubkey):
        return Evaluation(Trust.REJECTED, "from's fingerprint does not match the pubkey")
    data = signing_bytes(workspace=workspace, channel=channel, sender=c.sender, to=c.to,
                         ts=c.ts, pubkey=c.pubkey, inner=c.inner)
    if not ed25519.valid(c.pubkey, c.signature, data):
        return Evaluation(Trust.REJECTED, "signature does not verify")
    return Evaluation(Trust.VERIFIED, fingerprint=claimed_fp)


def answers(request: bytes) -> bytes:
    """What a signed reply names as the request it answers: sha256 of its bytes."""
    return hashlib.sha256(request).digest()


def sign_reply(reply: bytes, request: bytes, key: Ed25519PrivateKey) -> bytes:
    """The daemon's signed compact reply carrying SPEC 7 `reply` bytes for `request`."""
    digest = answers(request)
    return bytes(msgpack.packb({"v": COMPACT_VERSION, "answers": digest, "reply": reply,
                                "sig": key.sign(REPLY_DOMAIN + digest + reply)},
                               use_bin_type=True))


def open_reply(data: bytes, *, request: bytes, public_key: bytes) -> bytes:
    """The SPEC 7 reply inside a signed compact reply; CompactError unless `public_key`
    signed it as the answer to exactly `request`."""
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True, max_ext_len=0,
                              max_array_len=0, max_map_len=8)
    except Exception:  # msgpack raises many types for bad bytes
        raise CompactError("reply is not msgpack") from None
    if (not isinstance(obj, dict) or set(obj) != _REPLY_KEYS or obj["v"] != COMPACT_VERSION
            or not all(isinstance(obj[k], bytes) for k in ("answers", "reply", "sig"))):
        raise CompactError("reply is not a signed compact reply")
    if obj["answers"] != answers(request):
        raise CompactError("reply answers another request")
    if not ed25519.valid(public_key, obj["sig"], REPLY_DOMAIN + obj["answers"] + obj["reply"]):
        raise CompactError("reply is not signed by the daemon")
    return bytes(obj["reply"])
