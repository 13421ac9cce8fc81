"""The four actions of SPEC §5: effects, idempotency, replay and trusted metadata."""

from __future__ import annotations

import itertools

import structlog
from task_ingress.actors import log
from task_ingress.messages import CancelTask, CreateTask, EnqueueRun, UpdateTask
from task_ingress.runtime import IngressRuntime

from tests.conftest import ctx, writer_card


def test_create_binds_to_the_ingress_channel_only_when_asked(rt: IngressRuntime) -> None:
    bound = rt.submit(ctx("b"), CreateTask(title=" Ship it ", network_channel="ops"))
    free = rt.submit(ctx("f"), CreateTask(title="Free", description="d", priority=5,
                                          metadata={"team": "core"}))
    assert bound.task_id and free.task_id
    task = rt.get_task("ws", bound.task_id)
    assert task is not None
    assert (task.network_channel, task.title, task.status, task.version) == ("ops", "Ship it",
                                                                             "open", 1)
    other = rt.get_task("ws", free.task_id)
    assert other is not None and other.network_channel == "" and other.priority == 5
    assert other.metadata["team"] == "core"


def test_trusted_metadata_is_written_by_the_runtime_not_the_payload(rt: IngressRuntime) -> None:
    out = rt.submit(ctx("r-7"), CreateTask(title="t", metadata={
        "ingress.actor": "peer:admin/channel:root", "ingress.request_id": "forged"}))
    assert out.task_id
    task = rt.get_task("ws", out.task_id)
    assert task is not None
    assert task.metadata["ingress.actor"] == "peer:peer-a/channel:ops"
    assert task.metadata["ingress.origin"] == "workspace:ws/channel:ops/peer:peer-a"
    assert task.metadata["ingress.request_id"] == "r-7"
    assert rt.audit()[-1].actor == "peer:peer-a/channel:ops"


def test_update_patches_bumps_version_and_clears_binding(rt: IngressRuntime) -> None:
    task_id = rt.submit(ctx("c"), CreateTask(title="a", network_channel="ops")).task_id
    assert task_id
    out = rt.submit(ctx("u1"), UpdateTask(task_id=task_id, title="b", expected_version=1))
    assert out.accepted and out.task_id == task_id
    out = rt.submit(ctx("u2"), UpdateTask(task_id=task_id, network_channel=""))
    assert out.accepted
    task = rt.get_task("ws", task_id)
    assert task is not None
    assert (task.title, task.version, task.network_channel) == ("b", 3, "")


def test_cancel_is_accepted_twice_and_changes_nothing_the_second_time(rt: IngressRuntime
                                                                      ) -> None:
    task_id = rt.submit(ctx("c"), CreateTask(title="a")).task_id
    assert task_id
    assert rt.submit(ctx("x1"), CancelTask(task_id=task_id, reason="done")).accepted
    first = rt.get_task("ws", task_id)
    assert rt.submit(ctx("x2"), CancelTask(task_id=task_id, reason="again")).accepted
    assert rt.get_task("ws", task_id) == first
    assert first is not None and first.status == "canceled" and first.cancel_reason == "done"


def test_enqueue_with_the_same_key_returns_the_original_run(rt: IngressRuntime) -> None:
    task_id = rt.submit(ctx("c"), CreateTask(title="a")).task_id
    assert task_id
    first = rt.submit(ctx("e1"), EnqueueRun(task_id=task_id, idempotency_key="k"))
    again = rt.submit(ctx("e2"), EnqueueRun(task_id=task_id, idempotency_key="k"))
    other = rt.submit(ctx("e3"), EnqueueRun(task_id=task_id, idempotency_key="k2"))
    assert first.run_id and first.run_id == again.run_id and other.run_id != first.run_id
    run = rt.get_run("ws", first.run_id)
    assert run is not None
    assert (run.task_id, run.status, run.peer_id, run.channel) == (task_id, "queued", "peer-a",
                                                                   "ops")


def test_replayed_request_id_returns_the_first_outcome_without_mutating(rt: IngressRuntime
                                                                        ) -> None:
    first = rt.submit(ctx("same"), CreateTask(title="one"))
    again = rt.submit(ctx("same"), CreateTask(title="two"))
    assert again.accepted and again.replay and again.task_id == first.task_id
    records = rt.audit()
    assert [r.replay for r in records] == [False, True]
    assert records[1].task_id == first.task_id
    conn_tasks = [rt.get_task("ws", first.task_id or "")]
    assert conn_tasks[0] is not None and conn_tasks[0].title == "one"


def test_request_ids_are_scoped_per_peer_and_channel(rt: IngressRuntime) -> None:
    rt.greet("ws", "ops", writer_card("peer-b"))
    a = rt.submit(ctx("same"), CreateTask(title="a"))
    b = rt.submit(ctx("same", peer="peer-b"), CreateTask(title="b"))
    assert a.task_id != b.task_id and not b.replay


def test_rejected_request_may_be_retried_under_the_same_id(rt: IngressRuntime) -> None:
    assert rt.submit(ctx("r"), CreateTask(title="")).reason is not None
    retry = rt.submit(ctx("r"), CreateTask(title="fixed"))
    assert retry.accepted and not retry.replay


def test_audit_records_are_hash_chained_in_commit_order(rt: IngressRuntime) -> None:
    for i in range(5):
        rt.submit(ctx(f"r{i}"), CreateTask(title="t" if i % 2 else ""))
    records = rt.audit()
    assert [r.seq for r in records] == [1, 2, 3, 4, 5]
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(records))


def test_outcome_logs_bind_identity_and_never_payload(rt: IngressRuntime) -> None:
    log.configure("info")
    try:
        with structlog.testing.capture_logs() as logs:
            rt.submit(ctx("r-log"), CreateTask(title="secret title", description="secret body"))
    finally:
        log.configure()
    events = [e for e in logs if e["event"] == "ingress.outcome"]
    assert len(events) == 1
    event = events[0]
    assert {k: event[k] for k in ("peer_id", "channel", "request_id", "action", "outcome",
                                  "reason")} == {
        "peer_id": "peer-a", "channel": "ops", "request_id": "r-log", "action": "task.create",
        "outcome": "accepted", "reason": None}
    assert event["trust"] == "embedded"  # how the identity was known (SPEC 7)
    assert "secret" not in repr(logs)
