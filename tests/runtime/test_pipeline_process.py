"""The pipeline process (`RuntimeConfig(process_mode="pipeline")`): same answers as
in-process, and its death or its embedder's leaves nothing hanging and no process behind.

Equivalence of the two modes under races is shown by tests/race (the interleavings and the
state machine run in both); a SIGKILL of the embedding process by tests/crash.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

import psutil
import pytest
from task_ingress.messages import CreateTask, EnqueueRun, Reason, UpdateTask
from task_ingress.messages.codec import decode_reply
from task_ingress.runtime import IngressRuntime, RuntimeConfig
from task_ingress.runtime.answer import Answer
from task_ingress.runtime.errors import RuntimeClosed
from task_ingress.testing import HOLD

from tests.conftest import ctx, writer_card
from tests.race.race_harness import RaceHarness

MakeRuntime = Callable[..., IngressRuntime]
DEATH_WAIT = 60.0
"""Bound on waiting for a future; a hang shows as a TimeoutError, not as a slow pass."""


def test_the_pipeline_process_gives_the_same_answers(make_runtime: MakeRuntime) -> None:
    rt = make_runtime(process_mode="pipeline")
    [pid] = rt.actor_pids()
    assert pid != os.getpid() and psutil.Process(pid).ppid() == os.getpid()
    rt.greet("ws", "ops", writer_card("peer-a"))
    task = rt.submit(ctx("c"), CreateTask(title="t", network_channel="ops"))
    assert task.accepted and task.task_id
    assert rt.submit(ctx("u"), UpdateTask(task_id=task.task_id, title="u")).accepted
    run = rt.submit(ctx("e"), EnqueueRun(task_id=task.task_id, idempotency_key="k"))
    assert run.run_id and rt.get_run("ws", run.run_id) is not None
    stored = rt.get_task("ws", task.task_id)
    assert stored is not None and (stored.title, stored.version) == ("u", 2)
    replay = rt.submit(ctx("c"), CreateTask(title="t", network_channel="ops"))
    assert replay.replay and replay.task_id == task.task_id
    assert rt.submit(ctx("x", peer="peer-x"), CreateTask(title="t")).reason == (
        Reason.PEER_NOT_FOUND)
    reply = decode_reply(rt.deliver(b"junk", workspace="ws", channel="ops", peer_id="peer-a"))
    assert reply["reason"] == "invalid_request"
    assert rt.lock_task("ws", task.task_id)
    assert rt.submit(ctx("l"), UpdateTask(task_id=task.task_id, title="x")).reason == (
        Reason.PERMISSION_DENIED)
    rt.leave("ws", "ops", "peer-a")
    assert rt.submit(ctx("after-leave"), CreateTask(title="t")).reason == Reason.PEER_NOT_FOUND
    assert [r.request_id for r in rt.audit()] == [
        "c", "u", "e", "c", "x", "", "l", "after-leave"]


def test_a_dead_pipeline_process_fails_every_waiting_caller_at_once(
    make_runtime: MakeRuntime,
) -> None:
    # Requests held before the store, a caller blocked on each; then the pipeline process
    # is SIGKILLed. Each caller must get RuntimeClosed right away, not IngressTimeout after
    # request_timeout (10 minutes here); later calls too; close() leaves no process.
    rt = make_runtime(process_mode="pipeline", store_proxy_class=HOLD, request_timeout=600.0)
    for peer in ("pa", "pb", "pc"):
        rt.greet("ws", "ops", writer_card(peer))
    h = RaceHarness(rt)
    h.hold()
    waiting: list[Answer] = [h.submit(ctx(f"w-{p}", peer=p), CreateTask(title="held"))
                                  for p in ("pa", "pb", "pc")]
    assert h.held() == ("w-pa", "w-pb", "w-pc")
    assert rt.alive()
    [pid] = rt.actor_pids()
    os.kill(pid, signal.SIGKILL)
    for future in waiting:
        assert isinstance(future.exception(timeout=DEATH_WAIT), RuntimeClosed)
    with pytest.raises(RuntimeClosed):
        rt.submit(ctx("later", peer="pa"), CreateTask(title="t"))
    assert not rt.alive()  # what a supervising daemon looks at (it then exits 1)
    rt.close()
    assert rt.actor_pids() == [] and not psutil.pid_exists(pid)  # reaped, not a zombie


def test_pipeline_mode_needs_the_one_thread_base() -> None:
    with pytest.raises(ValueError, match="simpleSystemBase"):
        RuntimeConfig(process_mode="pipeline", actor_base="multiprocQueueBase")
    with pytest.raises(ValueError, match="process_mode"):
        RuntimeConfig(process_mode="threads")
