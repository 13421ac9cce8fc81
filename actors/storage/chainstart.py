"""Where a writer of the audit log starts: the chain's head, checked against the store's
checkpoint before anything is appended to it.

A writer that appended to a log someone had truncated, or whose checkpoint someone had
deleted, would write fresh checkpoints vouching for it and launder the tampering. So
`open_chain` refuses (`ChainRefused`) unless the checkpoint beside the store
authenticates under the key, belongs to this store, and the records from it to the head
chain under the key. That costs the records written since the last checkpoint (at most
about a second's worth), not the whole log: edits before it are `audit verify`'s to find,
and no checkpoint written later can hide them.

Three other starts, each decided from the files alone:
- a new store (no store id, no records, no checkpoint): pick a random store id, write the
  genesis checkpoint (seq 0), then record the id in `meta`;
- a legacy store (schema 3 or older: no store id, an unkeyed sha256 chain): check the old
  chain and its old checkpoint as the old verifier did, then re-chain every record under the
  key in one transaction and note the migration in `meta`;
- either of those interrupted between writing the checkpoint and committing the id: the
  checkpoint names the id, and finishing the same work must reproduce its head exactly.

Used by the Audit actor and the benchmark's lock-based baseline, the only writers.
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from task_ingress.actors.rules.chain import (
    ChainKey,
    ChainWalk,
    genesis_hash,
    legacy_checkpoint_ok,
    record_hash,
)
from task_ingress.actors.storage.auditlog import (
    AUDIT_COLUMNS,
    AUDIT_NAMES,
    Checkpoint,
    checkpoint_path,
    make_checkpoint,
    read_checkpoint,
    read_head,
    read_meta,
)
from task_ingress.actors.storage.files import replace_private_file
from task_ingress.messages.audit import GENESIS_HASH

VERIFY_HINT = "run `task-ingress audit verify --store {path}` for the whole story"


class ChainRefused(Exception):
    """The log cannot be extended: its checkpoint is missing or does not vouch for it."""


@dataclass(frozen=True)
class ChainHead:
    """Where the next record goes: after (seq, head) of store `store_id`."""

    store_id: str
    seq: int
    head: str


def open_chain(conn: sqlite3.Connection, store_path: str, key: ChainKey) -> ChainHead:
    """Check the log against its checkpoint and return its head (see the module doc).

    `conn` must be a writable connection to the migrated store; may write the checkpoint
    file and, for a new or legacy store, the audit and meta tables."""
    cp, cp_error = read_checkpoint(store_path)
    if cp_error is not None:
        raise ChainRefused(_refusal(store_path, cp_error))
    store_id = read_meta(conn).get("store_id")
    if store_id is None:
        return _initialize(conn, store_path, key, cp)
    refusal = _check_start(conn, store_path, key, store_id, cp)
    if refusal is not None:
        raise ChainRefused(_refusal(store_path, refusal))
    seq, head = read_head(conn, genesis_hash(store_id))
    return ChainHead(store_id, seq, head)


def _refusal(store_path: str, why: str) -> str:
    return (f"the audit log of {store_path} cannot be extended: {why}; "
            + VERIFY_HINT.format(path=store_path))


def _check_start(conn: sqlite3.Connection, store_path: str, key: ChainKey, store_id: str,
                 cp: Checkpoint | None) -> str | None:
    """Why a keyed store's log must not be extended, or None."""
    if cp is None:
        return (f"its checkpoint file {checkpoint_path(store_path)} is missing (every keyed "
                "store has one from its creation: deleted?)")
    if cp.store_id is None:
        return "its checkpoint is in the legacy format, but the store's chain is keyed"
    if not cp.verifies(key):
        return "the checkpoint's MAC does not verify under this key (wrong key, or forged)"
    if cp.store_id != store_id:
        return (f"the checkpoint belongs to store {cp.store_id}, the database is store "
                f"{store_id} (copied from another store?)")
    try:
        if cp.seq == 0:
            if cp.hash != genesis_hash(store_id):
                return "the genesis checkpoint does not hold this store's genesis hash"
            walk = ChainWalk(key.seal, cp.hash, 1)
            rows = _rows_after(conn, 0)
        else:
            rows = _rows_after(conn, cp.seq - 1)
            first = next(rows, None)
            if first is None or first["seq"] != cp.seq:
                return (f"tail deleted: the checkpoint vouches for records up to seq {cp.seq} "
                        "but that record is missing")
            if first["hash"] != cp.hash or key.seal(first) != cp.hash:
                return f"record seq {cp.seq} differs from the checkpoint (rewritten)"
            walk = ChainWalk(key.seal, cp.hash, cp.seq + 1)
        for fields in rows:
            why = walk.step(fields)
            if why is not None:
                return f"record seq {fields['seq']} after the checkpoint: {why}"
    except (TypeError, ValueError) as exc:
        return f"a record after the checkpoint does not parse: {exc}"
    return None


def _rows_after(conn: sqlite3.Connection, seq: int, limit: int = -1
                ) -> Iterator[dict[str, Any]]:
    """Audit rows as chain fields, seq > `seq` in order (at most `limit`; -1: all)."""
    for row in conn.execute(f"SELECT {AUDIT_COLUMNS} FROM audit WHERE seq > ? ORDER BY seq "
                            "LIMIT ?", (seq, limit)):
        fields = dict(zip(AUDIT_NAMES, row, strict=True))
        fields["replay"] = bool(fields["replay"])
        yield fields


def _initialize(conn: sqlite3.Connection, store_path: str, key: ChainKey,
                cp: Checkpoint | None) -> ChainHead:
    """Give a store without an id its id and keyed chain: a new store, a legacy store, or
    either of them interrupted after its checkpoint was written (see the module doc).

    One transaction, the rows streamed in chunks (memory stays flat for a long legacy log):
    each row is checked against the legacy chain and re-chained under the key in place; the
    checkpoint file is written before the commit."""
    interrupted = cp is not None and cp.store_id is not None
    store_id = cp.store_id if cp is not None and cp.store_id is not None \
        else secrets.token_hex(16)
    conn.execute("BEGIN IMMEDIATE")
    try:
        legacy = _LegacyPass(cp if not interrupted else None)
        head, seq = genesis_hash(store_id), 0
        while chunk := list(_rows_after(conn, seq, RECHAIN_CHUNK)):
            for fields in chunk:
                legacy.step(fields)
                fields["prev_hash"] = head
                fields["hash"] = head = key.seal(fields)
                seq = fields["seq"]
            conn.executemany("UPDATE audit SET prev_hash = :prev_hash, hash = :hash "
                             "WHERE seq = :seq", chunk)
        note = "re-chained after an interrupted start" if interrupted and seq \
            else legacy.verdict(key)
        if interrupted:
            # An interrupted start of ours wrote this checkpoint: the same work must lead
            # to exactly its head, or it is not ours to finish.
            assert cp is not None
            if not (cp.verifies(key) and cp.seq == seq and cp.hash == head):
                raise ChainRefused(
                    f"the checkpoint names store {cp.store_id} at seq {cp.seq}, but the "
                    f"database has no store id and {seq} records that do not re-chain to it")
        else:
            # The checkpoint first: a crash before the commit below leaves a checkpoint the
            # next start can finish from, never a store id without a checkpoint.
            replace_private_file(checkpoint_path(store_path),
                                 make_checkpoint(key, store_id, seq, head).to_json())
        meta = {"store_id": store_id, "chain": "hmac-sha256", "created_at": f"{time.time():.3f}"}
        if seq:
            meta |= {"legacy_records": str(seq), "legacy_checkpoint": note}
        conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                         list(meta.items()))
        conn.execute("COMMIT")
    except ChainRefused as exc:
        conn.execute("ROLLBACK")
        raise ChainRefused(_refusal(store_path, str(exc))) from None
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return ChainHead(store_id, seq, head)


RECHAIN_CHUNK = 5000


class _LegacyPass:
    """A legacy chain (schema 3 or older: sha256 from GENESIS_HASH, `trust` hashed only when
    set) and its legacy checkpoint, checked as the old verifier did, one row at a time;
    ChainRefused unless they hold."""

    def __init__(self, cp: Checkpoint | None) -> None:
        self.cp = cp
        self.walk = ChainWalk(record_hash, GENESIS_HASH)
        self.count = 0
        self.hash_at_checkpoint: str | None = None

    def step(self, fields: dict[str, Any]) -> None:
        """Check one row (before it is re-chained)."""
        try:
            why = self.walk.step(fields)
        except (TypeError, ValueError) as exc:
            why = f"record does not parse: {exc}"
        if why is not None:
            raise ChainRefused(f"the legacy (unkeyed) audit chain is broken at record seq "
                               f"{fields['seq']}: {why}; it is not re-chained under the key")
        self.count += 1
        if self.cp is not None and fields["seq"] == self.cp.seq:
            self.hash_at_checkpoint = str(fields["hash"])

    def verdict(self, key: ChainKey) -> str:
        """What the legacy checkpoint vouched for, for `meta` ('none' for no records)."""
        cp = self.cp
        if cp is None:
            if self.count:
                # Anyone can write an unkeyed chain: without a checkpoint nothing tells these
                # records from a forgery, and re-chaining them would launder one.
                raise ChainRefused(
                    f"the legacy (unkeyed) audit log has {self.count} records and no "
                    "checkpoint, so nothing vouches for them and they are not re-chained "
                    "under the key")
            return "none"
        if not legacy_checkpoint_ok(key.raw, cp.seq, cp.hash, cp.mac):
            raise ChainRefused("the legacy checkpoint's MAC does not verify under this key")
        if self.hash_at_checkpoint != cp.hash:
            raise ChainRefused(f"the legacy checkpoint vouches for seq {cp.seq}, which the "
                               "audit does not hold with that hash (tail deleted or "
                               "rewritten)")
        return f"seq {cp.seq}"
