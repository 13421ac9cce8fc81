"""A peer's RFC 004 Ed25519 key is its NATS identity: the same key as a NATS nkey user.

An nkey is an Ed25519 key in NATS's text form: base32 (no padding) of a prefix byte, the
32 key bytes and a CRC-16 (XMODEM, little-endian) of both. A user's public nkey starts with
`U`, its seed (the private key) with `SU`. nats-server checks a client's nkey by a signed
challenge, so only the key's holder connects as that user: the same proof as an RFC 004
signature, with the same key.
"""

from __future__ import annotations

import base64
import binascii

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from task_ingress.runtime.nats.identity import unb64url

PREFIX_USER = 20 << 3  # base32 'U'
PREFIX_SEED = 18 << 3  # base32 'S'
INBOX_ROOT = "_INBOX"


def crc16(data: bytes) -> int:
    """CRC-16/XMODEM (polynomial 0x1021, initial 0), as nkeys checksums use."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def _encode(raw: bytes) -> str:
    return base64.b32encode(raw + crc16(raw).to_bytes(2, "little")).decode().rstrip("=")


def user_nkey(pubkey: bytes) -> str:
    """The public nkey (`U…`, 56 characters) of a raw 32-byte Ed25519 public key."""
    if len(pubkey) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return _encode(bytes([PREFIX_USER]) + pubkey)


def user_seed(key: Ed25519PrivateKey) -> str:
    """The nkey seed (`SU…`) of a private key: what a NATS client signs the challenge with."""
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                            serialization.NoEncryption())
    header = bytes([PREFIX_SEED | PREFIX_USER >> 5, (PREFIX_USER & 31) << 3])
    return _encode(header + raw)


def public_key_of_nkey(text: str) -> bytes | None:
    """The raw public key of a `U…` user nkey; None when `text` is not a valid one."""
    if len(text) != 56 or not text.startswith("U"):
        return None
    try:
        raw = base64.b32decode(text + "=" * (-len(text) % 8))
    except (binascii.Error, ValueError):
        return None
    body, checksum = raw[:-2], raw[-2:]
    if len(body) != 33 or body[0] != PREFIX_USER or crc16(body).to_bytes(2, "little") != (
            checksum):
        return None
    return body[1:]


def parse_public_key(text: str) -> bytes | None:
    """A raw Ed25519 public key from its RFC 004 form (base64url, as in `proof.pubkey`) or
    its nkey form (`U…`); None when `text` is neither."""
    text = text.strip()
    from_nkey = public_key_of_nkey(text)
    if from_nkey is not None:
        return from_nkey
    raw = unb64url(text)
    return raw if raw is not None and len(raw) == 32 else None


def inbox_prefix(fingerprint: str) -> str:
    """The reply-subject prefix a peer uses (`_INBOX.<fingerprint>`): the only inboxes its
    NATS user may subscribe to, so nobody else reads its answers."""
    return f"{INBOX_ROOT}.{fingerprint}"
