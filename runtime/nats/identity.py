"""AGH RFC 004 Baseline Trust Profile: Ed25519 over RFC 8785 (JCS), verified handles.

- Handle: `nickname@fingerprint`, fingerprint = the first 32 lowercase hex characters of
  sha256(raw 32-byte public key) (section 4.4).
- Proof (section 4.5): {"profile": PROFILE, "alg": "Ed25519", "key_id": "sha256:<64 hex>",
  "pubkey": base64url(raw key), "sig": base64url(signature)}, base64url unpadded.
- Signed content (section 4.6): the JCS canonical form of the whole envelope object as it
  travels, with only `proof.sig` left out; nothing is added or normalized first.
- Trust states (section 3.2): verified, unverified, rejected; `evaluate` runs the section 3.1
  step 6 decision and the section 4.7 verification steps in order, each failing on its own.

Canonicalization is the `rfc8785` package (a maintained JCS implementation), not ours; for
plain values (strings, safe integers, booleans, null, ASCII keys) `json.dumps` writes the
same bytes faster (`canonical`; tests/nats/test_nats_canonical.py holds them equal).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import enum
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from typing import Any

import rfc8785
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from task_ingress.actors.rules import gate
from task_ingress.runtime.nats import ed25519
from task_ingress.runtime.nats.envelope import ascii_strip

PROFILE = "agh-network.trust.ed25519-jcs/v1"
ALG = "Ed25519"
NICKNAME_MAX = 32


class Trust(enum.StrEnum):
    """RFC 004 section 3.2 trust states, plus `embedded` for the in-process API (SPEC 7)."""

    VERIFIED = "verified"
    UNVERIFIED = "unverified"
    REJECTED = "rejected"
    EMBEDDED = "embedded"


@dataclass(frozen=True)
class Evaluation:
    """The trust state of one envelope and why; `fingerprint` is set when verified."""

    trust: Trust
    detail: str = ""
    fingerprint: str = ""


# ---- keys and handles --------------------------------------------------------------
def raw_public_key(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """The raw 32-byte public key."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def fingerprint(pubkey: bytes) -> str:
    """First 32 lowercase hex characters of sha256(pubkey) (section 4.4)."""
    return hashlib.sha256(pubkey).hexdigest()[:32]


def key_id(pubkey: bytes) -> str:
    """`sha256:<64 hex>` of the raw public key (section 4.5)."""
    return "sha256:" + hashlib.sha256(pubkey).hexdigest()


def handle(nickname: str, key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The verified handle `nickname@fingerprint`; ValueError for a bad nickname."""
    result = f"{nickname}@{fingerprint(raw_public_key(key))}"
    if gate.HANDLE_RE.fullmatch(result) is None:
        raise ValueError(f"nickname must match [a-z0-9_-]{{1,32}}: {nickname!r}")
    return result


def handle_fingerprint(value: str) -> str | None:
    """The fingerprint of a verified handle, or None when `value` is not one."""
    if gate.HANDLE_RE.fullmatch(value) is None:
        return None
    return value.rsplit("@", 1)[1]


def b64url(data: bytes) -> str:
    """Unpadded base64url text."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64url(text: str) -> bytes | None:
    """Decode unpadded (or padded) base64url; None when it is not that."""
    if not all(c.isalnum() or c in "-_=" for c in text) or not text.isascii():
        return None
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None


def generate_key() -> Ed25519PrivateKey:
    """A fresh Ed25519 private key."""
    return Ed25519PrivateKey.generate()


def save_key(path: str, key: Ed25519PrivateKey, nickname: str = "") -> None:
    """Write the key as PKCS#8 PEM, mode 0600, atomically; refuses to overwrite.

    With a nickname, a first comment line `# handle: nickname@fingerprint` (PEM readers skip
    it) lets clients rebuild the handle from the file alone.
    """
    if os.path.exists(path):
        raise FileExistsError(path)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    if nickname:
        pem = f"# handle: {handle(nickname, key)}\n".encode() + pem
    directory = os.path.dirname(os.path.abspath(path)) or "."
    fd, tmp = tempfile.mkstemp(prefix=".key-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.link(tmp, path)  # fails if someone created `path` meanwhile
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def load_key(path: str) -> Ed25519PrivateKey:
    """Read a key written by `save_key` (ValueError when it is not an Ed25519 key)."""
    with open(path, "rb") as fh:
        key = serialization.load_pem_private_key(fh.read(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return key


def load_identity(path: str) -> tuple[Ed25519PrivateKey, str]:
    """(key, handle) of a key file written with a nickname; ValueError without one."""
    key = load_key(path)
    with open(path, encoding="ascii", errors="replace") as fh:
        first = fh.readline().strip()
    nickname = ""
    if first.startswith("# handle: "):
        nickname = first.removeprefix("# handle: ").rsplit("@", 1)[0]
    if not nickname:
        raise ValueError(f"{path} names no handle: write it with `task-ingress keygen`")
    return key, handle(nickname, key)


def load_private_key(path: str) -> Ed25519PrivateKey:
    """`load_key` for a key that must stay private (the daemon's): ValueError when its
    file can be read or written by anyone but its owner (as ssh refuses such keys)."""
    mode = os.stat(path).st_mode & 0o777
    if mode & 0o077:
        raise ValueError(f"{path} has mode {mode:04o}: anyone who can read it can sign as "
                         "the daemon; `chmod 600` it (or move it away to have a new key "
                         "made)")
    return load_key(path)


def load_or_create_key(path: str) -> Ed25519PrivateKey:
    """The key at `path`, created (0600) on first use: a daemon's handle survives restarts,
    so clients can pin it. A key others can read is refused (`load_private_key`)."""
    with contextlib.suppress(FileExistsError):
        save_key(path, generate_key())
    return load_private_key(path)


# ---- signing and verifying ---------------------------------------------------------
JS_SAFE_INT = 2**53 - 1
"""Integers JCS writes as they are (beyond it, rfc8785 refuses them)."""
PLAIN_DEPTH = 64


def canonical(obj: Any) -> bytes:
    """RFC 8785 canonical bytes (raises rfc8785 errors for values JCS cannot carry).

    Every envelope, greet and answer is canonicalized to sign or verify it, and `rfc8785`
    is pure Python (~11 µs for the compact form's six fields, ~60 µs for an envelope).
    For plain values `json.dumps` writes the same bytes in C: its string escapes are
    RFC 8785's (3.2.2.2: the short forms, `\\u00xx` in lower case below 0x20, nothing
    else), integers within 2**53 print alike, and ASCII keys sort alike by code point and
    by UTF-16 unit. Floats, non-ASCII keys, subclasses and anything else go to rfc8785;
    so do lone surrogates, which it refuses (tests/nats: equal bytes on generated values).
    """
    if _plain(obj, 0):
        with contextlib.suppress(UnicodeEncodeError):  # a lone surrogate: rfc8785's error
            return json.dumps(obj, ensure_ascii=False, separators=(",", ":"),
                              sort_keys=True).encode("utf-8")
    return bytes(rfc8785.dumps(obj))


def _plain(value: Any, depth: int) -> bool:
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return True
    if kind is int:
        return bool(-JS_SAFE_INT <= value <= JS_SAFE_INT)
    if depth >= PLAIN_DEPTH:
        return False
    if kind is dict:
        return all(type(k) is str and k.isascii() and _plain(v, depth + 1)
                   for k, v in value.items())
    if kind is list or kind is tuple:
        return all(_plain(v, depth + 1) for v in value)
    return False


def signed_content(envelope: dict[str, Any]) -> bytes:
    """The bytes the signature covers: the envelope with only `proof.sig` left out."""
    proof = envelope.get("proof")
    unsigned = dict(envelope)
    if isinstance(proof, dict):
        unsigned["proof"] = {k: v for k, v in proof.items() if k != "sig"}
    return canonical(unsigned)


def sign(envelope: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """A copy of `envelope` carrying a baseline proof by `key` (its `from` must be the
    key's handle for a receiver to verify it)."""
    pub = raw_public_key(key)
    proof = {"profile": PROFILE, "alg": ALG, "key_id": key_id(pub), "pubkey": b64url(pub)}
    unsigned = {**envelope, "proof": proof}
    return {**unsigned, "proof": {**proof, "sig": b64url(key.sign(canonical(unsigned)))}}


def evaluate(envelope: dict[str, Any]) -> Evaluation:
    """Trust state of one decoded envelope (RFC 004 sections 3.1 step 6, 3.3, 4.7)."""
    sender = envelope.get("from")
    sender = ascii_strip(sender) if isinstance(sender, str) else ""
    proof = envelope.get("proof")
    if proof is None:
        if handle_fingerprint(sender) is not None:  # section 3.3: proof stripping
            return Evaluation(Trust.REJECTED, "verified-format from without proof")
        return Evaluation(Trust.UNVERIFIED, "no proof")
    if not isinstance(proof, dict):
        return Evaluation(Trust.REJECTED, "proof is not an object")
    profile = proof.get("profile")
    if not isinstance(profile, str):
        return Evaluation(Trust.REJECTED, "proof.profile missing")
    if profile != PROFILE:  # step 1; an unknown but well-formed profile is not ours
        if handle_fingerprint(sender) is not None:
            return Evaluation(Trust.REJECTED, "verified-format from with a foreign profile")
        return Evaluation(Trust.UNVERIFIED, "unsupported proof profile")
    if proof.get("alg") != ALG:  # step 2
        return Evaluation(Trust.REJECTED, "proof.alg is not Ed25519")
    pubkey_text = proof.get("pubkey")
    pubkey = unb64url(pubkey_text) if isinstance(pubkey_text, str) else None
    if pubkey is None or len(pubkey) != 32:  # step 3
        return Evaluation(Trust.REJECTED, "proof.pubkey is not a base64url Ed25519 key")
    digest = hashlib.sha256(pubkey).hexdigest()  # step 4
    if proof.get("key_id") != "sha256:" + digest:  # step 5
        return Evaluation(Trust.REJECTED, "proof.key_id does not match the pubkey")
    if handle_fingerprint(sender) != digest[:32]:  # step 6
        return Evaluation(Trust.REJECTED, "from's fingerprint does not match the pubkey")
    sig_text = proof.get("sig")
    signature = unb64url(sig_text) if isinstance(sig_text, str) else None
    if signature is None or len(signature) != 64:
        return Evaluation(Trust.REJECTED, "proof.sig is not a base64url signature")
    try:
        content = signed_content(envelope)  # step 7
    except Exception:  # rfc8785 refuses values JCS cannot carry (huge ints, NaN)
        return Evaluation(Trust.REJECTED, "envelope cannot be canonicalized")
    if not ed25519.valid(pubkey, signature, content):  # step 8
        return Evaluation(Trust.REJECTED, "signature does not verify")
    return Evaluation(Trust.VERIFIED, fingerprint=digest[:32])
