"""SPEC §8 races as exact interleavings, each checked with and without the protection.

Every race is a scenario (`run_*`) and a check of the SPEC outcome and the audit rows
(`check_*`). The plain test runs the scenario on the real runtime and the check passes. The
`*_is_caught_*` twin runs the same scenario with a test seam that removes the protection
(`NO_FENCE`: task_ingress.testing's channel actor that neither fences presence changes nor
serializes requests, AGH's check-then-act; `NON_ATOMIC_STORE`: its store that judges a batch
against the state before it)
and asserts both that the same check fails and that the detector names the offending write.

Every test runs in both process modes (`RuntimeConfig.process_mode`): the actors on the
driver thread, and the actors alone in a pipeline process.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from task_ingress.messages import (
    AuditRecord,
    CancelTask,
    CreateTask,
    IngressContext,
    Outcome,
    PeerCard,
    Task,
    UpdateTask,
)
from task_ingress.messages.reasons import Action, Reason
from task_ingress.runtime import IngressRuntime
from task_ingress.runtime.config import PROCESS_MODES
from task_ingress.testing import HOLD, NAIVE_CHANNEL, NAIVE_STORE

from tests.conftest import FakeClock, writer_card
from tests.race.race_checks import FenceMonitor, commit_order_violations, state_mismatches
from tests.race.race_harness import RaceHarness, applied, outcome, record_of

WS = "ws"
NO_FENCE = {"channel_actor_class": NAIVE_CHANNEL}
"""Seam: channel actors without the fence."""
NON_ATOMIC_STORE = {"store_actor_class": NAIVE_STORE}
"""Seam: a check-then-act TaskStore."""
MakeRuntime = Callable[..., IngressRuntime]


@pytest.fixture(params=PROCESS_MODES)
def make_runtime(request: pytest.FixtureRequest, make_runtime: MakeRuntime) -> MakeRuntime:
    """conftest's factory, in one process mode per parametrization."""
    def factory(**overrides: object) -> IngressRuntime:
        return make_runtime(process_mode=request.param, **overrides)
    return factory


def c(request_id: str, peer: str = "pa", channel: str = "ops") -> IngressContext:
    """Context in workspace `ws`."""
    return IngressContext(workspace=WS, peer_id=peer, channel=channel, request_id=request_id)


@dataclass
class Observed:
    """What a scenario saw: outcomes, 'returned while held' flags, the audit, detectors."""

    out: dict[str, Outcome] = field(default_factory=dict)
    early: dict[str, bool] = field(default_factory=dict)
    records: list[AuditRecord] = field(default_factory=list)
    fence_violations: list[AuditRecord] = field(default_factory=list)
    order_violations: list[str] = field(default_factory=list)
    state_problems: list[str] = field(default_factory=list)
    tasks: dict[str, Task | None] = field(default_factory=dict)

    def row(self, request_id: str, channel: str = "ops") -> AuditRecord:
        """The single audit record of a request (asserts there is exactly one)."""
        rows = record_of(self.records, request_id, channel)
        assert len(rows) == 1, f"{request_id}: {len(rows)} audit records"
        return rows[0]


def start(make_runtime: MakeRuntime, **seams: object) -> tuple[IngressRuntime, RaceHarness]:
    """A held runtime (greet interval 30 s, no rate limit) with the given seams."""
    rt = make_runtime(store_proxy_class=HOLD, greet_interval=30.0, peer_rate=0.0, **seams)
    return rt, RaceHarness(rt)


def finish(rt: IngressRuntime, h: RaceHarness, mon: FenceMonitor | None, obs: Observed) -> Observed:
    """Fill in the audit and every detector."""
    obs.records = rt.audit()
    obs.fence_violations = mon.violations(obs.records) if mon else []
    obs.order_violations, model = commit_order_violations(obs.records, h.requests)
    obs.tasks = {t: rt.get_task(WS, t) for t in model}
    obs.state_problems = state_mismatches(model, obs.tasks)
    return obs


def assert_clean(obs: Observed) -> None:
    """No detector fired."""
    assert obs.fence_violations == [], obs.fence_violations
    assert obs.order_violations == [], obs.order_violations
    assert obs.state_problems == [], obs.state_problems


# ---- 1. a leave queued while a write waits on the store -----------------------------

def run_leave_while_write_waits(make_runtime: MakeRuntime, **seams: object) -> Observed:
    rt, h = start(make_runtime, **seams)
    mon, obs = FenceMonitor(rt), Observed()
    rt.greet(WS, "ops", writer_card("pa"))
    h.hold()
    w1 = h.submit(c("w1"), CreateTask(title="admitted before the leave", network_channel="ops"))
    assert h.held() == ("w1",)
    leave = h.leave(WS, "ops", "pa")
    h.barrier()
    obs.early["leave"] = leave.done()
    if leave.done():
        mon.revoked(WS, "ops", "pa")
    h.release()
    obs.out["w1"] = outcome(w1)
    applied(leave)
    mon.revoked(WS, "ops", "pa")
    obs.out["w2"] = h.submit_now(c("w2"), CreateTask(title="after the leave"))
    return finish(rt, h, mon, obs)


def check_leave_while_write_waits(obs: Observed) -> None:
    assert not obs.early["leave"], "leave returned while a write of the peer was in flight"
    assert obs.out["w1"].accepted and obs.out["w1"].task_id
    assert obs.out["w2"].reason == Reason.PEER_NOT_FOUND
    w1, w2 = obs.row("w1"), obs.row("w2")
    assert (w1.outcome, w1.action, w1.task_id) == ("accepted", Action.CREATE,
                                                   obs.out["w1"].task_id)
    assert (w2.outcome, w2.reason) == ("rejected", Reason.PEER_NOT_FOUND)
    assert w1.seq < w2.seq
    assert obs.tasks[obs.out["w1"].task_id] is not None, "admitted write not fully applied"
    assert_clean(obs)


def test_leave_queued_behind_a_held_write_returns_only_after_it_commits(
        make_runtime: MakeRuntime) -> None:
    check_leave_while_write_waits(run_leave_while_write_waits(make_runtime))


def test_leave_race_is_caught_without_the_fence(make_runtime: MakeRuntime) -> None:
    obs = run_leave_while_write_waits(make_runtime, **NO_FENCE)
    assert [r.request_id for r in obs.fence_violations] == ["w1"]
    with pytest.raises(AssertionError):
        check_leave_while_write_waits(obs)


# ---- 2. expiry reached mid-request --------------------------------------------------

def run_expiry_mid_request(make_runtime: MakeRuntime, clock: FakeClock,
                           **seams: object) -> Observed:
    rt, h = start(make_runtime, **seams)
    mon, obs = FenceMonitor(rt), Observed()
    rt.greet(WS, "ops", writer_card("pa"))       # visible until greet + 2 x 30 s
    clock.advance(59.0)
    h.hold()
    w1 = h.submit(c("w1"), CreateTask(title="admitted one second before expiry"))
    assert h.held() == ("w1",)
    clock.advance(2.0)                           # expiry reached while w1 waits
    w2 = h.submit(c("w2"), CreateTask(title="after expiry"))
    h.barrier()
    obs.early["w2"] = w2.done()
    if w2.done():                                # the peer saw itself expired
        obs.out["w2"] = outcome(w2)
        mon.revoked(WS, "ops", "pa")
    h.release()
    obs.out["w1"] = outcome(w1)
    obs.out["w2"] = outcome(w2)
    mon.revoked(WS, "ops", "pa")
    return finish(rt, h, mon, obs)


def check_expiry_mid_request(obs: Observed) -> None:
    assert not obs.early["w2"], "a later request was judged while the earlier one was held"
    assert obs.out["w1"].accepted
    assert obs.out["w2"].reason == Reason.PEER_NOT_FOUND
    w1, w2 = obs.row("w1"), obs.row("w2")
    assert (w1.outcome, w1.task_id) == ("accepted", obs.out["w1"].task_id)
    assert (w2.outcome, w2.reason) == ("rejected", Reason.PEER_NOT_FOUND)
    assert w1.seq < w2.seq, "expiry observed before the admitted write committed"
    assert_clean(obs)


def test_expiry_reached_mid_request_orders_the_write_before_the_expiry(
        make_runtime: MakeRuntime, clock: FakeClock) -> None:
    check_expiry_mid_request(run_expiry_mid_request(make_runtime, clock))


def test_expiry_mid_request_is_ordered_when_the_channel_serializes(
        make_runtime: MakeRuntime, clock: FakeClock) -> None:
    check_expiry_mid_request(run_expiry_mid_request(make_runtime, clock, channel_pipeline=1))


def test_expiry_race_is_caught_without_the_fence(make_runtime: MakeRuntime,
                                                 clock: FakeClock) -> None:
    obs = run_expiry_mid_request(make_runtime, clock, **NO_FENCE)
    assert [r.request_id for r in obs.fence_violations] == ["w1"]
    with pytest.raises(AssertionError):
        check_expiry_mid_request(obs)


# ---- 3. a re-greet dropping task.write mid-request ----------------------------------

READER = PeerCard(peer_id="pa", capabilities=["task.read"], proof="signed")


def run_regreet_drops_write(make_runtime: MakeRuntime, **seams: object) -> Observed:
    rt, h = start(make_runtime, **seams)
    mon, obs = FenceMonitor(rt), Observed()
    rt.greet(WS, "ops", writer_card("pa"))
    h.hold()
    w1 = h.submit(c("w1"), CreateTask(title="admitted with task.write"))
    assert h.held() == ("w1",)
    greet = h.greet(WS, "ops", READER)
    h.barrier()
    obs.early["greet"] = greet.done()
    if greet.done():
        mon.revoked(WS, "ops", "pa")
    h.release()
    obs.out["w1"] = outcome(w1)
    applied(greet)
    mon.revoked(WS, "ops", "pa")
    obs.out["w2"] = h.submit_now(c("w2"), CreateTask(title="after losing task.write"))
    return finish(rt, h, mon, obs)


def check_regreet_drops_write(obs: Observed) -> None:
    assert not obs.early["greet"], "card change returned while a write was in flight"
    assert obs.out["w1"].accepted
    assert obs.out["w2"].reason == Reason.CAPABILITY_DENIED
    w1, w2 = obs.row("w1"), obs.row("w2")
    assert (w1.outcome, w1.task_id) == ("accepted", obs.out["w1"].task_id)
    assert (w2.outcome, w2.reason) == ("rejected", Reason.CAPABILITY_DENIED)
    assert w1.seq < w2.seq
    assert_clean(obs)


def test_regreet_dropping_write_waits_for_the_held_write(make_runtime: MakeRuntime) -> None:
    check_regreet_drops_write(run_regreet_drops_write(make_runtime))


def test_capability_drop_race_is_caught_without_the_fence(make_runtime: MakeRuntime) -> None:
    obs = run_regreet_drops_write(make_runtime, **NO_FENCE)
    assert [r.request_id for r in obs.fence_violations] == ["w1"]
    with pytest.raises(AssertionError):
        check_regreet_drops_write(obs)


# ---- 4. two channels binding one unbound task ---------------------------------------

def run_two_channels_bind(make_runtime: MakeRuntime, order: tuple[int, ...],
                          **seams: object) -> Observed:
    rt, h = start(make_runtime, **seams)
    obs = Observed()
    rt.greet(WS, "ops", writer_card("pa"))
    rt.greet(WS, "dev", writer_card("pb"))
    task_id = h.submit_now(c("mk"), CreateTask(title="unbound")).task_id
    assert task_id
    h.hold()
    b_ops = h.submit(c("bind", "pa", "ops"), UpdateTask(task_id=task_id, network_channel="ops"))
    b_dev = h.submit(c("bind", "pb", "dev"), UpdateTask(task_id=task_id, network_channel="dev"))
    assert h.held() == ("bind", "bind")
    h.release(order)                             # both reach the store in one batch
    obs.out["ops"], obs.out["dev"] = outcome(b_ops), outcome(b_dev)
    loser = "dev" if order[0] == 0 else "ops"
    peer = "pb" if loser == "dev" else "pa"
    obs.out["late"] = h.submit_now(c("late", peer, loser), UpdateTask(task_id=task_id,
                                                                      title="loser writes"))
    return finish(rt, h, None, obs)


def check_two_channels_bind(obs: Observed, order: tuple[int, ...]) -> None:
    winner, loser = ("ops", "dev") if order[0] == 0 else ("dev", "ops")
    assert obs.out[winner].accepted
    assert obs.out[loser].reason == Reason.CHANNEL_MISMATCH, "loser not judged on the binding"
    assert obs.out["late"].reason == Reason.CHANNEL_MISMATCH
    task = obs.tasks[obs.out[winner].task_id or ""]
    assert task is not None and task.network_channel == winner and task.version == 2
    assert obs.row("bind", winner).outcome == "accepted"
    lost = obs.row("bind", loser)
    assert (lost.outcome, lost.reason) == ("rejected", Reason.CHANNEL_MISMATCH)
    assert obs.row("bind", winner).seq < lost.seq < obs.row("late", loser).seq
    assert_clean(obs)


@pytest.mark.parametrize("order", [(0, 1), (1, 0)], ids=["ops-first", "dev-first"])
def test_two_channels_binding_one_unbound_task_have_one_winner(
        make_runtime: MakeRuntime, order: tuple[int, ...]) -> None:
    check_two_channels_bind(run_two_channels_bind(make_runtime, order), order)


def test_double_binding_is_caught_with_a_non_atomic_store(make_runtime: MakeRuntime) -> None:
    obs = run_two_channels_bind(make_runtime, (0, 1), **NON_ATOMIC_STORE)
    assert any("mutated a task bound to ops" in p for p in obs.order_violations), \
        obs.order_violations
    with pytest.raises(AssertionError):
        check_two_channels_bind(obs, (0, 1))


# ---- 5. update racing cancel --------------------------------------------------------

def run_update_racing_cancel(make_runtime: MakeRuntime, **seams: object) -> Observed:
    rt, h = start(make_runtime, **seams)
    obs = Observed()
    rt.greet(WS, "ops", writer_card("pa"))
    rt.greet(WS, "dev", writer_card("pb"))
    task_id = h.submit_now(c("mk"), CreateTask(title="original")).task_id
    assert task_id
    h.hold()
    cancel = h.submit(c("x", "pb", "dev"), CancelTask(task_id=task_id, reason="stop"))
    update = h.submit(c("u", "pa", "ops"), UpdateTask(task_id=task_id, title="renamed"))
    assert h.held() == ("x", "u")
    h.release()
    obs.out["x"], obs.out["u"] = outcome(cancel), outcome(update)
    return finish(rt, h, None, obs)


def check_update_racing_cancel(obs: Observed) -> None:
    assert obs.out["x"].accepted
    assert obs.out["u"].reason == Reason.PERMISSION_DENIED, "update applied to a canceled task"
    task = obs.tasks[obs.out["x"].task_id or ""]
    assert task is not None
    assert (task.status, task.title, task.version) == ("canceled", "original", 2)
    x, u = obs.row("x", "dev"), obs.row("u", "ops")
    assert (x.outcome, x.action) == ("accepted", Action.CANCEL)
    assert (u.outcome, u.reason, u.action) == ("rejected", Reason.PERMISSION_DENIED,
                                               Action.UPDATE)
    assert x.seq < u.seq
    assert_clean(obs)


def test_update_arriving_after_cancel_is_judged_against_the_canceled_task(
        make_runtime: MakeRuntime) -> None:
    check_update_racing_cancel(run_update_racing_cancel(make_runtime))


def test_update_cancel_race_is_caught_with_a_non_atomic_store(make_runtime: MakeRuntime
                                                             ) -> None:
    obs = run_update_racing_cancel(make_runtime, **NON_ATOMIC_STORE)
    assert any("changed a canceled task" in p for p in obs.order_violations), \
        obs.order_violations
    with pytest.raises(AssertionError):
        check_update_racing_cancel(obs)


# ---- 6. a replayed request ID racing its original -----------------------------------

def run_replay_racing_original(make_runtime: MakeRuntime, **seams: object) -> Observed:
    rt, h = start(make_runtime, **seams)
    obs = Observed()
    rt.greet(WS, "ops", writer_card("pa"))
    h.hold()
    first = h.submit(c("r1"), CreateTask(title="exactly once"))
    again = h.submit(c("r1"), CreateTask(title="exactly once"))
    obs.early["both_at_store"] = h.held() == ("r1", "r1")
    h.release()
    obs.out["first"], obs.out["again"] = outcome(first), outcome(again)
    return finish(rt, h, None, obs)


def check_replay_racing_original(obs: Observed) -> None:
    first, again = obs.out["first"], obs.out["again"]
    assert first.accepted and not first.replay
    assert again.accepted and again.replay, "the repeat was applied again"
    assert again.task_id == first.task_id
    rows = record_of(obs.records, "r1")
    assert [(r.outcome, r.replay, r.task_id) for r in rows] == [
        ("accepted", False, first.task_id), ("accepted", True, first.task_id)]
    assert len(obs.tasks) == 1
    assert_clean(obs)


def test_replayed_request_id_racing_its_original_is_applied_once(
        make_runtime: MakeRuntime) -> None:
    check_replay_racing_original(run_replay_racing_original(make_runtime))


def test_replay_reaching_the_store_with_its_original_is_applied_once(
        make_runtime: MakeRuntime) -> None:
    # the naive fence lets the repeat travel right behind the original, so both reach the store
    # in one batch; the store's replay check runs inside the transaction and wins alone.
    obs = run_replay_racing_original(make_runtime, **NO_FENCE)
    assert obs.early["both_at_store"], "the repeat did not race the original to the store"
    check_replay_racing_original(obs)


def test_replay_behind_a_serializing_channel_is_applied_once_even_by_a_naive_store(
        make_runtime: MakeRuntime) -> None:
    # channel_pipeline=1: the repeat is only admitted after the original committed, so even
    # the check-then-act store judges it against the committed original.
    obs = run_replay_racing_original(make_runtime, **NON_ATOMIC_STORE, channel_pipeline=1)
    assert not obs.early["both_at_store"]
    check_replay_racing_original(obs)


def test_double_application_is_caught_with_a_non_atomic_store(make_runtime: MakeRuntime
                                                              ) -> None:
    obs = run_replay_racing_original(make_runtime, **NO_FENCE, **NON_ATOMIC_STORE)
    assert obs.early["both_at_store"]
    assert any("applied a second time" in p for p in obs.order_violations), \
        obs.order_violations
    with pytest.raises(AssertionError):
        check_replay_racing_original(obs)
