"""Shard leases against a real PostgreSQL: exclusive, epoch-fenced, expiring."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest
from task_ingress.runtime.cluster import pg_leases
from task_ingress.runtime.cluster.lease import Lease


def _connect(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url, autocommit=True)


def _wait_expired(conn: psycopg.Connection[Any], shard: int) -> None:
    """Poll (bounded) until the database says the shard's lease has expired."""
    for _ in range(200):
        if pg_leases.status(conn)[shard].owner is None:
            return
        time.sleep(0.05)
    raise AssertionError("lease never expired")


def test_two_owners_racing_for_a_shard_exactly_one_wins(database: str) -> None:
    with _connect(database) as setup:
        pg_leases.ensure_schema(setup, shards=4)
    for shard in range(4):
        barrier = threading.Barrier(2)
        won: dict[str, Lease | None] = {}

        def race(owner: str, shard: int = shard, barrier: threading.Barrier = barrier,
                 won: dict[str, Lease | None] = won) -> None:
            with _connect(database) as conn:
                barrier.wait()
                won[owner] = pg_leases.acquire(conn, shard, owner, ttl=30, sent_at=0.0)

        threads = [threading.Thread(target=race, args=(o,)) for o in ("a", "b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winners = [lease for lease in won.values() if lease is not None]
        assert len(winners) == 1 and winners[0].epoch == 1
    with _connect(database) as conn:
        assert all(s.owner in ("a", "b") and s.epoch == 1 for s in pg_leases.status(conn))


def test_only_the_holder_with_its_epoch_renews_and_a_release_keeps_the_epoch(
    database: str,
) -> None:
    with _connect(database) as conn:
        pg_leases.ensure_schema(conn, shards=2)
        lease = pg_leases.acquire(conn, 0, "a", ttl=30, sent_at=1.0)
        assert lease is not None
        assert pg_leases.acquire(conn, 0, "b", ttl=30, sent_at=1.0) is None   # held
        assert pg_leases.acquire(conn, 0, "a", ttl=30, sent_at=1.0) is None   # even by a
        assert pg_leases.renew(conn, Lease(0, "b", 1, 0.0), ttl=30, sent_at=2.0) is None
        assert pg_leases.renew(conn, Lease(0, "a", 2, 0.0), ttl=30, sent_at=2.0) is None
        renewed = pg_leases.renew(conn, lease, ttl=30, sent_at=2.0)
        assert renewed == Lease(0, "a", 1, 2.0)
        assert pg_leases.release(conn, lease)
        assert not pg_leases.release(conn, lease)
        assert pg_leases.renew(conn, lease, ttl=30, sent_at=3.0) is None      # released
        again = pg_leases.acquire(conn, 0, "b", ttl=30, sent_at=3.0)
        assert again is not None and again.epoch == 2
        history = conn.execute(
            "SELECT epoch, owner FROM lease_history WHERE shard = 0 ORDER BY epoch").fetchall()
        assert history == [(1, "a"), (2, "b")]


def test_an_owner_that_stops_renewing_loses_the_shard_to_the_next_epoch(database: str) -> None:
    with _connect(database) as conn:
        pg_leases.ensure_schema(conn, shards=1)
        first = pg_leases.acquire(conn, 0, "a", ttl=0.3, sent_at=0.0)
        assert first is not None
        _wait_expired(conn, 0)          # a pauses: no renew
        assert pg_leases.renew(conn, first, ttl=0.3, sent_at=1.0) is None
        second = pg_leases.acquire(conn, 0, "b", ttl=30, sent_at=1.0)
        assert second is not None and second.epoch == first.epoch + 1
        row = pg_leases.status(conn)[0]
        assert (row.owner, row.epoch) == ("b", 2)
        assert row.held_for is not None and row.expires_in is not None


def test_a_database_set_up_for_other_shard_counts_is_refused(database: str) -> None:
    with _connect(database) as conn:
        assert pg_leases.shard_count(conn) is None
        pg_leases.ensure_schema(conn, shards=4)
        pg_leases.ensure_schema(conn, shards=4)     # idempotent
        assert pg_leases.shard_count(conn) == 4
        with pytest.raises(pg_leases.ShardCountMismatch):
            pg_leases.ensure_schema(conn, shards=8)
