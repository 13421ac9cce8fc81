"""The cluster bench's workspaces fall evenly on its shards (bench/cluster.py)."""

from __future__ import annotations

from collections import Counter

import pytest
from task_ingress.actors.rules.shards import shard_of
from task_ingress.bench.cluster import spread_workspaces


@pytest.mark.parametrize("count, shards", [(12, 12), (24, 12), (5, 12), (7, 3), (1, 1)])
def test_the_benchs_workspaces_fall_evenly_on_its_shards(count: int, shards: int) -> None:
    names = spread_workspaces(count, shards)
    assert len(names) == len(set(names)) == count
    per_shard = Counter(shard_of(name, shards) for name in names)
    # Every shard gets count // shards or one more; none is left out while another has two.
    assert set(per_shard.values()) <= {count // shards, count // shards + 1} - {0}
    assert len(per_shard) == min(count, shards)


def test_names_in_order_would_leave_shards_idle() -> None:
    # Why the bench spreads them: ws-0 ... ws-11 cover only 8 of 12 shards.
    assert len({shard_of(f"ws-{i}", 12) for i in range(12)}) == 8
