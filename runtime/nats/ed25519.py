"""Ed25519 signature checks through libsodium (PyNaCl); keys and signing stay with
`cryptography`.

Why a second library: checking signatures is the dearest step of every verified message
(the daemon checks each request, a client each signed reply), and libsodium's check takes
about half the CPU of OpenSSL's through `cryptography` (timed on this project's 2-core
machines, 300-byte messages: 49 against 98 µs; both release the GIL). PyNaCl is already
installed with nats-py's `nkeys`. libsodium's check is also the stricter one: besides a
canonical S it refuses small-order and non-canonical public keys and R points, which no
key made by an Ed25519 implementation has (AGH's Go `ed25519.GenerateKey` included): only
a peer that built a weak key on purpose is refused where OpenSSL would have accepted it.
"""

from __future__ import annotations

from nacl.bindings import crypto_sign_open
from nacl.exceptions import BadSignatureError

PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64


def valid(public_key: bytes, signature: bytes, data: bytes) -> bool:
    """Whether `signature` is `public_key`'s Ed25519 signature of `data`; False for any
    key that is not 32 bytes or signature that is not 64 (never raises for bad input)."""
    # The lengths are checked here, not by the binding: libsodium reads 32 key bytes
    # from whatever it is given.
    if (type(public_key) is not bytes or type(signature) is not bytes
            or len(public_key) != PUBLIC_KEY_BYTES or len(signature) != SIGNATURE_BYTES):
        return False
    try:
        crypto_sign_open(signature + bytes(data), public_key)
    except BadSignatureError:
        return False
    return True
