"""Lease timing and shard choice: pure decisions, by table."""

from __future__ import annotations

import pytest
from task_ingress.actors.rules.shards import shard_of
from task_ingress.runtime.cluster.lease import (
    Lease,
    LeaseTiming,
    fair_share,
    renew_due,
    shards_to_acquire,
    shards_to_release,
    should_serve,
)

TIMING = LeaseTiming(ttl=9.0)  # renew every 3 s, stop serving 4.5 s after the last renew


@pytest.mark.parametrize(("renewed_at", "now", "serve"), [
    (100.0, 100.0, True),     # just acquired
    (100.0, 104.4, True),     # inside TTL/2
    (100.0, 104.5, False),    # TTL/2 without a good renew: stop, 4.5 s before expiry
    (100.0, 108.9, False),    # still before the lease could be taken: already stopped
    (100.0, 99.0, False),     # a clock going backwards is not trusted
])
def test_a_holder_serves_only_within_half_the_ttl_of_its_last_renew(
    renewed_at: float, now: float, serve: bool
) -> None:
    lease = Lease(shard=0, owner="a", epoch=1, renewed_at=renewed_at)
    assert should_serve(lease, now, TIMING) is serve


def test_without_a_lease_nothing_is_served() -> None:
    assert should_serve(None, 0.0, TIMING) is False


@pytest.mark.parametrize(("now", "due"), [(100.0, False), (102.9, False), (103.0, True)])
def test_renew_falls_due_every_third_of_the_ttl(now: float, due: bool) -> None:
    assert renew_due(Lease(0, "a", 1, 100.0), now, TIMING) is due


def test_the_renew_falls_due_before_serving_must_stop_and_that_before_expiry() -> None:
    assert TIMING.renew_interval < TIMING.stop_serving_after < TIMING.ttl


@pytest.mark.parametrize("kwargs", [
    {"ttl": 0.0},
    {"ttl": 9.0, "stop_after": 9.0},        # would serve until the lease can be taken
    {"ttl": 9.0, "renew_every": 5.0},       # first renew after serving stopped
    {"ttl": 9.0, "renew_every": 0.0},
])
def test_timings_that_could_serve_past_expiry_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        LeaseTiming(**kwargs)


def test_a_workspace_maps_to_the_same_shard_everywhere_and_shards_are_all_used() -> None:
    # Fixed values: the mapping must never change between releases (workspaces would move).
    assert [shard_of(ws, 8) for ws in ("ws", "ops", "acme")] == [6, 1, 0]
    assert shard_of("ws", 1) == 0
    spread = {shard_of(f"ws-{i}", 4) for i in range(64)}
    assert spread == {0, 1, 2, 3}
    with pytest.raises(ValueError):
        shard_of("ws", 0)


@pytest.mark.parametrize(("shards", "live", "share"), [
    (4, 1, 4), (4, 2, 2), (4, 3, 2), (16, 3, 6), (3, 5, 1), (4, 0, 4)])
def test_a_daemon_aims_for_the_ceiling_of_shards_over_live_daemons(
    shards: int, live: int, share: int
) -> None:
    assert fair_share(shards, live) == share


def test_a_keeper_asks_only_for_free_shards_up_to_its_share() -> None:
    picked = shards_to_acquire(frozenset({0}), [1, 2, 3], share=2, node="node-a")
    assert len(picked) == 1 and picked[0] in {1, 2, 3}
    assert shards_to_acquire(frozenset({0, 1}), [2, 3], share=2, node="node-a") == []
    assert sorted(shards_to_acquire(frozenset(), [3, 1], share=5, node="x")) == [1, 3]


@pytest.mark.parametrize(("held", "holdings", "unowned", "released"), [
    # a newcomer (node c, none) joins a 2/2 split of 4 shards: both at the ceiling give one
    ({0, 1}, {"a": 2, "b": 2, "c": 0}, 0, [1]),
    # above the ceiling: the excess goes, highest first
    ({0, 1, 2, 3}, {"a": 4, "b": 0}, 0, [3, 2]),
    # free shards exist: nobody gives back, the short daemon takes those first
    ({0, 1, 2, 3}, {"a": 4, "b": 0}, 1, []),
    # balanced as well as it can be: nothing moves
    ({0, 1}, {"a": 2, "b": 1, "c": 1}, 0, []),
])
def test_a_keeper_gives_back_shards_only_to_let_a_short_daemon_reach_its_share(
    held: set[int], holdings: dict[str, int], unowned: int, released: list[int]
) -> None:
    assert shards_to_release(frozenset(held), 4, holdings, unowned) == released
