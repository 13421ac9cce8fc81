"""Pure chain and checkpoint arithmetic for the audit log (SPEC §6).

The chain is keyed: each record's `hash` is an HMAC-SHA256, under the operator's audit key,
of the record's canonical JSON, which includes `prev_hash`. Whoever can write the store but
cannot read the key can neither edit a record nor re-chain the log after an edit. The first
record's `prev_hash` is the store's genesis hash, derived from its random store id, so
records (and checkpoints) of one store do not verify as another's under the same key.

Stores written before the key was bound into the chain (schema 3 or older) hold a sha256
chain from `messages.audit.GENESIS_HASH`; `record_hash` and `legacy_checkpoint_mac` read
those. The keyed seal covers every chained field, `trust` included even when it is None.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

from task_ingress.actors.rules import jsontext
from task_ingress.messages.audit import AuditRecord

CHAINED_FIELDS = (
    "seq", "at", "workspace", "channel", "peer_id", "actor", "request_id", "action",
    "outcome", "reason", "task_id", "run_id", "payload_size", "replay", "prev_hash", "trust",
)

Seal = Callable[[dict[str, Any]], str]
"""What turns a record's fields into its `hash`: `ChainKey.seal`, or `record_hash` for a
legacy chain."""

# Canonical JSON = keys sorted, no spaces, ASCII. Building the dict in sorted key order
# with one reusable encoder (made once: rules/jsontext.py) gives byte-for-byte the same
# text as json.dumps(sort_keys=True, ...) (tests pin it) at less cost per record.
_SORTED_FIELDS = tuple(sorted(CHAINED_FIELDS))
_SORTED_WITHOUT_TRUST = tuple(k for k in _SORTED_FIELDS if k != "trust")
_GENESIS_DOMAIN = b"task-ingress audit genesis\n"
_CHECKPOINT_DOMAIN = "task-ingress audit checkpoint v2"
_ROSTER_DOMAIN = "task-ingress audit roster v1"
_BLOCK = 64  # sha256's block size, as HMAC pads the key to it
_ENCODE = jsontext.encoder((",", ":"))


def canonical(fields: dict[str, Any]) -> bytes:
    """The bytes a record's hash covers: canonical JSON of every chained field."""
    return _ENCODE({k: fields[k] for k in _SORTED_FIELDS}).encode()


def record_hash(fields: dict[str, Any]) -> str:
    """Legacy (schema 3 or older) record hash: unkeyed sha256 over the canonical JSON.

    As those versions wrote it: `trust` is left out when it is None, so records chained
    before the field existed keep their hash, and covered whenever it is set."""
    if fields.get("trust") is None:
        blob = _ENCODE({k: fields[k] for k in _SORTED_WITHOUT_TRUST})
        return hashlib.sha256(blob.encode()).hexdigest()
    return hashlib.sha256(canonical(fields)).hexdigest()


def genesis_hash(store_id: str) -> str:
    """The `prev_hash` of a keyed store's first record, and its seq-0 checkpoint's hash."""
    return hashlib.sha256(_GENESIS_DOMAIN + store_id.encode()).hexdigest()


class ChainKey:
    """The operator's audit key, ready to seal records and checkpoints (HMAC-SHA256)."""

    def __init__(self, key: bytes) -> None:
        if not key:
            raise ValueError("the audit key is empty")
        self.raw = key
        """The key's bytes (legacy checkpoints are MACed with them directly)."""
        self._base = hmac.new(key, digestmod=hashlib.sha256)
        # HMAC as RFC 2104 builds it, with the keyed inner and outer sha256 states made
        # once: a record then costs what an unkeyed sha256 did (hmac.new per record was
        # 3x that, and `audit verify` seals every record). Tests pin it to hmac.new.
        block = (hashlib.sha256(key).digest() if len(key) > _BLOCK else key).ljust(_BLOCK,
                                                                                   b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))

    @classmethod
    def from_hex(cls, text: str) -> ChainKey:
        """A key from its hex text; ValueError when it is not non-empty hex."""
        return cls(bytes.fromhex(text.strip()))

    def seal(self, fields: dict[str, Any]) -> str:
        """A record's `hash`: HMAC over its canonical JSON (prev_hash included)."""
        return self._mac(canonical(fields))

    def _mac(self, blob: bytes) -> str:
        inner = self._inner.copy()
        inner.update(blob)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest()

    def link(self, fields: dict[str, Any], seq: int, prev_hash: str, at: float
             ) -> dict[str, Any]:
        """The record of `fields` at place `seq` after `prev_hash`, sealed: every chained
        field and `hash` (other keys of `fields` are not part of a record and are left
        out). What Audit appends, and what TaskStore appends in its own transaction under
        a lease.

        Built once with its keys already in canonical (sorted) order and encoded as it is,
        not copied and then copied again sorted (`seal`): one dict per record on the hot
        path, not two (tests pin its hash to `seal`'s and to json.dumps)."""
        record = {
            "action": fields["action"], "actor": fields["actor"], "at": at,
            "channel": fields["channel"], "outcome": fields["outcome"],
            "payload_size": fields["payload_size"], "peer_id": fields["peer_id"],
            "prev_hash": prev_hash, "reason": fields["reason"], "replay": fields["replay"],
            "request_id": fields["request_id"], "run_id": fields["run_id"], "seq": seq,
            "task_id": fields["task_id"], "trust": fields["trust"],
            "workspace": fields["workspace"],
        }
        record["hash"] = self.seal_ordered(record)
        return record

    def seal_ordered(self, fields: dict[str, Any]) -> str:
        """`seal` of a dict holding exactly the chained fields, already in canonical (sorted)
        key order: encoded as it is. For builders of records whose order tests pin."""
        return self._mac(_ENCODE(fields).encode())

    def checkpoint_mac(self, store_id: str, seq: int, head: str, at: float) -> str:
        """HMAC authenticating "store `store_id` had reached (seq, head) at time `at`"."""
        mac = self._base.copy()
        mac.update(f"{_CHECKPOINT_DOMAIN}\n{store_id}\n{seq}\n{head}\n{at:.6f}".encode())
        return mac.hexdigest()

    def checkpoint_ok(self, store_id: str, seq: int, head: str, at: float, mac: str) -> bool:
        """True when `mac` authenticates this checkpoint under this key."""
        return hmac.compare_digest(self.checkpoint_mac(store_id, seq, head, at), mac)

    def roster_mac(self, chain_ids: list[str], at: float) -> str:
        """HMAC authenticating "the cluster has exactly these shard chains, shard i's id at
        index i" (its own domain: no checkpoint MAC ever verifies as a roster's)."""
        mac = self._base.copy()
        mac.update(f"{_ROSTER_DOMAIN}\n{at:.6f}\n".encode()
                   + json.dumps(chain_ids, separators=(",", ":")).encode())
        return mac.hexdigest()


class ChainWalk:
    """The chain rule, one record at a time in seq order: seq runs on without gaps from
    `expected`, each `prev_hash` is the previous record's `hash` (the first one's is
    `prev`), and each `hash` is `seal` of the record's fields. Holds only the last hash, so
    `audit verify` can stream a log too long to keep while `first_bad_record` walks a list."""

    def __init__(self, seal: Seal, prev: str, expected: int = 1) -> None:
        self.seal = seal
        self.prev = prev
        self.expected = expected

    def step(self, fields: dict[str, Any]) -> str | None:
        """Why this record (every chained field plus `hash`) breaks the chain, or None; the
        walk moves past it either way. Raises TypeError or ValueError, and moves nowhere,
        when the fields cannot be hashed."""
        digest = self.seal(fields)
        seq, stored = fields["seq"], fields["hash"]
        expected, prev = self.expected, self.prev
        self.prev, self.expected = stored, expected + 1
        if seq != expected:
            return f"sequence gap: expected {expected}{_missing(expected, seq)}"
        if fields["prev_hash"] != prev:
            if expected == 1:
                return "prev_hash is not this store's genesis (a record of another store?)"
            return "prev_hash does not match the previous record"
        if digest != stored:
            return "hash does not match the record's contents"
        return None


def _missing(expected: int, seq: int) -> str:
    if seq == expected + 1:
        return f" (record {expected} is missing)"
    return f" (records {expected}-{seq - 1} are missing)" if seq > expected else ""


def first_bad_record(records: list[AuditRecord], seal: Seal, genesis: str
                     ) -> tuple[int, str] | None:
    """(seq, why) of the first record that breaks the chain, or None when it holds."""
    walk = ChainWalk(seal, genesis)
    for rec in records:
        why = walk.step(rec.model_dump(mode="json"))
        if why is not None:
            return rec.seq, why
    return None


def legacy_checkpoint_mac(key: bytes, seq: int, head: str) -> str:
    """Legacy (schema 3 or older) checkpoint HMAC of (latest seq, its hash), no store id."""
    return hmac.new(key, f"{seq}:{head}".encode(), hashlib.sha256).hexdigest()


def legacy_checkpoint_ok(key: bytes, seq: int, head: str, mac: str) -> bool:
    """True when `mac` authenticates a legacy checkpoint of (seq, head) under `key`."""
    return hmac.compare_digest(legacy_checkpoint_mac(key, seq, head), mac)

