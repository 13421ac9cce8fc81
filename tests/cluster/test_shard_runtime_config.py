"""What `serve --cluster` gives each held shard's runtime: the options it was told."""

from __future__ import annotations

import pytest
from task_ingress.runtime.cluster.lease import Lease
from task_ingress.runtime.cluster.serve import ClusterOptions, shard_runtime_config
from task_ingress.runtime.nats.settings import ServeSettings


@pytest.mark.parametrize("mode", ["inprocess", "pipeline"])
def test_a_shard_runtime_runs_in_the_process_mode_serve_was_given(mode: str) -> None:
    # serve --cluster --process-mode pipeline was accepted and then ignored: every shard
    # ran in-process.
    settings = ServeSettings(process_mode=mode, peer_rate=7.0)
    cluster = ClusterOptions(database="postgresql://u@127.0.0.1:1/db", shards=4,
                             workspaces=("ws",))
    config = shard_runtime_config(settings, cluster, Lease(2, "node-a", 5, 0.0),
                                  clock=lambda: 0.0)
    assert config.process_mode == mode
    assert config.fence is not None and config.fence.epoch == 5
    assert config.peer_rate == 7.0
