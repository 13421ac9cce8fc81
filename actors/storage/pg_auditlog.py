"""The audit log in PostgreSQL: one keyed hash chain per shard (SPEC §6).

Each shard's chain has the SQLite chain's record form and HMAC (actors/rules/chain.py),
`seq` counting per shard, and a random chain id from which its genesis hash is derived, so
records of one shard never verify as another's. `audit_chains` holds each chain's head with
an HMAC under the audit key — the file store's checkpoint — and is rewritten in the same
transaction as every append, so it always names the head exactly: a deleted tail, a deleted
or forged head row, or records added past it are found by `open_shard_chain` (which refuses
to extend such a chain) and by `audit verify --database`. A chain deleted whole, head row
and all, is found against the roster (pg_roster.py), which names every shard's chain.

Only the shard's lease holder appends, inside a transaction fenced by
`pg_store.lock_fence`: that lock also serializes the appends, so a deposed holder can never
fork the chain. Functions take a connection and never commit: the caller owns the
transaction; except `append_fenced` (PgAudit's append), `write_chained` (a store batch
chained under PgAudit's lease) and `records_after` (the read-back of a lease), each a whole
fenced transaction (pg_store.FencedTransaction).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import psycopg
from task_ingress.actors.rules.chain import ChainKey, genesis_hash
from task_ingress.actors.rules.shards import Fence
from task_ingress.actors.storage.auditlog import (
    AUDIT_COLUMNS,
    AUDIT_NAMES,
    SINCE_CLOCK_SLACK,
    record_from_row,
)
from task_ingress.actors.storage.chainstart import ChainRefused
from task_ingress.actors.storage.pg_store import FencedTransaction, Statement
from task_ingress.messages.audit import AuditRecord

INSERT_SHARD_AUDIT = (
    f"INSERT INTO audit (shard, {AUDIT_COLUMNS}) VALUES ("
    + ", ".join(["%s"] * (len(AUDIT_NAMES) + 1)) + ")"
)
"""Inserts one record: the shard, then every column in AUDIT_NAMES order."""


@dataclass
class ShardChain:
    """Where the next record of one shard's chain goes: after (seq, head)."""

    shard: int
    chain_id: str
    seq: int
    head: str

    def seal(self, key: ChainKey, fields: dict[str, Any], at: float) -> dict[str, Any]:
        """Give the record its place in the chain (seq, at, prev_hash, hash); advance."""
        record = key.link(fields, self.seq + 1, self.head, at)
        self.seq += 1
        self.head = record["hash"]
        return record


@dataclass(frozen=True)
class ChainHeadRow:
    """A shard's `audit_chains` row."""

    chain_id: str
    seq: int
    hash: str
    at: float
    mac: str

    def verifies(self, key: ChainKey) -> bool:
        """True when the row's MAC holds under `key`."""
        return key.checkpoint_ok(self.chain_id, self.seq, self.hash, self.at, self.mac)

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> ChainHeadRow:
        """A row selected as HEAD_COLUMNS."""
        return cls(str(row[0]), int(row[1]), str(row[2]), float(row[3]), str(row[4]))


HEAD_COLUMNS = "chain_id, seq, hash, at, mac"
"""What `ChainHeadRow.from_row` reads, in its order."""


def read_head_row(conn: psycopg.Connection[Any], shard: int) -> ChainHeadRow | None:
    """The shard's chain row, or None when it has no chain yet."""
    row = conn.execute(f"SELECT {HEAD_COLUMNS} FROM audit_chains WHERE shard = %s",
                       (shard,)).fetchone()
    return None if row is None else ChainHeadRow.from_row(row)


def heads_verifying(conn: psycopg.Connection[Any], key: ChainKey) -> tuple[int, int]:
    """(how many shards' head rows verify under `key`, how many there are); (0, 0) before
    any chain exists (no `audit_chains` table or no row)."""
    found = conn.execute("SELECT to_regclass('audit_chains')").fetchone()
    if found is None or found[0] is None:
        return 0, 0
    rows = conn.execute(f"SELECT {HEAD_COLUMNS} FROM audit_chains").fetchall()
    heads = [ChainHeadRow.from_row(r) for r in rows]
    return sum(head.verifies(key) for head in heads), len(heads)


def _last_record(conn: psycopg.Connection[Any], shard: int) -> dict[str, Any] | None:
    row = conn.execute(f"SELECT {AUDIT_COLUMNS} FROM audit WHERE shard = %s "
                       "ORDER BY seq DESC LIMIT 1", (shard,)).fetchone()
    return None if row is None else _fields(row)


def _fields(row: tuple[Any, ...]) -> dict[str, Any]:
    fields = dict(zip(AUDIT_NAMES, row, strict=True))
    fields["replay"] = bool(fields["replay"])
    return fields


def head_statement(key: ChainKey, chain: ShardChain) -> Statement:
    """The statement that stores the chain's head, authenticated under `key`."""
    at = time.time()
    return ("INSERT INTO audit_chains (shard, chain_id, seq, hash, at, mac) "
            "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (shard) DO UPDATE SET "
            "seq = EXCLUDED.seq, hash = EXCLUDED.hash, at = EXCLUDED.at, mac = EXCLUDED.mac "
            "WHERE audit_chains.chain_id = EXCLUDED.chain_id",
            (chain.shard, chain.chain_id, chain.seq, chain.head, at,
             key.checkpoint_mac(chain.chain_id, chain.seq, chain.head, at)))


def write_head(conn: psycopg.Connection[Any], key: ChainKey, chain: ShardChain) -> None:
    """Authenticate the chain's head under `key` and store it (in the append's
    transaction)."""
    conn.execute(*head_statement(key, chain))


def open_shard_chain(conn: psycopg.Connection[Any], shard: int, key: ChainKey,
                     chain_id: str) -> ShardChain:
    """The shard's chain head, checked against `chain_id`, the chain the roster names for
    the shard (pg_roster.rostered_chain_id; the roster wrote every shard's genesis row).

    Raises ChainRefused when the chain must not be extended: no head row (the shard's chain
    deleted whole, or records left without it), a head row of another chain (replaced), its
    MAC fails (wrong key, forged), or the newest record is not the one the row names (tail
    deleted, records added or rewritten past the head). Call inside a fenced transaction."""
    row = read_head_row(conn, shard)
    last = _last_record(conn, shard)
    hint = f"run `task-ingress audit verify --database URL` (shard {shard})"
    if row is None:
        what = "has records but" if last is not None else "has"
        raise ChainRefused(f"the audit chain of shard {shard} {what} no head row (deleted? "
                           f"the roster names chain {chain_id}); {hint}")
    if row.chain_id != chain_id:
        raise ChainRefused(f"the head row of shard {shard} names chain {row.chain_id}, the "
                           f"roster {chain_id} (chain replaced); {hint}")
    if not row.verifies(key):
        raise ChainRefused(f"the head row of shard {shard}'s audit chain does not verify "
                           f"under this key (wrong key, or forged); {hint}")
    if row.seq == 0:
        ok = last is None and row.hash == genesis_hash(row.chain_id)
    else:
        ok = (last is not None and last["seq"] == row.seq and last["hash"] == row.hash
              and key.seal(last) == row.hash)
    if not ok:
        raise ChainRefused(f"the audit chain of shard {shard} does not end at its head row "
                           f"(seq {row.seq}): tail deleted, or records added or rewritten; "
                           f"{hint}")
    return ShardChain(shard, row.chain_id, row.seq, row.hash)


def _head_read(shard: int) -> Statement:
    return ("SELECT seq, hash, chain_id FROM audit_chains WHERE shard = %s", (shard,))


def _head_of(rows: list[tuple[Any, ...]]) -> tuple[int, str] | None:
    return (int(rows[0][0]), str(rows[0][1])) if rows else None


def current_head(conn: psycopg.Connection[Any], shard: int) -> tuple[int, str] | None:
    """(seq, hash) the shard's head row names now, or None."""
    return _head_of(conn.execute(*_head_read(shard)).fetchall())


class ChainMoved(Exception):
    """The shard's head row no longer names this writer's head: someone else appended."""


def append_fenced(
    conn: psycopg.Connection[Any], fence: Fence, key: ChainKey, chain: ShardChain,
    boxed: list[int] | None,
    records_for: Callable[[list[tuple[int, bytes]]], list[dict[str, Any]]],
) -> list[tuple[int, bytes]]:
    """One append's fenced transaction, in two round trips: BEGIN, the fence, the head row
    and the outbox rows taken (`_take_statement`: those of `boxed` still waiting, or with
    `boxed` None all of the shard's); then the records `records_for(taken)` gives, sealed
    in the chain, and the head row moved, with COMMIT. Returns the rows taken.

    Raises `Fenced`, `ChainMoved` (the head row does not name `chain`'s head) or psycopg's
    errors; on any, nothing is written, and `chain`'s position is left where it was."""
    seq, head = chain.seq, chain.head
    try:
        with FencedTransaction(conn, fence) as tx:
            take = _take_statement(fence.shard, boxed)
            got = tx.begin(_head_read(fence.shard), *([take] if take else []))
            if _head_of(got[0]) != (chain.seq, chain.head):
                raise ChainMoved(f"the head row of shard {fence.shard} moved past seq "
                                 f"{chain.seq} without this runtime")
            taken = _taken(got[1]) if take else []
            _append(tx, key, chain, records_for(taken))
    except BaseException:
        chain.seq, chain.head = seq, head
        raise
    return taken


R = TypeVar("R")


def write_chained(
    conn: psycopg.Connection[Any], fence: Fence, key: ChainKey, seq: int, head: str,
    work: Callable[[sqlite3.Connection], tuple[R, list[dict[str, Any]]]],
) -> tuple[R, ShardChain]:
    """A store batch's fenced transaction under a chain lease (docs/cluster.md), in three
    messages for a batch of creates: BEGIN, the fence and the shard's head row; `work`'s
    reads (store_batch's load); its writes, the records of every outcome it gives, sealed
    after (`seq`, `head`), and the head row moved, with COMMIT.

    `work(conn)` judges the batch on `conn` (writes there are held back) and returns (its
    result, the audit fields of each outcome, in order). Returns the result and the chain's
    position after the records. Raises `Fenced`, `ChainMoved` (the head row does not name
    (`seq`, `head`): nothing is judged) or psycopg's errors; on any, nothing is written."""
    with FencedTransaction(conn, fence) as tx:
        (head_rows,) = tx.begin(_head_read(fence.shard))
        if _head_of(head_rows) != (seq, head):
            raise ChainMoved(f"the head row of shard {fence.shard} is not at seq {seq} "
                             "as lent: the chain moved without this store")
        chain = ShardChain(fence.shard, str(head_rows[0][2]), seq, head)
        result, fields = work(cast(sqlite3.Connection, tx.qmark()))
        _append(tx, key, chain, fields)
    return result, chain


def _append(tx: FencedTransaction, key: ChainKey, chain: ShardChain,
            fields: list[dict[str, Any]]) -> None:
    """Queue the records of `fields`, sealed after `chain`'s head (which moves), and the
    head row's move, for the transaction's COMMIT message."""
    if fields:
        at = time.time()
        sealed = [chain.seal(key, f, at) for f in fields]
        tx.write_rows(INSERT_SHARD_AUDIT, [(chain.shard, *(r[name] for name in AUDIT_NAMES))
                                           for r in sealed])
        tx.write(*head_statement(key, chain))


def records_after(conn: psycopg.Connection[Any], fence: Fence, key: ChainKey,
                  seq: int, head: str) -> list[dict[str, Any]]:
    """The shard's records after (`seq`, `head`), read under the fence: what a store of
    this holding chained under a lease Audit takes back (its store died, or lost its
    connection after sending COMMIT). Two messages.

    Under the fence only this holding appends, so what follows the lent head is its
    store's; it is still checked: each record must seal under `key` and link from the one
    before (the first from `head`), and the head row must name the last. Raises `Fenced`,
    `ChainMoved` (they do not) or psycopg's errors."""
    with FencedTransaction(conn, fence) as tx:
        head_rows, rows = tx.begin(
            _head_read(fence.shard),
            (f"SELECT {AUDIT_COLUMNS} FROM audit WHERE shard = %s AND seq > %s ORDER BY seq",
             (fence.shard, seq)))
    records = [_fields(r) for r in rows]
    at_seq, at_head = seq, head
    for record in records:
        if (record["seq"] != at_seq + 1 or record["prev_hash"] != at_head
                or key.seal(record) != record["hash"]):
            raise ChainMoved(f"record {record['seq']} of shard {fence.shard} does not follow "
                             f"seq {at_seq} of this runtime's chain")
        at_seq, at_head = int(record["seq"]), str(record["hash"])
    if _head_of(head_rows) != (at_seq, at_head):
        raise ChainMoved(f"the head row of shard {fence.shard} does not name seq {at_seq}, "
                         "the last record after the lent head")
    return records


def read_shard_records(conn: psycopg.Connection[Any], shard: int, since: float = 0.0
                       ) -> list[AuditRecord]:
    """Every committed record of the shard's chain (written at or after `since`, unix
    seconds), in seq order.

    With `since`, the read starts after the newest record older than `since` minus
    SINCE_CLOCK_SLACK, found from the tail of the (shard, seq) key, as the SQLite log does
    (`auditlog.read_records`): a daemon taking a shard over reads the last minutes of its
    chain, not the whole chain (there is no index on `at`, which would cost every write),
    so a takeover does not slow down as the chain grows."""
    first = 0
    if since > 0:
        row = conn.execute("SELECT seq FROM audit WHERE shard = %s AND at < %s "
                           "ORDER BY seq DESC LIMIT 1",
                           (shard, since - SINCE_CLOCK_SLACK)).fetchone()
        first = int(row[0]) if row else 0
    rows = conn.execute(f"SELECT {AUDIT_COLUMNS} FROM audit WHERE shard = %s AND seq > %s "
                        "AND at >= %s ORDER BY seq", (shard, first, since)).fetchall()
    return [record_from_row(r) for r in rows]


def shard_rows(conn: psycopg.Connection[Any], shard: int, batch: int = 5000
               ) -> Iterator[dict[str, Any]]:
    """The shard's records as chain fields, in seq order, streamed in batches."""
    after = 0
    while True:
        rows = conn.execute(f"SELECT {AUDIT_COLUMNS} FROM audit WHERE shard = %s AND seq > %s "
                            "ORDER BY seq LIMIT %s", (shard, after, batch)).fetchall()
        if not rows:
            return
        for row in rows:
            fields = _fields(row)
            after = int(fields["seq"])
            yield fields


def _take_statement(shard: int, ids: list[int] | None) -> Statement | None:
    """Delete the shard's outbox rows (all, or those of `ids` still there), returning them:
    the caller chains them in the same transaction. None when `ids` is empty."""
    if ids is None:
        return "DELETE FROM outbox WHERE shard = %s RETURNING id, record", (shard,)
    if ids:
        return ("DELETE FROM outbox WHERE shard = %s AND id = ANY(%s) RETURNING id, record",
                (shard, ids))
    return None


def _taken(rows: list[tuple[Any, ...]]) -> list[tuple[int, bytes]]:
    return sorted((int(i), bytes(r)) for i, r in rows)
