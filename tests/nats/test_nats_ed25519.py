"""Signature checks through libsodium (runtime/nats/ed25519.py): the RFC 8032 answers,
what `cryptography` signs, nothing malformed, and no key everyone can sign for."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from task_ingress.runtime.nats import compact, ed25519, identity

# RFC 8032 section 7.1, TEST 1 (empty message) and TEST 2 (one byte).
RFC8032 = [
    ("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", "",
     "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39"
     "701cf9b46bd25bf5f0595bbe24655141438e7a100b"),
    ("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c", "72",
     "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f36"
     "13d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"),
]


@pytest.mark.parametrize("public_key, message, signature", RFC8032)
def test_the_rfc_8032_signatures_verify_and_a_flipped_bit_does_not(
    public_key: str, message: str, signature: str,
) -> None:
    key, data, sig = bytes.fromhex(public_key), bytes.fromhex(message), bytes.fromhex(signature)
    assert ed25519.valid(key, sig, data)
    assert not ed25519.valid(key, sig[:-1] + bytes([sig[-1] ^ 1]), data)
    assert not ed25519.valid(key, sig, data + b"\x00")


def test_what_cryptography_signs_verifies_and_only_under_its_own_key() -> None:
    signer, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    data = b"agh-network/v1 envelope bytes" * 10
    sig = signer.sign(data)
    assert ed25519.valid(identity.raw_public_key(signer), sig, data)
    assert not ed25519.valid(identity.raw_public_key(other), sig, data)


@pytest.mark.parametrize("key, sig", [
    (b"\x01" * 31, b"\x00" * 64), (b"\x01" * 33, b"\x00" * 64), (b"", b""),
    (b"\x01" * 32, b"\x00" * 63), (b"\x01" * 32, b"\x00" * 65),
    (bytearray(32), b"\x00" * 64), ("k" * 32, b"\x00" * 64),
])
def test_a_malformed_key_or_signature_is_false_never_an_error(key: object, sig: bytes
                                                              ) -> None:
    assert ed25519.valid(key, sig, b"data") is False  # type: ignore[arg-type]


def test_a_small_order_key_whose_signature_fits_every_message_is_refused() -> None:
    # The identity point as the key, R = identity and S = 0: OpenSSL (and Go's
    # crypto/ed25519) accept this pair for ANY message, so anyone could sign as its handle.
    weak_key = bytes([1]) + bytes(31)
    universal = weak_key + bytes(32)
    Ed25519PublicKey.from_public_bytes(weak_key).verify(universal, b"anything")  # accepted
    assert not ed25519.valid(weak_key, universal, b"anything")


def test_a_compact_request_signed_with_a_small_order_key_is_rejected() -> None:
    weak_key = bytes([1]) + bytes(31)
    sender = f"mallory@{identity.fingerprint(weak_key)}"
    c = compact.Compact(sender=sender, to="", ts=1, inner=b"\x80", pubkey=weak_key,
                        signature=weak_key + bytes(32))
    judged = compact.evaluate_compact(c, workspace="ws", channel="ch")
    assert judged.trust == identity.Trust.REJECTED
    assert judged.detail == "signature does not verify"
