"""The compact (msgpack) task form: SPEC §7's envelope wrapped with a signed identity.

Outer map: {"v": 1, "from": peer_id, "to": daemon_peer_id, "ts": unix_seconds,
"env": <SPEC §7 envelope bytes>, "sig": <64-byte Ed25519 signature>}. Workspace and
channel come from the subject and are covered by the signature (signing.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from task_ingress.runtime.nats.signing import compact_signing_bytes

COMPACT_VERSION = 1
_KEYS = frozenset({"v", "from", "to", "ts", "env", "sig"})


@dataclass(frozen=True)
class Compact:
    """A decoded compact envelope (signature not yet checked)."""

    sender: str
    to: str
    ts: int
    inner: bytes
    signature: bytes


class CompactError(Exception):
    """Bytes that are not a compact envelope; `sender` is the claimed peer, if readable."""

    def __init__(self, detail: str, sender: str = "") -> None:
        super().__init__(detail)
        self.sender = sender


def encode_compact(inner: bytes, *, workspace: str, channel: str, sender: str, to: str,
                   ts: int, key: Ed25519PrivateKey) -> bytes:
    """Wrap SPEC §7 envelope bytes and sign them as `sender`."""
    data = compact_signing_bytes(workspace=workspace, channel=channel, sender=sender, to=to,
                                 ts=ts, inner=inner)
    return bytes(msgpack.packb(
        {"v": COMPACT_VERSION, "from": sender, "to": to, "ts": ts, "env": inner,
         "sig": key.sign(data)},
        use_bin_type=True,
    ))


MAX_COMPACT_BYTES = 1024 * 1024
"""Outer limit (the local server's max_payload): an oversized inner envelope still reaches
the runtime's decoder, which judges it `validation_failed` exactly as in-process."""


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
    claimed = sender if isinstance(sender, str) else ""
    if (set(obj) != _KEYS or obj.get("v") != COMPACT_VERSION or not isinstance(sender, str)
            or not isinstance(obj.get("to"), str) or type(obj.get("ts")) is not int
            or not isinstance(obj.get("env"), bytes) or not isinstance(obj.get("sig"), bytes)
            or len(obj["sig"]) != 64):
        raise CompactError("malformed compact envelope", claimed)
    return Compact(sender=sender.strip(), to=obj["to"].strip(), ts=obj["ts"],
                   inner=obj["env"], signature=obj["sig"])
