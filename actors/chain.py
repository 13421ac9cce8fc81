"""Pure hash-chain and checkpoint arithmetic for the audit log (SPEC §6)."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from task_ingress.messages.audit import GENESIS_HASH, AuditRecord

CHAINED_FIELDS = (
    "seq", "at", "workspace", "channel", "peer_id", "actor", "request_id", "action",
    "outcome", "reason", "task_id", "run_id", "payload_size", "replay", "prev_hash", "trust",
)


# Canonical JSON = keys sorted, no spaces, ASCII. Building the dict in sorted key order
# with one reusable encoder gives byte-for-byte the same text as
# json.dumps(sort_keys=True, ...) (tests pin it) at ~20% less cost per record.
_SORTED_FIELDS = tuple(sorted(CHAINED_FIELDS))
_CANONICAL = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True)


def record_hash(fields: dict[str, Any]) -> str:
    """sha256 over the canonical JSON of every chained field (all but `hash`).

    `trust` is chained whenever it is set; records written before it existed (None) keep
    the hash they were chained with."""
    blob = _CANONICAL.encode({k: fields[k] for k in _SORTED_FIELDS
                              if k != "trust" or fields.get("trust") is not None})
    return hashlib.sha256(blob.encode()).hexdigest()


def first_bad_record(records: list[AuditRecord]) -> tuple[int, str] | None:
    """(seq, why) of the first record that breaks the chain, or None when it holds."""
    prev = GENESIS_HASH
    expected_seq = 1
    for rec in records:
        fields = rec.model_dump(mode="json")
        if rec.seq != expected_seq:
            return rec.seq, f"sequence gap: expected {expected_seq}"
        if rec.prev_hash != prev:
            return rec.seq, "prev_hash does not match the previous record"
        if record_hash(fields) != rec.hash:
            return rec.seq, "hash does not match the record's contents"
        prev = rec.hash
        expected_seq += 1
    return None


def checkpoint_mac(key: bytes, seq: int, head: str) -> str:
    """HMAC-SHA256 authenticating a checkpoint of (latest seq, its hash)."""
    return hmac.new(key, f"{seq}:{head}".encode(), hashlib.sha256).hexdigest()


def checkpoint_ok(key: bytes, seq: int, head: str, mac: str) -> bool:
    """True when `mac` authenticates (seq, head) under `key`."""
    return hmac.compare_digest(checkpoint_mac(key, seq, head), mac)
