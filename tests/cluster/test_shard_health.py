"""A shard whose runtime stopped on its own is given up, released and served again by a fresh
runtime under a new epoch (the keeper's `healthy` check, the cluster daemon's answer to it)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from task_ingress.actors.rules.shards import shard_of
from task_ingress.runtime import IngressRuntime, RuntimeConfig
from task_ingress.runtime.cluster import pg_leases
from task_ingress.runtime.cluster.keeper import RUNTIME_DIED, LeaseKeeper
from task_ingress.runtime.cluster.lease import Lease, LeaseTiming
from task_ingress.runtime.cluster.nats_cluster import NatsCluster
from task_ingress.runtime.cluster.serve import ClusterDaemon, ClusterOptions, ShardServing
from task_ingress.runtime.nats.settings import ServeSettings

from tests.cluster.load import TRUST_POLL, Load, wait_until
from tests.cluster.test_cluster_serve import SHARDS, WORKSPACES, owners
from tests.conftest import _children, _new_children

TTL = 30.0
"""The cluster daemon's lease TTL: longer than any wait below, so a shard taken again within
one was released, not left to expire."""


async def poll(check: Callable[[], bool], timeout: float, what: str) -> None:
    """`wait_until` on the event loop (bounded)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.05)


async def reacquired_after_its_runtime_died(keeper: LeaseKeeper, sick: set[int],
                                            acquired: list[Lease], shard: int = 1
                                            ) -> dict[int, Lease]:
    """With both shards held, mark `shard`'s runtime dead and wait (bounded) until the keeper
    has acquired it again under a newer epoch; the leases held before."""
    await poll(lambda: set(keeper.held) == {0, 1}, 20, "both shards held")
    before = dict(keeper.held)
    sick.add(shard)
    await poll(lambda: any(lease.shard == shard and lease.epoch > before[shard].epoch
                           for lease in acquired), 20, f"shard {shard} acquired again")
    return before


def test_a_keeper_gives_up_a_shard_whose_runtime_died_and_takes_it_again_under_a_new_epoch(
    database: str,
) -> None:
    """Shard 1's runtime is reported dead: the keeper loses it with `runtime_died`, leaves
    shard 0 alone, and releases the lease at once — with a 30 s TTL, only a released lease
    can be acquired again (by its own next round, under the next epoch) within the wait."""
    sick: set[int] = set()
    lost: list[tuple[int, str]] = []
    acquired: list[Lease] = []

    async def on_acquired(lease: Lease) -> None:
        acquired.append(lease)

    async def on_lost(shard: int, why: str) -> None:
        lost.append((shard, why))
        sick.discard(shard)  # the daemon stopped serving it: the dead runtime is gone

    async def scenario() -> None:
        keeper = LeaseKeeper(database=database, node="a", shards=2,
                             timing=LeaseTiming(ttl=30.0), on_acquired=on_acquired,
                             on_lost=on_lost, healthy=lambda shard: shard not in sick)
        await keeper.start()
        try:
            before = await reacquired_after_its_runtime_died(keeper, sick, acquired)
            assert lost == [(1, RUNTIME_DIED)]
            assert keeper.held[1].epoch == before[1].epoch + 1
            assert keeper.held[0].epoch == before[0].epoch
        finally:
            await keeper.stop()

    asyncio.run(scenario())


def test_only_a_started_runtime_that_stopped_while_served_makes_a_shard_unhealthy(
    tmp_path: Path,
) -> None:
    daemon = ClusterDaemon(
        ServeSettings(nats_url="nats://127.0.0.1:1"),
        ClusterOptions(database="postgresql://nobody@127.0.0.1:1/none", shards=2,
                       workspaces=("ws",)))
    lease = Lease(shard=0, owner="node", epoch=1, renewed_at=0.0)
    assert daemon._shard_healthy(0)  # not served at all
    daemon.serving[0] = ShardServing(lease)  # no workspace in the shard: no runtime
    assert daemon._shard_healthy(0)
    runtime = IngressRuntime(RuntimeConfig(store_path=str(tmp_path / "s.db"),
                                           audit_key="00" * 32))
    serving = daemon.serving[0] = ShardServing(lease, runtime=runtime)
    try:
        assert daemon._shard_healthy(0)  # still starting: not alive, not dead either
        runtime.start()
        serving.started = True
        assert daemon._shard_healthy(0)
    finally:
        runtime.close()
    assert not daemon._shard_healthy(0)
    del daemon.serving[0]  # no longer served (stopped by the daemon): not ours to judge
    assert daemon._shard_healthy(0)


class RunningCluster:
    """A ClusterDaemon serving on a thread of the test (so its shards' runtimes are in
    reach); `stop()` stops it gracefully and returns its exit status."""

    def __init__(self, daemon: ClusterDaemon) -> None:
        self.daemon = daemon
        self.result: dict[str, Any] = {}
        self.thread = threading.Thread(target=self._run, name="test-cluster-daemon",
                                       daemon=True)
        self.thread.start()
        assert daemon.ready.wait(30), "cluster daemon not ready"
        if "error" in self.result:
            self.thread.join(30)
            raise self.result["error"]

    def _run(self) -> None:
        try:
            self.result["status"] = self.daemon.run_sync()
        except BaseException as exc:  # surfaced by the ready check
            self.result["error"] = exc
            self.daemon.ready.set()

    def stop(self) -> int | None:
        if self.thread.is_alive():
            self.daemon.request_stop()
            self.thread.join(60)
            assert not self.thread.is_alive(), "cluster daemon did not stop"
        status: int | None = self.result.get("status")
        return status


@pytest.fixture
def audit_key_env(cluster_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cluster's audit key where the daemon and its runtimes read it."""
    monkeypatch.setenv("TASK_INGRESS_AUDIT_KEY", (cluster_dir / "audit.key").read_text())


@pytest.fixture
def cluster_daemon(database: str, nats_cluster: NatsCluster, cluster_dir: Path,
                   audit_key_env: None) -> Iterator[RunningCluster]:
    """One in-process cluster daemon holding all 4 shards of the test workspaces, stopped at
    teardown with a leaked-process check."""
    before = _children()
    settings = ServeSettings(
        nats_url=nats_cluster.urls[0], nats_token=nats_cluster.token,
        key_file=str(cluster_dir / "cluster.key"), store=str(cluster_dir / "cluster"),
        ready_file=str(cluster_dir / "node-0.ready.json"), greet_interval=1.0, peer_rate=0,
        trust_poll_interval=TRUST_POLL)
    options = ClusterOptions(database=database, shards=SHARDS, workspaces=tuple(WORKSPACES),
                             lease_ttl=TTL, node_id="node-0")
    running = RunningCluster(ClusterDaemon(settings, options))
    try:
        yield running
    finally:
        running.stop()
        leaked = _new_children(before)
        assert not leaked, f"processes left behind: {leaked}"


def serving_started(daemon: ClusterDaemon, shard: int) -> ShardServing | None:
    """The shard's serving entry once its runtime started and is alive, else None."""
    serving = daemon.serving.get(shard)
    if serving is None or not serving.started or serving.runtime is None:
        return None
    return serving if serving.runtime.alive() else None


def test_a_shard_whose_runtime_stopped_on_its_own_is_served_again_by_a_fresh_runtime(
    cluster_daemon: RunningCluster, database: str, nats_cluster: NatsCluster,
    cluster_dir: Path,
) -> None:
    """The test closes one shard's runtime behind the daemon's back — to the daemon exactly a
    runtime that stopped on its own. Within a bounded wait the shard is served by a new,
    alive runtime under a higher epoch (well before the lease could have expired: it was
    released), and its workspaces accept writes again; the other shards keep their runtimes
    and leases."""
    daemon = cluster_daemon.daemon
    wait_until(lambda: all(serving_started(daemon, s) for s in range(SHARDS)), 20,
               "every shard served by a started runtime")
    load = Load(cluster_dir / "node-0.ready.json", nats_cluster.urls[1], WORKSPACES, database)
    try:
        load.greet_all()
        assert all(r["accepted"] for r in load.round().values())
        shard = shard_of("ws-1", SHARDS)
        shard_ws = [ws for ws in WORKSPACES if shard_of(ws, SHARDS) == shard]
        others = {s: daemon.serving[s] for s in range(SHARDS) if s != shard}
        dead = daemon.serving[shard]
        assert dead.runtime is not None
        dead.runtime.close()

        wait_until(lambda: (s := serving_started(daemon, shard)) is not None and s is not dead,
                   20, f"shard {shard} served by a fresh runtime")
        fresh = daemon.serving[shard]
        assert fresh.runtime is not dead.runtime
        assert fresh.lease.epoch > dead.lease.epoch
        assert all(daemon.serving.get(s) is serving for s, serving in others.items())
        with psycopg.connect(database, autocommit=True) as conn:
            row = {s.shard: s for s in pg_leases.status(conn)}[shard]
        assert (row.owner, row.epoch) == ("node-0", fresh.lease.epoch)

        load.greet_all()  # the fresh runtime's presence starts empty: peers greet again
        for ws in shard_ws:
            reply = load.send(ws)
            assert reply["accepted"], reply
    finally:
        load.close()
    assert cluster_daemon.stop() == 0
    assert set(owners(database).values()) == {None}


def daemon_subjects(nats: NatsCluster, node: str) -> list[str]:
    """Every subject the daemon's NATS connection subscribes to, by nats-server's monitor
    (the daemon connects to the first server)."""
    url = f"http://127.0.0.1:{nats.monitor[0]}/connz?subs=1"
    with urllib.request.urlopen(url, timeout=5) as resp:
        conns = json.load(resp)["connections"]
    return [subject for conn in conns if conn.get("name") == f"task-ingress-cluster-{node}"
            for subject in conn.get("subscriptions_list", [])]


def test_a_shard_lost_while_its_runtime_was_still_subscribing_leaves_no_subscription_behind(
    cluster_daemon: RunningCluster, database: str, nats_cluster: NatsCluster,
    cluster_dir: Path,
) -> None:
    """A shard's fresh runtime dies after it started but before its workspaces were
    subscribed (the test closes it there): the shard is lost while its start goes on
    subscribing and starts greeting. Once the shard is served again, each of its workspaces
    has one set of subscriptions — the serving one's — and the lost start's greeter ended."""
    daemon = cluster_daemon.daemon
    wait_until(lambda: all(serving_started(daemon, s) for s in range(SHARDS)), 20,
               "every shard served by a started runtime")
    shard = shard_of("ws-1", SHARDS)
    shard_ws = [ws for ws in WORKSPACES if shard_of(ws, SHARDS) == shard]

    def subscriptions() -> dict[str, int]:
        return {ws: sum(1 for s in daemon_subjects(nats_cluster, "node-0")
                        if ws in s.split(".")) for ws in shard_ws}

    # A started runtime is not yet a subscribed shard: its greet marks are loaded and its
    # workspaces subscribed after the start.
    wait_until(lambda: all(subscriptions().values()), 20, "every workspace subscribed")
    per_ws = subscriptions()
    first = daemon.serving[shard]
    caught: list[ShardServing] = []
    subscribe = daemon._subscribe

    async def die_before_subscribing(serving: ShardServing, ws: str, handler: Any) -> None:
        if serving.lease.shard == shard and serving is not first and not caught:
            caught.append(serving)
            assert serving.runtime is not None
            await asyncio.to_thread(serving.runtime.close)
            await poll(lambda: daemon.serving.get(shard) is not serving, 20, "shard lost")
        await subscribe(serving, ws, handler)

    daemon._subscribe = die_before_subscribing  # type: ignore[method-assign]
    assert first.runtime is not None
    first.runtime.close()
    wait_until(lambda: bool(caught) and (s := serving_started(daemon, shard)) is not None
               and s is not caught[0] and s is not first, 20,
               f"shard {shard} served by a third runtime")
    third = daemon.serving[shard]
    assert third.lease.epoch > caught[0].lease.epoch > first.lease.epoch
    load = Load(cluster_dir / "node-0.ready.json", nats_cluster.urls[1], shard_ws, database)
    try:
        load.greet_all()  # answered: the third runtime's workspaces are subscribed
        for ws in shard_ws:
            assert load.send(ws)["accepted"]
    finally:
        load.close()
    wait_until(lambda: caught[0].greeter is not None and caught[0].greeter.done(), 10,
               "the lost start's greeter ended")
    assert subscriptions() == per_ws
