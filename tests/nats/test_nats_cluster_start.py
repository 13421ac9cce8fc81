"""The test/bench NATS cluster starts even when a port it chose is taken before its server
binds it (a fresh attempt on new ports), and says why when it cannot."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator

import pytest
from task_ingress.runtime.cluster import nats_cluster
from task_ingress.runtime.cluster.nats_cluster import NatsCluster
from task_ingress.runtime.ports import free_port


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port some other process holds (listening)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def _first_port_of_attempts(port: int, attempts: set[int], n: int
                            ) -> Callable[[], int]:
    """A free_port whose first choice in each attempt named in `attempts` is `port`."""
    calls = iter(range(10**6))

    def chosen() -> int:
        k = next(calls)
        attempt, index = divmod(k, 3 * n)  # each attempt chooses 3 ports per server
        return port if index == 0 and attempt in attempts else free_port()
    return chosen


def test_a_port_taken_before_its_server_binds_it_costs_one_more_attempt(
        taken_port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nats_cluster, "free_port",
                        _first_port_of_attempts(taken_port, {0}, n=2))
    cluster = NatsCluster(2)
    try:
        cluster.start()
        assert taken_port not in cluster.ports and len(cluster.procs) == 2
        assert all(cluster._routes(i) >= 1 for i in range(2))
    finally:
        cluster.stop()
    assert cluster.procs == []


def test_a_cluster_that_cannot_start_says_which_server_exited_and_why(
        taken_port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nats_cluster, "free_port",
                        _first_port_of_attempts(taken_port, set(range(nats_cluster.ATTEMPTS)),
                                                n=2))
    cluster = NatsCluster(2)
    with pytest.raises(RuntimeError) as err:
        cluster.start()
    assert "n0 exited" in str(err.value) and "address already in use" in str(err.value)
    assert cluster.procs == [] and not cluster.dir.exists()
