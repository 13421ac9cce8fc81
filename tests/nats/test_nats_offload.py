"""The crypto worker: calls of one loop turn run as one job, in order, results in order."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest
import uvloop
from task_ingress.runtime.nats.offload import BatchOffload


@pytest.mark.parametrize("loop_factory", [uvloop.new_event_loop, asyncio.new_event_loop],
                         ids=["uvloop", "asyncio"])
def test_calls_made_in_one_loop_turn_run_as_one_job_in_order_off_the_loop(
        loop_factory: Callable[[], asyncio.AbstractEventLoop]) -> None:
    offload = BatchOffload()
    ran: list[tuple[int, str]] = []
    resumed: list[int] = []

    def work(n: int) -> int:
        ran.append((n, threading.current_thread().name))
        if n == 3:
            raise ValueError("bad signature bytes")
        return n * 10

    async def one(n: int) -> int | str:
        try:
            value = await offload.run(work, n)
        except ValueError as exc:
            value = str(exc)
        resumed.append(n)
        return value

    async def main() -> list[int | str]:
        return list(await asyncio.gather(*(one(n) for n in range(8))))

    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            results = runner.run(main())
    finally:
        offload.close()
    assert results == [0, 10, 20, "bad signature bytes", 40, 50, 60, 70]
    assert [n for n, _ in ran] == list(range(8)) and resumed == list(range(8))
    assert all(name.startswith("ingress-crypto") for _, name in ran)
    assert offload.jobs == 1


def test_a_closed_offload_refuses_new_calls() -> None:
    offload = BatchOffload()
    offload.close()

    async def main() -> None:
        await offload.run(print, "never")

    with pytest.raises(RuntimeError):
        asyncio.run(main())
