"""Ed25519 envelope signatures (the direction of AGH's RFC 004), via `cryptography`.

Signing input of a JSON envelope: DOMAIN + the canonical JSON of the envelope object with
its `proof` member removed. Canonical JSON = keys sorted, no whitespace, UTF-8, integers
only (RFC 8785 / JCS coincides with this for such objects). The signature travels in
`proof`: {"alg": "ed25519", "sig": <base64url, no padding>}.

The compact (msgpack) form signs COMPACT_DOMAIN + canonical JSON of
{workspace_id, channel, from, to, ts} + NUL + the inner SPEC §7 envelope bytes, so a
captured message cannot be moved to another workspace, channel or daemon.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

DOMAIN = b"agh-network/v0/ed25519\x00"
COMPACT_DOMAIN = b"task-ingress/compact/v1\x00"
ALG = "ed25519"


def canonical_json(obj: Any) -> bytes:
    """Sorted-key, whitespace-free UTF-8 JSON; raises ValueError on NaN/Infinity."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def signing_bytes(envelope: dict[str, Any]) -> bytes:
    """The bytes an envelope's signature covers: everything but `proof`."""
    return DOMAIN + canonical_json({k: v for k, v in envelope.items() if k != "proof"})


def compact_signing_bytes(*, workspace: str, channel: str, sender: str, to: str, ts: int,
                          inner: bytes) -> bytes:
    """The bytes a compact envelope's signature covers."""
    head = canonical_json({"channel": channel, "from": sender, "to": to, "ts": ts,
                           "workspace_id": workspace})
    return COMPACT_DOMAIN + head + b"\x00" + inner


def b64url(data: bytes) -> str:
    """Unpadded base64url text."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: str) -> bytes | None:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None


def sign_envelope(envelope: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """A copy of `envelope` whose `proof` carries an Ed25519 signature by `key`."""
    signature = key.sign(signing_bytes(envelope))
    return {**envelope, "proof": {"alg": ALG, "sig": b64url(signature)}}


def proof_signature(proof: object) -> bytes | None:
    """The 64-byte signature inside a `proof` object, or None when absent/malformed."""
    if not isinstance(proof, dict) or proof.get("alg") != ALG:
        return None
    sig = proof.get("sig")
    if not isinstance(sig, str) or len(sig) > 128:
        return None
    raw = _unb64url(sig)
    return raw if raw is not None and len(raw) == 64 else None


def verify(public_key: Ed25519PublicKey, signature: bytes, data: bytes) -> bool:
    """True when `signature` over `data` verifies with `public_key`."""
    try:
        public_key.verify(signature, data)
    except InvalidSignature:
        return False
    return True


def verify_envelope(envelope: dict[str, Any], public_key: Ed25519PublicKey) -> bool:
    """True when the envelope's proof is a valid signature by `public_key`."""
    signature = proof_signature(envelope.get("proof"))
    if signature is None:
        return False
    try:
        data = signing_bytes(envelope)
    except (ValueError, TypeError):
        return False
    return verify(public_key, signature, data)


def generate_key() -> Ed25519PrivateKey:
    """A fresh Ed25519 private key."""
    return Ed25519PrivateKey.generate()


def public_key_text(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """Standard base64 of the raw 32-byte public key (the trust-file form)."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def parse_public_key(text: object) -> Ed25519PublicKey | None:
    """A public key from its trust-file text, or None when malformed."""
    if not isinstance(text, str):
        return None
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(raw) != 32:
        return None
    return Ed25519PublicKey.from_public_bytes(raw)
