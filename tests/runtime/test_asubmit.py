"""`asubmit` from an event loop: answers arrive in batches, one wake-up of the loop each."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import uvloop
from task_ingress.messages import CreateTask, IngressContext, PeerCard
from task_ingress.runtime import IngressRuntime, RuntimeConfig
from task_ingress.runtime.answer import Answer
from task_ingress.runtime.errors import IngressTimeout
from task_ingress.runtime.wakeups import LoopWakeups, one_wakeup_per_loop
from task_ingress.testing import HOLD

from tests.race.race_harness import RaceHarness

PEERS = 8


def _context(i: int) -> IngressContext:
    return IngressContext(workspace="ws", peer_id=f"peer-{i}", channel="ops",
                          request_id=f"r-{i}")


@pytest.fixture
def held_runtime() -> Iterator[tuple[IngressRuntime, RaceHarness]]:
    rt = IngressRuntime(RuntimeConfig(store_proxy_class=HOLD, request_timeout=5.0))
    rt.start()
    try:
        for i in range(PEERS):
            rt.greet("ws", "ops", PeerCard(peer_id=f"peer-{i}", capabilities=["task.write"],
                                           proof="p"))
        yield rt, RaceHarness(rt)
    finally:
        rt.close()


def test_asubmit_answers_a_whole_reply_batch_with_one_wakeup_of_the_loop(
        held_runtime: tuple[IngressRuntime, RaceHarness]) -> None:
    rt, harness = held_runtime

    async def main() -> tuple[list[Any], int]:
        harness.hold()
        calls = [asyncio.create_task(rt.asubmit(_context(i), CreateTask(title=f"t{i}")))
                 for i in range(PEERS)]
        while len(await asyncio.to_thread(harness.held)) < PEERS:
            await asyncio.sleep(0.01)
        wakeups = rt._loop_wakeups(asyncio.get_running_loop())
        before = wakeups.wakeups
        await asyncio.to_thread(harness.release)  # the store commits all eight as one batch
        outcomes = await asyncio.gather(*calls)
        return outcomes, wakeups.wakeups - before

    outcomes, wakeups = asyncio.run(main())
    assert [o.accepted for o in outcomes] == [True] * PEERS
    assert [o.request_id for o in outcomes] == [f"r-{i}" for i in range(PEERS)]
    assert wakeups == 1


def test_asubmit_raises_ingress_timeout_when_no_answer_comes_in_time(
        held_runtime: tuple[IngressRuntime, RaceHarness]) -> None:
    rt, harness = held_runtime
    rt._running().request_timeout = 0.2  # only asubmit's own wait; the driver's deadline is 2x

    async def main() -> None:
        await rt.asubmit(_context(0), CreateTask(title="held"))

    harness.hold()
    with pytest.raises(IngressTimeout):
        asyncio.run(main())
    harness.release()  # answered later, into a future nobody waits on: the runtime serves on
    assert rt.submit(_context(1), CreateTask(title="after")).accepted


def test_a_cancelled_asubmit_leaves_the_runtime_serving_when_its_answer_comes(
        held_runtime: tuple[IngressRuntime, RaceHarness]) -> None:
    # asyncio.wrap_future cancelled the driver's future with the awaiting task; the driver
    # then crashed setting its answer (InvalidStateError), and every later call got
    # RuntimeClosed. A daemon cancels its in-flight tasks when it stops.
    rt, harness = held_runtime

    async def main() -> None:
        call = asyncio.create_task(rt.asubmit(_context(0), CreateTask(title="held")))
        while len(await asyncio.to_thread(harness.held)) < 1:
            await asyncio.sleep(0.01)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call

    harness.hold()
    asyncio.run(main())
    harness.release()
    assert rt.submit(_context(1), CreateTask(title="after")).accepted


@pytest.mark.parametrize("loop_factory", [uvloop.new_event_loop, asyncio.new_event_loop],
                         ids=["uvloop", "asyncio"])
def test_futures_resolved_in_one_batch_wake_a_running_loop_once(
        loop_factory: Callable[[], asyncio.AbstractEventLoop]) -> None:
    loop = loop_factory()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        wakeups = LoopWakeups(loop)
        sources = [Answer() for _ in range(6)]
        mirrors = [asyncio.run_coroutine_threadsafe(_watch(wakeups, f), loop).result(5)
                   for f in sources]
        with one_wakeup_per_loop():
            for n, source in enumerate(sources):
                if n == 3:
                    source.set_exception(ValueError("boom"))
                else:
                    source.set_result(n)
                threading.Event().wait(0.01)  # the loop is free to run meanwhile
        assert wakeups.wakeups == 1
        results = asyncio.run_coroutine_threadsafe(_gather(mirrors), loop).result(5)
        assert results[:3] == [0, 1, 2] and results[4:] == [4, 5]
        assert isinstance(results[3], ValueError)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


async def _watch(wakeups: LoopWakeups, future: Answer) -> asyncio.Future[Any]:
    return wakeups.watch(future)


async def _gather(mirrors: list[asyncio.Future[Any]]) -> list[Any]:
    return list(await asyncio.gather(*mirrors, return_exceptions=True))
