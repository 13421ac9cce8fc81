"""The keeper's watchdog outlives a failing health check and a failing stop: it is what stops
serving a lease that went late, so nothing but its cancellation may end it."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import psycopg
import structlog
from task_ingress.runtime.cluster.keeper import (
    GIVEN_BACK,
    LOST_LATE,
    RUNTIME_DIED,
    SHUTDOWN,
    LeaseKeeper,
)
from task_ingress.runtime.cluster.lease import Lease, LeaseTiming

from tests.cluster.test_shard_health import poll, reacquired_after_its_runtime_died


async def nothing_to_start(lease: Lease) -> None:
    return None


def test_a_raising_health_check_loses_its_shard_and_a_late_lease_is_still_lost_after_it(
    database: str,
) -> None:
    """Shard 1's health check raises: the shard is lost with `runtime_died` and the failure
    logged. Then shard 0's renews are blocked (the test holds its lease row locked, as a hung
    database would) until it goes late: the watchdog, still running, stops serving it."""
    broken: set[int] = set()
    lost: list[tuple[int, str]] = []

    def healthy(shard: int) -> bool:
        if shard in broken:
            raise RuntimeError(f"cannot tell for shard {shard}")
        return True

    async def on_lost(shard: int, why: str) -> None:
        lost.append((shard, why))
        broken.discard(shard)

    async def scenario() -> None:
        # TTL 6 s: a lease goes late 3 s after its last good renew.
        keeper = LeaseKeeper(database=database, node="a", shards=2,
                             timing=LeaseTiming(ttl=6.0), on_acquired=nothing_to_start,
                             on_lost=on_lost, healthy=healthy)
        await keeper.start()
        locker: psycopg.AsyncConnection[Any] | None = None
        try:
            await poll(lambda: set(keeper.held) == {0, 1}, 20, "both shards held")
            broken.add(1)
            await poll(lambda: bool(lost), 20, "shard 1 lost")
            assert lost == [(1, RUNTIME_DIED)]
            assert 0 in keeper.held
            locker = await psycopg.AsyncConnection.connect(database)
            await locker.execute("SELECT * FROM shard_leases WHERE shard = 0 FOR UPDATE")
            await poll(lambda: (0, LOST_LATE) in lost, 20, "shard 0 lost as late")
            assert 0 not in keeper.held
        finally:
            if locker is not None:
                with contextlib.suppress(Exception):
                    await locker.close()
            await keeper.stop()

    with structlog.testing.capture_logs() as logs:
        asyncio.run(scenario())
    failed = [e for e in logs if e["event"] == "keeper.health_check_failed"]
    assert failed and failed[0]["shard"] == 1
    assert "cannot tell for shard 1" in failed[0]["error"]


def test_a_shard_whose_stop_raises_is_still_dropped_and_released_and_the_watchdog_goes_on(
    database: str,
) -> None:
    """The daemon's on_lost raises when shard 1's runtime died: the keeper drops the lease
    all the same and releases it (with a 30 s TTL, only a released lease is acquired again,
    under epoch + 1, within the wait), logs the failure, and its watchdog still loses
    shard 0 when that one dies later."""
    sick: set[int] = set()
    lost: list[tuple[int, str]] = []
    acquired: list[Lease] = []

    async def on_acquired(lease: Lease) -> None:
        acquired.append(lease)

    async def on_lost(shard: int, why: str) -> None:
        lost.append((shard, why))
        sick.discard(shard)
        if len(lost) == 1:
            raise RuntimeError("could not stop serving")

    async def scenario() -> None:
        keeper = LeaseKeeper(database=database, node="a", shards=2,
                             timing=LeaseTiming(ttl=30.0), on_acquired=on_acquired,
                             on_lost=on_lost, healthy=lambda shard: shard not in sick)
        await keeper.start()
        try:
            before = await reacquired_after_its_runtime_died(keeper, sick, acquired)
            assert keeper.held[1].epoch == before[1].epoch + 1
            sick.add(0)
            await poll(lambda: (0, RUNTIME_DIED) in lost, 20, "shard 0 lost")
            assert lost == [(1, RUNTIME_DIED), (0, RUNTIME_DIED)]
        finally:
            await keeper.stop()

    with structlog.testing.capture_logs() as logs:
        asyncio.run(scenario())
    failed = [e for e in logs if e["event"] == "shard.stop_failed"]
    assert len(failed) == 1
    assert (failed[0]["shard"], failed[0]["reason"]) == (1, RUNTIME_DIED)
    assert "could not stop serving" in failed[0]["error"]


def _raising_on(why_raises: str, lost: list[tuple[int, str]]) -> Any:
    async def on_lost(shard: int, why: str) -> None:
        lost.append((shard, why))
        if why == why_raises:
            raise RuntimeError(f"could not stop serving shard {shard}")
    return on_lost


def test_a_stop_that_raises_at_shutdown_still_releases_every_lease(database: str) -> None:
    """At `stop()` every shard's stop raises: the keeper still releases both leases (TTL 30 s:
    only a release lets another daemon take them within the wait) and stop() returns."""
    lost: list[tuple[int, str]] = []

    async def scenario() -> None:
        a = LeaseKeeper(database=database, node="a", shards=2, timing=LeaseTiming(ttl=30.0),
                        on_acquired=nothing_to_start, on_lost=_raising_on(SHUTDOWN, lost))
        await a.start()
        await poll(lambda: set(a.held) == {0, 1}, 20, "both shards held by a")
        await a.stop()
        b = LeaseKeeper(database=database, node="b", shards=2, timing=LeaseTiming(ttl=30.0),
                        on_acquired=nothing_to_start, on_lost=_raising_on("", []))
        await b.start()
        try:
            await poll(lambda: set(b.held) == {0, 1}, 20, "both shards taken by b")
        finally:
            await b.stop()

    with structlog.testing.capture_logs() as logs:
        asyncio.run(scenario())
    assert sorted(lost) == [(0, SHUTDOWN), (1, SHUTDOWN)]
    assert sorted(e["shard"] for e in logs if e["event"] == "shard.stop_failed") == [0, 1]


def test_a_stop_that_raises_when_giving_a_shard_back_still_releases_it(database: str) -> None:
    """A second daemon joins, so the first gives one of its two shards back; that shard's stop
    raises. The lease is released all the same: the newcomer takes it well within the 30 s
    TTL."""
    lost: list[tuple[int, str]] = []

    async def scenario() -> None:
        a = LeaseKeeper(database=database, node="a", shards=2, timing=LeaseTiming(ttl=30.0),
                        on_acquired=nothing_to_start, on_lost=_raising_on(GIVEN_BACK, lost))
        await a.start()
        b: LeaseKeeper | None = None
        try:
            await poll(lambda: set(a.held) == {0, 1}, 20, "both shards held by a")
            b = LeaseKeeper(database=database, node="b", shards=2,
                            timing=LeaseTiming(ttl=30.0), on_acquired=nothing_to_start,
                            on_lost=_raising_on("", []))
            await b.start()
            await poll(lambda: len(b.held) == 1 if b else False, 20, "one shard taken by b")
        finally:
            if b is not None:
                await b.stop()
            await a.stop()

    with structlog.testing.capture_logs() as logs:
        asyncio.run(scenario())
    assert [why for _, why in lost].count(GIVEN_BACK) == 1
    assert [e["reason"] for e in logs if e["event"] == "shard.stop_failed"] == [GIVEN_BACK]
