"""Failures inside actors answer the request with `task_ingress_failed`, apply nothing, and
leave the runtime serving; nothing is ever applied twice."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

import pytest
from task_ingress.actors import capability, task_store
from task_ingress.actors.storage.store_batch import StoreBatch
from task_ingress.messages import CreateTask, Reason
from task_ingress.runtime import IngressRuntime
from task_ingress.testing import OUTBOX_STORE

from tests.actors.test_supervision import submit_as_one_batch
from tests.conftest import ctx, writer_card


def _tasks(rt: IngressRuntime) -> int:
    conn = sqlite3.connect(f"file:{rt.store_path}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM tasks").fetchone()[0])
    finally:
        conn.close()


def test_a_raising_gate_actor_answers_failed_and_keeps_serving(
    rt: IngressRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(capability, "card_grants_write", lambda card: 1 / 0)
    out = rt.submit(ctx("boom"), CreateTask(title="t"))
    assert out.reason == Reason.TASK_INGRESS_FAILED
    assert rt.audit()[-1].reason == Reason.TASK_INGRESS_FAILED
    monkeypatch.undo()
    assert rt.submit(ctx("after"), CreateTask(title="t")).accepted
    assert _tasks(rt) == 1


def test_a_failure_after_the_write_rolls_the_write_back(
    rt: IngressRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The write is judged, then building its audit record (chained in the batch's own
    # transaction: auditlog.chained_row) fails: the write is never applied.
    def broken_record(*args: object) -> tuple[object, str]:
        raise ValueError("audit record cannot be built")

    monkeypatch.setattr(task_store, "chained_row", broken_record)
    out = rt.submit(ctx("r-1"), CreateTask(title="t"))
    assert out.reason == Reason.TASK_INGRESS_FAILED
    assert _tasks(rt) == 0
    monkeypatch.undo()
    # The request ID row went with the rollback: the retry is judged afresh, not replayed.
    retry = rt.submit(ctx("r-1"), CreateTask(title="t"))
    assert retry.accepted and not retry.replay
    assert _tasks(rt) == 1


def test_a_request_failing_in_the_store_does_not_stop_later_requests(
    rt: IngressRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = StoreBatch.judge

    def flaky(self: StoreBatch, ctx_: object, request: CreateTask, *a: object) -> object:
        if request.title == "bad":
            raise RuntimeError("bug")
        return real(self, ctx_, request, *a)  # type: ignore[arg-type]

    monkeypatch.setattr(StoreBatch, "judge", flaky)
    assert rt.submit(ctx("a"), CreateTask(title="bad")).reason == Reason.TASK_INGRESS_FAILED
    assert rt.submit(ctx("b"), CreateTask(title="good")).accepted
    assert _tasks(rt) == 1


def test_a_request_raising_after_it_was_judged_fails_alone_within_its_batch(
    rt: IngressRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The store judges a batch as one unit of work and applies each acceptance before the
    # next request is judged. The bad request is judged (accepted, a task chosen), then
    # raises: its write must never happen while its neighbours in the batch are kept.
    real = StoreBatch.judge
    calls: list[str] = []

    def judge_then_raise(self: StoreBatch, ctx_: object, request: CreateTask,
                         *a: object) -> object:
        calls.append(request.title)
        out = real(self, ctx_, request, *a)  # type: ignore[arg-type]
        if request.title == "bad":
            raise RuntimeError("bug after judging")
        return out

    for peer in ("p0", "p1", "p2"):
        rt.greet("ws", "ops", writer_card(peer))
    monkeypatch.setattr(StoreBatch, "judge", judge_then_raise)
    outcomes = submit_as_one_batch(rt, [(ctx("g0", "p0"), CreateTask(title="good")),
                                        (ctx("b", "p1"), CreateTask(title="bad")),
                                        (ctx("g2", "p2"), CreateTask(title="good"))])
    monkeypatch.undo()
    assert calls == ["good", "bad", "good"]  # one batch, each judged once
    assert [o.accepted for o in outcomes] == [True, False, True]
    assert outcomes[1].reason == Reason.TASK_INGRESS_FAILED
    assert _tasks(rt) == 2
    assert [r.outcome for r in rt.audit()[-3:]] == ["accepted", "rejected", "accepted"]
    retry = rt.submit(ctx("b", "p1"), CreateTask(title="bad"))
    assert retry.accepted and not retry.replay  # nothing of the failed request was kept
    assert _tasks(rt) == 3


def test_audit_commit_failure_never_answers_a_kept_write_failed(
    make_runtime: Callable[..., IngressRuntime], monkeypatch: pytest.MonkeyPatch
) -> None:
    from task_ingress.actors.audit import Audit

    # The write's record is Audit's to commit only on the outbox path (a chaining store
    # commits it with the write): the path a PostgreSQL store and a shutdown take.
    rt = make_runtime(store_actor_class=OUTBOX_STORE)
    rt.greet("ws", "ops", writer_card("peer-a"))

    original = Audit._insert
    failures: list[int] = []

    def flaky_insert(self: Audit, records: list[dict[str, object]]) -> None:
        if not failures:
            failures.append(1)
            raise sqlite3.OperationalError("disk I/O error (injected)")
        original(self, records)

    monkeypatch.setattr(Audit, "_insert", flaky_insert)
    out = rt.submit(ctx("kept"), CreateTask(title="t"))
    # The store had committed the write: the answer waits for the retried audit commit.
    assert failures and out.accepted and out.task_id
    assert [r.request_id for r in rt.audit()] == ["kept"]
    assert _tasks(rt) == 1
