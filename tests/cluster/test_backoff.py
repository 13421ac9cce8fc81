"""A shard whose runtime keeps dying is left alone for a pause that doubles with consecutive
deaths, up to a cap, and counts from one again once it was served for the cap (backoff.py and
the keeper's round)."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest
import structlog
from task_ingress.runtime.cluster.backoff import (
    BACKOFF_CAP,
    START_FAILED_CAP,
    Backoff,
    after_death,
    backoff_delay,
    not_backing_off,
)
from task_ingress.runtime.cluster.keeper import (
    RUNTIME_DIED,
    SHUTDOWN,
    START_FAILED,
    LeaseKeeper,
)
from task_ingress.runtime.cluster.lease import Lease, LeaseTiming

from tests.cluster.test_shard_health import poll


@pytest.mark.parametrize(("deaths", "seconds"), [
    (0, 0.0), (1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 8.0), (6, 16.0), (7, 32.0),
    (8, 60.0), (9, 60.0), (10**6, 60.0),
])
def test_the_pause_doubles_with_every_consecutive_death_up_to_the_cap(
    deaths: int, seconds: float,
) -> None:
    assert backoff_delay(deaths, 0.5, BACKOFF_CAP) == seconds


@pytest.mark.parametrize(("previous", "served_for", "deaths", "until"), [
    (None, 0.0, 1, 100.5),  # the first death: one round interval
    (None, 1000.0, 1, 100.5),
    (Backoff(1, 90.0), 0.2, 2, 101.0),  # died again at once: twice as long
    (Backoff(3, 90.0), 59.9, 4, 104.0),  # served for less than the cap: still consecutive
    (Backoff(8, 90.0), 1.0, 9, 160.0),  # capped
    (Backoff(8, 90.0), 60.0, 1, 100.5),  # served for the cap: counts from one again
])
def test_a_death_counts_as_consecutive_unless_the_shard_was_served_for_the_cap(
    previous: Backoff | None, served_for: float, deaths: int, until: float,
) -> None:
    assert after_death(previous, served_for, 100.0, 0.5, 60.0) == Backoff(deaths, until)


def test_only_shards_whose_pause_is_over_may_be_tried() -> None:
    backoffs = {1: Backoff(1, 10.0), 2: Backoff(4, 20.0)}
    assert not_backing_off([0, 1, 2, 3], backoffs, 5.0) == [0, 3]
    assert not_backing_off([0, 1, 2, 3], backoffs, 10.0) == [0, 1, 3]
    assert not_backing_off([0, 1, 2, 3], backoffs, 20.0) == [0, 1, 2, 3]
    assert not_backing_off([], backoffs, 5.0) == []


def test_a_shard_whose_runtime_keeps_dying_is_taken_again_after_growing_pauses(
    database: str,
) -> None:
    """A real keeper (rounds every 0.5 s, pause cap 2 s) whose shard 1 dies as soon as it is
    served, four times: each time it is acquired again no earlier than 0.5, 1, 2, 2 s after
    the previous acquisition (without the backoff: every round, 0.5 s), and `shard.backoff`
    says so. The fifth runtime lives; served for longer than the cap and then dying, it
    pauses 0.5 s again (deaths count from one). Shard 0, healthy, keeps its first lease."""
    cap = 2.0
    served: set[int] = set()
    acquired: list[Lease] = []
    at: list[float] = []
    lost: list[tuple[int, str]] = []
    die_again: list[bool] = []

    def healthy(shard: int) -> bool:
        # As the daemon's check: only a shard being served can have a dead runtime.
        if shard != 1 or shard not in served:
            return True
        return not (len(at) <= 4 or (len(at) == 5 and die_again))

    async def on_acquired(lease: Lease) -> None:
        if lease.shard == 1:
            at.append(time.monotonic())
        acquired.append(lease)
        served.add(lease.shard)

    async def on_lost(shard: int, why: str) -> None:
        lost.append((shard, why))
        served.discard(shard)

    async def scenario() -> None:
        keeper = LeaseKeeper(database=database, node="a", shards=2,
                             timing=LeaseTiming(ttl=30.0), on_acquired=on_acquired,
                             on_lost=on_lost, healthy=healthy, backoff_cap=cap)
        assert keeper.tick == 0.5
        await keeper.start()
        try:
            await poll(lambda: len(at) == 5 and 1 in served, 30, "shard 1's fifth runtime")
            await poll(lambda: time.monotonic() - at[4] > cap + 0.5, 10, "served past the cap")
            assert len(lost) == 4
            die_again.append(True)
            await poll(lambda: len(at) == 6, 20, "shard 1 acquired after its sixth runtime")
            first = [lease for lease in acquired if lease.shard == 0]
            assert len(first) == 1 and keeper.held[0].epoch == first[0].epoch
        finally:
            await keeper.stop()

    with structlog.testing.capture_logs() as logs:
        asyncio.run(scenario())
    assert lost == [(1, RUNTIME_DIED)] * 5 + [(0, SHUTDOWN), (1, SHUTDOWN)]
    gaps = [later - earlier for earlier, later in itertools.pairwise(at)]
    assert all(gap >= pause for gap, pause in zip(gaps, [0.5, 1.0, 2.0, 2.0, 0.5],
                                                  strict=True)), gaps
    backoffs = [(e["shard"], e["deaths"], e["seconds"]) for e in logs
                if e["event"] == "shard.backoff"]
    assert backoffs == [(1, 1, 0.5), (1, 2, 1.0), (1, 3, 2.0), (1, 4, 2.0), (1, 1, 0.5)]


def test_a_daemon_whose_runtime_of_a_shard_keeps_dying_leaves_it_to_a_daemon_with_room(
    database: str,
) -> None:
    """One shard, two keepers: `a` holds it, `b` has room in its share. `a`'s runtime of
    the shard dies at every start; `b`'s is healthy. Within the wait `b` serves the shard
    (with a 30 s TTL, only a released lease can change hands so soon) and `a` no longer
    does."""
    served: dict[str, set[int]] = {"a": set(), "b": set()}
    acquired: list[tuple[str, Lease]] = []

    def keeper(node: str) -> LeaseKeeper:
        async def on_acquired(lease: Lease) -> None:
            acquired.append((node, lease))
            served[node].add(lease.shard)

        async def on_lost(shard: int, why: str) -> None:
            served[node].discard(shard)

        return LeaseKeeper(database=database, node=node, shards=1,
                           timing=LeaseTiming(ttl=30.0), on_acquired=on_acquired,
                           on_lost=on_lost,
                           healthy=lambda shard: node != "a" or shard not in served[node])

    async def scenario() -> None:
        a, b = keeper("a"), keeper("b")
        await a.start()
        try:
            await b.start()
            try:
                await poll(lambda: 0 in b.held and 0 in served["b"], 20, "b serves shard 0")
                assert 0 not in a.held and not served["a"]
            finally:
                await b.stop()
        finally:
            await a.stop()

    asyncio.run(scenario())
    assert acquired[0][0] == "a"
    assert acquired[-1][0] == "b"


def test_a_shard_whose_runtime_will_not_start_is_tried_again_after_growing_pauses(
    database: str,
) -> None:
    """A real keeper (rounds every 0.5 s, pause cap 2 s) whose start of shard 1 raises four
    times: each retry comes no earlier than 0.5, 1, 2, 2 s after the previous one (before,
    every round: a start and an error line twice a second for as long as the cause lasted),
    `shard.backoff` says so with reason `start_failed`, and the fifth start serves it."""
    at: list[float] = []
    served: set[int] = set()

    async def on_acquired(lease: Lease) -> None:
        if lease.shard == 1:
            at.append(time.monotonic())
            if len(at) <= 4:
                raise RuntimeError("greet marks unreadable")
        served.add(lease.shard)

    async def on_lost(shard: int, why: str) -> None:
        served.discard(shard)

    async def scenario() -> None:
        keeper = LeaseKeeper(database=database, node="a", shards=2,
                             timing=LeaseTiming(ttl=30.0), on_acquired=on_acquired,
                             on_lost=on_lost, backoff_cap=2.0)
        await keeper.start()
        try:
            await poll(lambda: 1 in served, 30, "shard 1 served at its fifth start")
        finally:
            await keeper.stop()

    with structlog.testing.capture_logs() as logs:
        asyncio.run(scenario())
    assert len(at) == 5
    gaps = [later - earlier for earlier, later in itertools.pairwise(at)]
    assert all(gap >= pause for gap, pause in zip(gaps, [0.5, 1.0, 2.0, 2.0], strict=True)), gaps
    backoffs = [(e["reason"], e["deaths"], e["seconds"]) for e in logs
                if e["event"] == "shard.backoff"]
    assert backoffs == [(START_FAILED, 1, 0.5), (START_FAILED, 2, 1.0),
                        (START_FAILED, 3, 2.0), (START_FAILED, 4, 2.0)]


async def nothing_to_start(lease: Lease) -> None:
    return None


async def nothing_lost(shard: int, why: str) -> None:
    return None


def test_a_start_failure_pauses_at_most_ten_seconds_a_death_up_to_the_cap() -> None:
    """The keeper's own choice of cap by reason (no database needed: nothing is started)."""
    keeper = LeaseKeeper(database="postgresql://unused", node="a", shards=2,
                         timing=LeaseTiming(ttl=30.0), on_acquired=nothing_to_start,
                         on_lost=nothing_lost, clock=lambda: 100.0)
    for why, longest in ((START_FAILED, START_FAILED_CAP), (RUNTIME_DIED, BACKOFF_CAP)):
        keeper._backoffs.clear()
        for _ in range(12):
            keeper._back_off(1, why)
        assert keeper._backoffs[1].until - 100.0 == longest, why
