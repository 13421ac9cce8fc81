"""Every reason code of SPEC §6 is reachable through the §7 API, with exactly one audit record
and (for rejections) an untouched store, on each actor base: every runtime of this module
(the shared `rt` fixture's too) runs on the base of the `base` parameter."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from task_ingress.messages import (
    Action,
    CancelTask,
    CreateTask,
    EnqueueRun,
    IngressContext,
    Outcome,
    PeerCard,
    Reason,
    UpdateTask,
)
from task_ingress.runtime import IngressRuntime
from task_ingress.testing import FAIL_SECOND_COMMIT

from tests.conftest import FakeClock, ctx, writer_card

BASES = ["simpleSystemBase", pytest.param("multiprocQueueBase", marks=pytest.mark.multiproc)]


@pytest.fixture(params=BASES)
def base(request: pytest.FixtureRequest) -> str:
    """The actor base every runtime of the test runs on."""
    return str(request.param)


@pytest.fixture
def make_runtime(make_runtime: Callable[..., IngressRuntime], base: str
                 ) -> Callable[..., IngressRuntime]:
    """conftest's factory, on `base` (this override also serves conftest's `rt`)."""
    def factory(**overrides: object) -> IngressRuntime:
        overrides.setdefault("actor_base", base)
        return make_runtime(**overrides)

    return factory


def store_rows(rt: IngressRuntime) -> tuple[int, int, int]:
    """(tasks, runs, sum of versions): a fingerprint of everything a write could touch."""
    conn = sqlite3.connect(f"file:{rt.store_path}?mode=ro", uri=True)
    try:
        tasks, versions = conn.execute("SELECT COUNT(*), COALESCE(SUM(version), 0) FROM tasks"
                                       ).fetchone()
        runs = conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
        return int(tasks), int(runs), int(versions)
    finally:
        conn.close()


@contextmanager
def one_rejection(rt: IngressRuntime, reason: Reason) -> Iterator[list[Outcome]]:
    """Asserts the block submits exactly one request, rejected for `reason`, store untouched."""
    before_rows, before_audit = store_rows(rt), len(rt.audit())
    box: list[Outcome] = []
    yield box
    assert len(box) == 1
    out = box[0]
    assert not out.accepted and out.reason == reason, out
    assert store_rows(rt) == before_rows
    records = rt.audit()
    assert len(records) == before_audit + 1
    assert records[-1].outcome == "rejected" and records[-1].reason == reason


def create(rt: IngressRuntime, rid: str, **kw: object) -> str:
    out = rt.submit(ctx(rid), CreateTask(title="t", **kw))  # type: ignore[arg-type]
    assert out.accepted and out.task_id, out
    return out.task_id


def test_malformed_context_is_invalid_request(rt: IngressRuntime) -> None:
    with one_rejection(rt, Reason.INVALID_REQUEST) as box:
        box.append(rt.submit(ctx("a/b"), CreateTask(title="t")))


def test_malformed_requested_channel_is_invalid_request(rt: IngressRuntime) -> None:
    with one_rejection(rt, Reason.INVALID_REQUEST) as box:
        box.append(rt.submit(ctx("r"), CreateTask(title="t", network_channel="Not A Channel")))


def test_non_request_object_is_invalid_request_not_an_exception(rt: IngressRuntime) -> None:
    with one_rejection(rt, Reason.INVALID_REQUEST) as box:
        box.append(rt.submit(ctx("r"), {"title": "dict"}))


def test_disabled_task_service_is_unavailable(make_runtime: Callable[..., IngressRuntime]) -> None:
    rt = make_runtime(tasks_enabled=False)
    rt.greet("ws", "ops", writer_card("peer-a"))
    with one_rejection(rt, Reason.TASK_INGRESS_UNAVAILABLE) as box:
        box.append(rt.submit(ctx("r"), CreateTask(title="t")))


def test_unavailable_is_decided_before_presence(make_runtime: Callable[..., IngressRuntime]
                                                ) -> None:
    rt = make_runtime(tasks_enabled=False)
    with one_rejection(rt, Reason.TASK_INGRESS_UNAVAILABLE) as box:
        box.append(rt.submit(ctx("r", peer="nobody"), CreateTask(title="t")))


def test_unknown_peer_is_not_found(rt: IngressRuntime) -> None:
    with one_rejection(rt, Reason.PEER_NOT_FOUND) as box:
        box.append(rt.submit(ctx("r", peer="peer-z"), CreateTask(title="t")))


def test_presence_is_per_channel(rt: IngressRuntime) -> None:
    with one_rejection(rt, Reason.PEER_NOT_FOUND) as box:
        box.append(rt.submit(ctx("r", channel="dev"), CreateTask(title="t")))


def test_presence_is_per_workspace(rt: IngressRuntime) -> None:
    with one_rejection(rt, Reason.PEER_NOT_FOUND) as box:
        box.append(rt.submit(ctx("r", workspace="other"), CreateTask(title="t")))


def test_the_daemons_own_peer_is_never_admitted(rt: IngressRuntime) -> None:
    rt.greet("ws", "ops", writer_card("local"))
    with one_rejection(rt, Reason.PEER_NOT_FOUND) as box:
        box.append(rt.submit(ctx("r", peer="local"), CreateTask(title="t")))


def test_left_peer_cannot_write_after_leave_returns(rt: IngressRuntime) -> None:
    rt.leave("ws", "ops", "peer-a")
    with one_rejection(rt, Reason.PEER_NOT_FOUND) as box:
        box.append(rt.submit(ctx("r"), CreateTask(title="t")))


def test_peer_expires_at_exactly_twice_the_greet_interval(
    rt: IngressRuntime, clock: FakeClock
) -> None:
    clock.advance(59.999)
    assert rt.submit(ctx("r1"), CreateTask(title="t")).accepted
    clock.advance(0.001)
    with one_rejection(rt, Reason.PEER_NOT_FOUND) as box:
        box.append(rt.submit(ctx("r2"), CreateTask(title="t")))


def test_regreet_refreshes_visibility(rt: IngressRuntime, clock: FakeClock) -> None:
    clock.advance(50)
    rt.greet("ws", "ops", writer_card("peer-a"))
    clock.advance(50)
    assert rt.submit(ctx("r"), CreateTask(title="t")).accepted


def test_card_without_task_write_is_denied(rt: IngressRuntime) -> None:
    rt.greet("ws", "ops", PeerCard(peer_id="peer-b", capabilities=["task.read"], proof="p"))
    with one_rejection(rt, Reason.CAPABILITY_DENIED) as box:
        box.append(rt.submit(ctx("r", peer="peer-b"), CreateTask(title="t")))


def test_task_write_claim_with_empty_proof_grants_nothing(rt: IngressRuntime) -> None:
    rt.greet("ws", "ops", PeerCard(peer_id="peer-b", capabilities=["task.write"]))
    with one_rejection(rt, Reason.CAPABILITY_DENIED) as box:
        box.append(rt.submit(ctx("r", peer="peer-b"), CreateTask(title="t")))


def test_regreet_can_shrink_capabilities(rt: IngressRuntime) -> None:
    rt.greet("ws", "ops", PeerCard(peer_id="peer-a", capabilities=[], proof="p"))
    with one_rejection(rt, Reason.CAPABILITY_DENIED) as box:
        box.append(rt.submit(ctx("r"), CreateTask(title="t")))


def test_create_for_another_channel_is_channel_mismatch(rt: IngressRuntime) -> None:
    with one_rejection(rt, Reason.CHANNEL_MISMATCH) as box:
        box.append(rt.submit(ctx("r"), CreateTask(title="t", network_channel="dev")))


def test_bound_task_is_only_mutated_from_its_channel(rt: IngressRuntime) -> None:
    task = create(rt, "c", network_channel="ops")
    rt.greet("ws", "dev", writer_card("peer-a"))
    for i, req in enumerate([UpdateTask(task_id=task, title="x"), CancelTask(task_id=task),
                             EnqueueRun(task_id=task, idempotency_key="k")]):
        with one_rejection(rt, Reason.CHANNEL_MISMATCH) as box:
            box.append(rt.submit(ctx(f"r{i}", channel="dev"), req))


def test_unbound_task_may_be_mutated_from_any_channel(rt: IngressRuntime) -> None:
    task = create(rt, "c")
    rt.greet("ws", "dev", writer_card("peer-a"))
    assert rt.submit(ctx("u", channel="dev"), UpdateTask(task_id=task, title="x")).accepted


def _corrupt_binding(rt: IngressRuntime, task_id: str, channel: str) -> None:
    conn = sqlite3.connect(rt.store_path)
    try:
        conn.execute("UPDATE tasks SET network_channel = ? WHERE task_id = ?", (channel, task_id))
        conn.commit()
    finally:
        conn.close()


def test_stale_binding_rejects_anything_but_a_repair(rt: IngressRuntime) -> None:
    task = create(rt, "c", network_channel="ops")
    _corrupt_binding(rt, task, "Old.Channel")
    for i, req in enumerate([UpdateTask(task_id=task, title="x"), CancelTask(task_id=task),
                             EnqueueRun(task_id=task, idempotency_key="k"),
                             UpdateTask(task_id=task, network_channel="", title="x")]):
        with one_rejection(rt, Reason.STALE_CHANNEL) as box:
            box.append(rt.submit(ctx(f"r{i}"), req))


def test_stale_binding_may_be_cleared_from_any_channel(rt: IngressRuntime) -> None:
    task = create(rt, "c", network_channel="ops")
    _corrupt_binding(rt, task, "Old.Channel")
    rt.greet("ws", "dev", writer_card("peer-a"))
    out = rt.submit(ctx("fix", channel="dev"), UpdateTask(task_id=task, network_channel=""))
    assert out.accepted
    stored = rt.get_task("ws", task)
    assert stored is not None and stored.network_channel == ""


def test_stale_binding_may_be_rebound_to_the_ingress_channel(rt: IngressRuntime) -> None:
    task = create(rt, "c", network_channel="ops")
    _corrupt_binding(rt, task, "Old.Channel")
    assert rt.submit(ctx("fix"), UpdateTask(task_id=task, network_channel="ops")).accepted
    stored = rt.get_task("ws", task)
    assert stored is not None and stored.network_channel == "ops"


def test_missing_task_is_not_found(rt: IngressRuntime) -> None:
    for i, req in enumerate([UpdateTask(task_id="task_nope", title="x"),
                             CancelTask(task_id="task_nope"),
                             EnqueueRun(task_id="task_nope", idempotency_key="k")]):
        with one_rejection(rt, Reason.TASK_NOT_FOUND) as box:
            box.append(rt.submit(ctx(f"r{i}"), req))


def test_task_of_another_workspace_is_not_found_never_leaked(rt: IngressRuntime) -> None:
    task = create(rt, "c")
    rt.greet("ws2", "ops", writer_card("peer-a"))
    with one_rejection(rt, Reason.TASK_NOT_FOUND) as box:
        box.append(rt.submit(ctx("r", workspace="ws2"), UpdateTask(task_id=task, title="x")))
    assert rt.get_task("ws2", task) is None


def test_empty_title_is_validation_failed(rt: IngressRuntime) -> None:
    with one_rejection(rt, Reason.VALIDATION_FAILED) as box:
        box.append(rt.submit(ctx("r"), CreateTask(title="   ")))


def test_stale_expected_version_is_validation_failed(rt: IngressRuntime) -> None:
    task = create(rt, "c")
    with one_rejection(rt, Reason.VALIDATION_FAILED) as box:
        box.append(rt.submit(ctx("r"), UpdateTask(task_id=task, title="x", expected_version=7)))


def test_idempotency_key_reused_for_another_task_is_validation_failed(rt: IngressRuntime
                                                                      ) -> None:
    first, second = create(rt, "c1"), create(rt, "c2")
    assert rt.submit(ctx("e1"), EnqueueRun(task_id=first, idempotency_key="k")).accepted
    with one_rejection(rt, Reason.VALIDATION_FAILED) as box:
        box.append(rt.submit(ctx("e2"), EnqueueRun(task_id=second, idempotency_key="k")))


def test_operator_locked_task_is_permission_denied(rt: IngressRuntime) -> None:
    task = create(rt, "c")
    assert rt.lock_task("ws", task)
    with one_rejection(rt, Reason.PERMISSION_DENIED) as box:
        box.append(rt.submit(ctx("r"), UpdateTask(task_id=task, title="x")))


def test_cancelled_task_cannot_be_updated(rt: IngressRuntime) -> None:
    task = create(rt, "c")
    assert rt.submit(ctx("x"), CancelTask(task_id=task)).accepted
    with one_rejection(rt, Reason.PERMISSION_DENIED) as box:
        box.append(rt.submit(ctx("r"), UpdateTask(task_id=task, title="x")))


def test_failed_commit_is_task_ingress_failed_and_nothing_half_applied(
    make_runtime: Callable[..., IngressRuntime],
) -> None:
    rt = make_runtime(store_actor_class=FAIL_SECOND_COMMIT)
    rt.greet("ws", "ops", writer_card("peer-a"))
    assert rt.submit(ctx("r1"), CreateTask(title="ok")).accepted
    with one_rejection(rt, Reason.TASK_INGRESS_FAILED) as box:
        box.append(rt.submit(ctx("r2"), CreateTask(title="lost")))
    # The runtime keeps serving, and the failed request may be retried under its ID.
    assert rt.submit(ctx("r2"), CreateTask(title="retried")).accepted


def test_checks_run_in_spec_order_first_failure_decides(rt: IngressRuntime) -> None:
    # Unknown peer AND foreign channel AND empty title: rule 3 decides.
    out = rt.submit(ctx("r", peer="peer-z"), CreateTask(title="", network_channel="dev"))
    assert out.reason == Reason.PEER_NOT_FOUND
    # Visible writer, foreign channel AND empty title: rule 5 decides.
    out = rt.submit(ctx("r2"), CreateTask(title="", network_channel="dev"))
    assert out.reason == Reason.CHANNEL_MISMATCH
    # Foreign-bound missing task: rule 6 (not found) before rule 9 (empty title).
    out = rt.submit(ctx("r3"), UpdateTask(task_id="nope", title=""))
    assert out.reason == Reason.TASK_NOT_FOUND


def test_outcome_names_the_action(rt: IngressRuntime) -> None:
    assert rt.submit(ctx("r"), CreateTask(title="t")).action is Action.CREATE
    assert IngressContext(workspace="ws", peer_id="p", channel="c", request_id="r")


@pytest.mark.parametrize("bad", ["ws/x", "", "w.s", "w s"])
def test_greet_with_malformed_identifiers_raises_value_error(rt: IngressRuntime, bad: str
                                                             ) -> None:
    with pytest.raises(ValueError):
        rt.greet(bad, "ops", writer_card("peer-a"))


def test_the_shared_runtime_runs_on_the_parametrized_base(rt: IngressRuntime, base: str) -> None:
    assert rt.config.actor_base == base
    assert bool(rt.actor_pids()) == (base != "simpleSystemBase")  # actor processes, or none
