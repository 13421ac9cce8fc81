"""Round trips of the fenced transactions, counted in libpq's own trace of the connection
(every message PostgreSQL answers ends in ReadyForQuery): a store batch of creates chained
under the lease, or (the outbox path) a store batch and its audit append, each take a fixed
few, whatever the batch's size, and still commit all or nothing under the fence."""

from __future__ import annotations

import secrets
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from psycopg.pq import Trace, TransactionStatus
from task_ingress.actors.rules.chain import ChainKey
from task_ingress.actors.rules.shards import Fence, shard_of
from task_ingress.actors.storage import pg_auditlog, pg_store
from task_ingress.actors.storage.pg_auditlog import ShardChain
from task_ingress.actors.storage.pg_roster import rostered_chain_id
from task_ingress.actors.storage.pg_schema import ensure_store_schema
from task_ingress.actors.storage.schema import decode_outbox, encode_outbox
from task_ingress.actors.storage.store_batch import StoreBatch
from task_ingress.messages import CreateTask, IngressContext
from task_ingress.messages.limits import SPEC_LIMITS
from task_ingress.runtime.audit.pg_verify import verify_shard
from task_ingress.runtime.cluster import pg_leases
from task_ingress.runtime.cluster.history import fencing_violations

SHARDS = 4
WS = "ws-a"
SHARD = shard_of(WS, SHARDS)


@contextmanager
def _counting(conn: psycopg.Connection[Any]) -> Iterator[list[int]]:
    """The number of round trips made inside the block (in `[0]` once it ends)."""
    counted = [0]
    with tempfile.TemporaryFile("w+") as trace:
        conn.pgconn.trace(trace.fileno())
        conn.pgconn.set_trace_flags(Trace.SUPPRESS_TIMESTAMPS | Trace.REGRESS_MODE)
        try:
            yield counted
        finally:
            conn.pgconn.untrace()
        trace.seek(0)
        counted[0] = sum(1 for line in trace if line.split("\t")[:1] == ["B"]
                         and "\tReadyForQuery" in line)


def _setup(url: str) -> tuple[psycopg.Connection[Any], Fence]:
    conn = psycopg.connect(url, autocommit=True)
    pg_leases.ensure_schema(conn, SHARDS)
    ensure_store_schema(conn)
    pg_store.ensure_outbox_counter(conn, SHARD)
    lease = pg_leases.acquire(conn, SHARD, "a", 30, time.monotonic())
    assert lease is not None
    return conn, lease.fence


def _creates(conn: psycopg.Connection[Any], fence: Fence, titles: list[str]) -> list[int]:
    """The store's batch (TaskStore.apply_in_order's steps) of creates; their outbox ids."""
    items = [(IngressContext(workspace=WS, peer_id="peer-a", channel="ops",
                             request_id=f"r-{title}"), CreateTask(title=title))
             for title in titles]

    def work(qmark: sqlite3.Connection, next_outbox: int) -> tuple[list[int], int]:
        batch = StoreBatch.load(qmark, items, next_outbox=next_outbox)
        boxes = []
        for ctx, request in items:
            outcome, change = batch.judge(ctx, request, SPEC_LIMITS, time.time())
            assert change is not None
            fields = {"workspace": WS, "channel": "ops", "peer_id": "peer-a", "actor": "a",
                      "request_id": ctx.request_id, "action": outcome.action.value,
                      "outcome": "accepted", "reason": None, "task_id": outcome.task_id,
                      "run_id": None, "payload_size": 1, "replay": False, "trust": None}
            box = batch.apply(change, encode_outbox(fields))
            assert box is not None
            boxes.append(box)
        batch.write(qmark)
        return boxes, max(boxes) + 1

    return pg_store.write_batch(conn, fence, work)


def _chain(conn: psycopg.Connection[Any], fence: Fence, key: ChainKey) -> ShardChain:
    with conn.transaction():
        pg_store.lock_fence(conn, fence)
        return pg_auditlog.open_shard_chain(conn, SHARD, key,
                                            rostered_chain_id(conn, key, SHARD))


def _decoded(taken: list[tuple[int, bytes]]) -> list[dict[str, Any]]:
    fields = [decode_outbox(blob) for _, blob in taken]
    assert all(f is not None for f in fields)
    return [dict(f or {}) for f in fields]


@pytest.mark.parametrize("size", [1, 6])
def test_a_store_batch_of_creates_and_its_audit_append_take_three_and_two_round_trips(
    database: str, size: int,
) -> None:
    conn, fence = _setup(database)
    key = ChainKey(secrets.token_bytes(32))
    with conn:
        chain = _chain(conn, fence, key)
        with _counting(conn) as store_trips:
            boxes = _creates(conn, fence, [f"t{i}" for i in range(size)])
        with _counting(conn) as audit_trips:
            taken = pg_auditlog.append_fenced(conn, fence, key, chain, boxes, _decoded)
        assert (store_trips[0], audit_trips[0]) == (3, 2)
        assert [i for i, _ in taken] == boxes == list(range(1, size + 1))
        assert conn.execute("SELECT count(*) FROM tasks").fetchone() == (size,)
        assert conn.execute("SELECT last FROM outbox_seq WHERE shard = %s",
                            (SHARD,)).fetchone() == (size,)
        assert conn.execute("SELECT count(*) FROM outbox").fetchone() == (0,)
        assert pg_auditlog.current_head(conn, SHARD) == (chain.seq, chain.head) == (size,
                                                                                    chain.head)
        verdict = verify_shard(conn, key, SHARD)
        assert verdict.ok and verdict.records == size, verdict.problems
        assert fencing_violations(conn, SHARDS) == []


@pytest.mark.parametrize("size", [1, 6])
def test_a_store_batch_of_creates_chained_under_the_lease_takes_three_round_trips_in_all(
    database: str, size: int,
) -> None:
    conn, fence = _setup(database)
    key = ChainKey(secrets.token_bytes(32))
    items = [(IngressContext(workspace=WS, peer_id="peer-a", channel="ops",
                             request_id=f"r-{i}"), CreateTask(title=f"t{i}"))
             for i in range(size)]

    def work(qmark: sqlite3.Connection) -> tuple[None, list[dict[str, Any]]]:
        batch = StoreBatch.load(qmark, items, next_outbox=0)
        fields = []
        for ctx, request in items:
            outcome, change = batch.judge(ctx, request, SPEC_LIMITS, time.time())
            assert change is not None and batch.apply(change, None) is None
            fields.append({"workspace": WS, "channel": "ops", "peer_id": "peer-a",
                           "actor": "a", "request_id": ctx.request_id,
                           "action": outcome.action.value, "outcome": "accepted",
                           "reason": None, "task_id": outcome.task_id, "run_id": None,
                           "payload_size": 1, "replay": False, "trust": None})
        batch.write(qmark)
        return None, fields

    with conn:
        chain = _chain(conn, fence, key)
        with _counting(conn) as trips:
            _, after = pg_auditlog.write_chained(conn, fence, key, chain.seq, chain.head, work)
        # BEGIN + fence + head row; the batch's reads; writes + records + head row + COMMIT.
        assert trips[0] == 3
        assert conn.execute("SELECT count(*) FROM tasks").fetchone() == (size,)
        assert conn.execute("SELECT count(*) FROM outbox").fetchone() == (0,)
        assert pg_auditlog.current_head(conn, SHARD) == (after.seq, after.head) == (
            size, after.head)
        verdict = verify_shard(conn, key, SHARD)
        assert verdict.ok and verdict.records == size, verdict.problems
        assert fencing_violations(conn, SHARDS) == []


def test_a_batch_under_a_moved_lease_writes_nothing_and_leaves_the_connection_usable(
    database: str,
) -> None:
    conn, fence = _setup(database)
    key = ChainKey(secrets.token_bytes(32))
    with conn:
        chain = _chain(conn, fence, key)
        boxes = _creates(conn, fence, ["a-1"])
        conn.execute("UPDATE shard_leases SET owner = 'b', epoch = epoch + 1 WHERE shard = %s",
                     (SHARD,))
        with pytest.raises(pg_store.Fenced):
            _creates(conn, fence, ["a-2"])
        position = (chain.seq, chain.head)
        with pytest.raises(pg_store.Fenced):
            pg_auditlog.append_fenced(conn, fence, key, chain, boxes, _decoded)
        assert (chain.seq, chain.head) == position
        assert conn.info.transaction_status == TransactionStatus.IDLE
        assert [r[0] for r in conn.execute("SELECT title FROM tasks").fetchall()] == ["a-1"]
        assert conn.execute("SELECT id FROM outbox").fetchall() == [(1,)]  # left to chain
        assert conn.execute("SELECT count(*) FROM audit").fetchone() == (0,)


def test_a_write_that_fails_at_commit_rolls_the_whole_batch_back(database: str) -> None:
    conn, fence = _setup(database)
    with conn:
        _creates(conn, fence, ["a-1"])
        # Outbox id 2 taken behind the counter's back: the next batch's outbox INSERT,
        # sent with its COMMIT, fails, and its task must not stay behind.
        conn.execute("INSERT INTO outbox (shard, id, record) VALUES (%s, 2, 'x')", (SHARD,))
        with pytest.raises(psycopg.errors.UniqueViolation):
            _creates(conn, fence, ["a-2"])
        assert conn.info.transaction_status == TransactionStatus.IDLE
        assert [r[0] for r in conn.execute("SELECT title FROM tasks").fetchall()] == ["a-1"]
        assert conn.execute("SELECT last FROM outbox_seq WHERE shard = %s",
                            (SHARD,)).fetchone() == (1,)
        conn.execute("DELETE FROM outbox WHERE id = 2")
        assert _creates(conn, fence, ["a-3"]) == [2]
