"""The lease keeper against a real PostgreSQL: stopping it never leaves a lease behind;
given the audit key, its start sets every shard's chain up (the roster)."""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from typing import Any

import psycopg
from task_ingress.actors.rules.chain import ChainKey
from task_ingress.actors.storage.pg_auditlog import read_head_row
from task_ingress.actors.storage.pg_roster import read_roster
from task_ingress.runtime.cluster import pg_leases
from task_ingress.runtime.cluster.keeper import LeaseKeeper, acquire_or_clear
from task_ingress.runtime.cluster.lease import Lease, LeaseTiming
from task_ingress.runtime.cluster.setup import ensure_cluster_database


def test_a_lease_acquired_while_the_keeper_stops_is_released_not_left_to_expire(
    database: str,
) -> None:
    """Shard 1 is held by another node until it expires; the keeper's acquire of it commits
    and is held back until the keeper has been told to stop. The keeper must give it back
    at once instead of leaving it held for a whole TTL by a daemon that is gone."""
    with psycopg.connect(database, autocommit=True) as conn:
        ensure_cluster_database(conn, shards=2)
        assert pg_leases.acquire(conn, 1, "other", 1.0, time.monotonic()) is not None
    committed, go = threading.Event(), threading.Event()

    def slow_acquire(conn: psycopg.Connection[Any], shard: int, *args: Any) -> Lease | None:
        got = acquire_or_clear(conn, shard, *args)
        if shard == 1 and got is not None:
            committed.set()
            go.wait(10)
        return got

    async def noop_start(lease: Lease) -> None:
        return None

    async def noop_stop(shard: int, why: str) -> None:
        return None

    async def scenario() -> None:
        keeper = LeaseKeeper(database=database, node="a", shards=2,
                             timing=LeaseTiming(ttl=30.0), on_acquired=noop_start,
                             on_lost=noop_stop, acquire=slow_acquire)
        await keeper.start()
        assert set(keeper.held) == {0}
        assert await asyncio.to_thread(committed.wait, 20), "shard 1 never acquired"
        stopping = asyncio.create_task(keeper.stop())
        await asyncio.sleep(0.2)  # stop() is under way, the acquire still in its thread
        go.set()
        await asyncio.wait_for(stopping, 30)

    asyncio.run(scenario())
    with psycopg.connect(database, autocommit=True) as conn:
        owners = {s.shard: s.owner for s in pg_leases.status(conn)}
    assert owners == {0: None, 1: None}, owners


def test_a_keeper_given_the_audit_key_sets_every_shards_chain_up_at_start(
    database: str,
) -> None:
    """The daemon's start writes the chain roster before any shard's runtime opens a
    chain: a shard never served is pinned too, so emptying it later is found."""
    key = ChainKey(secrets.token_bytes(32))

    async def noop_start(lease: Lease) -> None:
        return None

    async def noop_stop(shard: int, why: str) -> None:
        return None

    async def scenario() -> None:
        keeper = LeaseKeeper(database=database, node="a", shards=3,
                             timing=LeaseTiming(ttl=30.0), on_acquired=noop_start,
                             on_lost=noop_stop, audit_key=key)
        await keeper.start()
        await keeper.stop()

    asyncio.run(scenario())
    with psycopg.connect(database, autocommit=True) as conn:
        roster = read_roster(conn)
        heads = [read_head_row(conn, shard) for shard in range(3)]
    assert roster is not None and roster.verifies(key)
    assert [h.chain_id if h else None for h in heads] == list(roster.chain_ids)
