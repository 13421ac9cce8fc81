"""A representative subset on multiprocQueueBase: same answers, no process left behind."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from task_ingress.messages import CreateTask, EnqueueRun, PeerCard, Reason, UpdateTask
from task_ingress.messages.codec import decode_reply
from task_ingress.runtime import IngressRuntime
from task_ingress.testing import CRASH_PREFIX, EXIT_AFTER_STORE_COMMIT

from tests.conftest import FakeClock, ctx, writer_card

pytestmark = pytest.mark.multiproc

BASES = ["simpleSystemBase", "multiprocQueueBase"]


@pytest.mark.parametrize("base", BASES)
def test_gate_path_gives_the_same_answers_on_every_base(
    make_runtime: Callable[..., IngressRuntime], clock: FakeClock, base: str
) -> None:
    rt = make_runtime(actor_base=base)
    rt.greet("ws", "ops", writer_card("peer-a"))
    rt.greet("ws", "ops", PeerCard(peer_id="peer-b", capabilities=["task.read"], proof="p"))
    task = rt.submit(ctx("c"), CreateTask(title="t", network_channel="ops"))
    assert task.accepted and task.task_id
    assert rt.submit(ctx("u"), UpdateTask(task_id=task.task_id, title="u")).accepted
    run = rt.submit(ctx("e"), EnqueueRun(task_id=task.task_id, idempotency_key="k"))
    assert run.run_id and rt.get_run("ws", run.run_id) is not None
    assert rt.submit(ctx("b", peer="peer-b"), CreateTask(title="t")).reason == (
        Reason.CAPABILITY_DENIED)
    assert rt.submit(ctx("x", peer="peer-x"), CreateTask(title="t")).reason == (
        Reason.PEER_NOT_FOUND)
    reply = decode_reply(rt.deliver(b"junk", workspace="ws", channel="ops", peer_id="peer-a"))
    assert reply["reason"] == "invalid_request"
    rt.leave("ws", "ops", "peer-a")
    assert rt.submit(ctx("l"), CreateTask(title="t")).reason == Reason.PEER_NOT_FOUND
    assert len(rt.audit()) == 7


@pytest.mark.parametrize("base", BASES)
def test_many_threads_get_their_own_answers(
    make_runtime: Callable[..., IngressRuntime], base: str
) -> None:
    rt = make_runtime(actor_base=base)
    channels = ["c0", "c1", "c2", "c3"]
    for ch in channels:
        rt.greet("ws", ch, writer_card("peer-a"))
    wrong: list[str] = []

    def writer(n: int) -> None:
        ch = channels[n % len(channels)]
        for i in range(25):
            rid = f"t{n}-{i}"
            out = rt.submit(ctx(rid, channel=ch), CreateTask(title=rid))
            if not out.accepted or out.request_id != rid:
                wrong.append(f"{rid}: {out}")
                continue
            task = rt.get_task("ws", out.task_id or "")
            if task is None or task.title != rid:
                wrong.append(f"{rid}: wrong task {task}")

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not wrong
    assert len(rt.audit()) == 200


def test_a_store_process_dying_after_its_commit_takes_only_itself(
    make_runtime: Callable[..., IngressRuntime],
) -> None:
    # What multiprocQueueBase is for: the TaskStore's process exits (os._exit) right after
    # committing a write; the router learns of it, starts a new store, and answers the
    # write accepted from its outbox row, once. Before the child-exit fix the router never
    # learnt (Thespian checked for dead children only after 2 idle seconds, and the
    # driver's sweep reaches the router every second): every later request timed out.
    rt = make_runtime(actor_base="multiprocQueueBase", store_actor_class=EXIT_AFTER_STORE_COMMIT,
                      request_timeout=20.0)
    rt.greet("ws", "ops", writer_card("peer-a"))
    assert rt.submit(ctx("r-1"), CreateTask(title="before")).accepted
    before = set(rt.actor_pids())
    crashed = rt.submit(ctx(f"{CRASH_PREFIX}1"), CreateTask(title="its store dies"))
    assert crashed.accepted and crashed.task_id and not crashed.replay
    assert rt.get_task("ws", crashed.task_id) is not None
    after = rt.submit(ctx("r-2"), CreateTask(title="after"))
    assert after.accepted
    assert [r.request_id for r in rt.audit()] == ["r-1", f"{CRASH_PREFIX}1", "r-2"]
    pids = set(rt.actor_pids())
    assert len(before - pids) == 1 and len(pids - before) == 1  # one store replaced
