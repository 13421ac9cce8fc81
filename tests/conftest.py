"""Shared fixtures: a fake clock, runtimes per actor base, and request helpers."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator

import psutil
import pytest
from task_ingress.messages import IngressContext, PeerCard
from task_ingress.runtime import IngressRuntime, RuntimeConfig

os.environ.setdefault("TASK_INGRESS_LOG_LEVEL", "warning")

# A shell starts a background job (`python -m pytest &`) with SIGINT ignored, and a child
# inherits that: the commands the Ctrl-C tests start would then never see the SIGINT they
# are sent and would hang until killed. A handled signal is reset to the default at exec,
# so with a handler here every child starts with Python's usual KeyboardInterrupt.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

WRITER = ["task.write"]


class FakeClock:
    """A clock tests move by hand; the runtime reads it through RuntimeConfig.clock."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    """A fresh fake clock at t=1000."""
    return FakeClock()


def writer_card(peer_id: str, proof: str = "signed") -> PeerCard:
    """A card that grants task.write."""
    return PeerCard(peer_id=peer_id, capabilities=WRITER, proof=proof)


def ctx(request_id: str, peer: str = "peer-a", channel: str = "ops",
        workspace: str = "ws") -> IngressContext:
    """An ingress context with sensible defaults."""
    return IngressContext(workspace=workspace, peer_id=peer, channel=channel,
                          request_id=request_id)


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def _new_children(before: set[int]) -> set[int]:
    """Our descendants started since `before`, leaving out those of processes that were
    already running: a session's PostgreSQL server forks autovacuum and backend workers
    whenever it likes, and those are not a runtime's leak.

    Judged per process by its ancestors, after one snapshot: listing the old processes'
    children separately raced with a worker forked between the two listings (seen as a
    leak in the nats tests once the cluster tests' server was busier)."""
    leaked: set[int] = set()
    for pid in _children() - before:
        try:
            ancestors = {p.pid for p in psutil.Process(pid).parents()}
        except psutil.Error:
            continue  # gone already: not left behind
        if not ancestors & before:
            leaked.add(pid)
    return leaked


def _alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


@pytest.fixture
def make_runtime(clock: FakeClock) -> Iterator[Callable[..., IngressRuntime]]:
    """Factory for started runtimes (closed at teardown, with a leaked-process check)."""
    started: list[IngressRuntime] = []
    before = _children()

    def factory(**overrides: object) -> IngressRuntime:
        overrides.setdefault("clock", clock)
        rt = IngressRuntime(RuntimeConfig(**overrides))  # type: ignore[arg-type]
        rt.start()
        started.append(rt)
        return rt

    yield factory
    # Thespian's admin daemonizes: its actors are no children of ours, so ask each runtime.
    actors = {pid for rt in started for pid in rt.actor_pids()}
    for rt in started:
        rt.close()
    leaked = _new_children(before) | {pid for pid in actors if _alive(pid)}
    assert not leaked, f"processes left behind: {leaked}"


@pytest.fixture
def rt(make_runtime: Callable[..., IngressRuntime]) -> IngressRuntime:
    """A runtime on simpleSystemBase with peer-a (writer) visible in ws/ops."""
    runtime = make_runtime()
    runtime.greet("ws", "ops", writer_card("peer-a"))
    return runtime
