"""Flow control (SPEC §6 `overloaded`): caps, per-peer request rates and per-peer greet
budgets refuse at once, audited."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable

import psutil
import pytest
from hypothesis import given
from hypothesis import strategies as st
from task_ingress.messages import Action, CreateTask, Reason
from task_ingress.runtime import IngressRuntime, PresenceRefused
from task_ingress.runtime.config import PROCESS_MODES
from task_ingress.runtime.flow import FlowControl, FlowLimits, TokenBucket, refill

from tests.conftest import FakeClock, ctx, writer_card

PEER = ("ws", "ops", "peer-a")


def test_bucket_refills_at_rate_up_to_burst() -> None:
    assert refill(TokenBucket(0.0, 10.0), 12.0, rate=2.0, burst=3.0).tokens == 3.0
    assert refill(TokenBucket(0.0, 10.0), 11.0, rate=2.0, burst=3.0).tokens == 2.0
    # A clock reading from the past never refills.
    assert refill(TokenBucket(1.0, 10.0), 5.0, rate=2.0, burst=3.0).tokens == 1.0


@given(steps=st.lists(st.tuples(st.floats(-2.0, 3.0), st.booleans()), max_size=40),
       rate=st.sampled_from([0.0, 0.5, 2.0, 1000.0]), burst=st.sampled_from([1.0, 3.0, 2.5]))
def test_taking_a_token_refills_in_place_exactly_as_refill_says(
        steps: list[tuple[float, bool]], rate: float, burst: float) -> None:
    # Reference: a fresh bucket per call from the pure `refill`; `_take` mutates its own.
    flow = FlowControl(FlowLimits(peer_rate=rate, peer_burst=burst, max_per_peer=10**6,
                                  max_per_channel=10**6, max_total=10**6))
    model: TokenBucket | None = None
    now = 100.0
    for delta, answered in steps:
        now += delta  # the clock may step back: a bucket never refills from the past
        if rate > 0:
            model = refill(model or TokenBucket(burst, now), now, rate, burst)
            expected = None if model.tokens >= 1.0 else Reason.OVERLOADED
            if expected is None:
                model = TokenBucket(model.tokens - 1.0, model.stamp)
        else:
            expected = None
        assert flow.admit(PEER, now) == expected
        if expected is None and answered:
            flow.release(PEER)
        if rate > 0:
            assert model is not None
            assert flow.buckets[("ws", "", "peer-a")] == model


def test_release_forgets_a_key_whose_count_reaches_zero() -> None:
    flow = FlowControl(FlowLimits(peer_rate=0))
    flow.admit(PEER, 0.0)
    flow.admit(PEER, 0.0)
    flow.release(PEER)
    assert (flow.per_peer[PEER], flow.per_channel[("ws", "ops")], flow.total) == (1, 1, 1)
    flow.release(PEER)
    assert PEER not in flow.per_peer and ("ws", "ops") not in flow.per_channel
    assert flow.total == 0


def test_per_peer_in_flight_cap_refuses_the_excess_and_release_frees_it() -> None:
    flow = FlowControl(FlowLimits(max_per_peer=2, peer_rate=0))
    assert flow.admit(PEER, 0.0) is None and flow.admit(PEER, 0.0) is None
    assert flow.admit(PEER, 0.0) == Reason.OVERLOADED
    assert flow.admit(("ws", "ops", "peer-b"), 0.0) is None  # others unaffected
    flow.release(PEER)
    assert flow.admit(PEER, 0.0) is None


def test_channel_and_total_caps_refuse_the_excess() -> None:
    flow = FlowControl(FlowLimits(max_total=3, max_per_channel=2, peer_rate=0))
    assert flow.admit(("ws", "a", "p1"), 0) is None and flow.admit(("ws", "a", "p2"), 0) is None
    assert flow.admit(("ws", "a", "p3"), 0) == Reason.OVERLOADED
    assert flow.admit(("ws", "b", "p1"), 0) is None
    assert flow.admit(("ws", "c", "p1"), 0) == Reason.OVERLOADED
    for key in (("ws", "a", "p1"), ("ws", "a", "p2"), ("ws", "b", "p1")):
        flow.release(key)
    assert (flow.total, dict(flow.per_channel), dict(flow.per_peer)) == (0, {}, {})


def test_idle_buckets_are_forgotten() -> None:
    flow = FlowControl(FlowLimits(peer_rate=10, peer_burst=10))
    flow.admit(PEER, 0.0)
    flow.release(PEER)
    flow.sweep(0.01)
    assert flow.buckets
    flow.sweep(1.0)
    assert not flow.buckets


def test_greets_have_their_own_budget_per_peer_across_its_channels() -> None:
    flow = FlowControl(FlowLimits(greet_rate=1.0, greet_burst=2.0, peer_rate=1.0,
                                  peer_burst=1.0))
    assert flow.admit_greet(("ws", "a", "p1"), 0.0) is None
    assert flow.admit_greet(("ws", "b", "p1"), 0.0) is None
    assert flow.admit_greet(("ws", "c", "p1"), 0.0) == Reason.OVERLOADED
    assert flow.admit_greet(("ws", "c", "p2"), 0.0) is None  # another peer's own budget
    assert flow.admit(("ws", "a", "p1"), 0.0) is None  # requests draw on another bucket
    assert flow.admit_greet(("ws", "c", "p1"), 1.0) is None  # refilled
    flow.sweep(10.0)
    assert not flow.greet_buckets  # full again: forgotten


@pytest.mark.parametrize("mode", PROCESS_MODES)
def test_a_greet_over_budget_is_overloaded_audited_and_not_applied_while_leaves_are_free(
    make_runtime: Callable[..., IngressRuntime], clock: FakeClock, mode: str
) -> None:
    rt = make_runtime(greet_rate=1.0, greet_burst=2.0, process_mode=mode)
    rt.greet("ws", "ops", writer_card("peer-a"))
    rt.greet("ws", "dev", writer_card("peer-a"))
    with pytest.raises(PresenceRefused) as refused:
        rt.greet("ws", "qa", writer_card("peer-a"))
    assert refused.value.reason == Reason.OVERLOADED
    [record] = rt.audit()
    assert (record.channel, record.peer_id, record.action, record.reason) == (
        "qa", "peer-a", Action.GREET, Reason.OVERLOADED)
    assert rt.submit(ctx("r-1", channel="qa"), CreateTask(title="t")).reason == \
        Reason.PEER_NOT_FOUND  # the card was not applied
    assert rt.submit(ctx("r-2", channel="ops"), CreateTask(title="t")).accepted
    for _ in range(5):  # a leave is never charged (nor refused for load)
        rt.leave("ws", "dev", "peer-a")
    rt.greet("ws", "qa", writer_card("peer-b"))  # other peers have their own budget
    clock.advance(1.0)
    rt.greet("ws", "qa", writer_card("peer-a"))
    assert rt.submit(ctx("r-3", channel="qa"), CreateTask(title="t")).accepted


def test_peer_over_its_rate_gets_overloaded_audited_then_recovers(
    make_runtime: Callable[..., IngressRuntime], clock: FakeClock
) -> None:
    rt = make_runtime(peer_rate=1.0, peer_burst=2.0)
    rt.greet("ws", "ops", writer_card("peer-a"))
    outs = [rt.submit(ctx(f"r{i}"), CreateTask(title="t")) for i in range(3)]
    assert [o.reason for o in outs] == [None, None, Reason.OVERLOADED]
    record = rt.audit()[-1]
    assert (record.request_id, record.outcome, record.reason) == ("r2", "rejected",
                                                                   Reason.OVERLOADED)
    clock.advance(1.0)
    assert rt.submit(ctx("r2"), CreateTask(title="t")).accepted  # retried, judged afresh


def test_flooding_peer_is_overloaded_while_well_behaved_peers_are_all_judged(
    make_runtime: Callable[..., IngressRuntime],
) -> None:
    import time

    rt = make_runtime(clock=time.monotonic, peer_rate=100.0, peer_burst=20.0,
                      max_in_flight_per_peer=4)
    for peer in ("flood", "good-1", "good-2", "good-3"):
        rt.greet("ws", "ops", writer_card(peer))
    rss_before = psutil.Process().memory_info().rss
    stop = threading.Event()
    flood_reasons: Counter[str] = Counter()
    good_reasons: Counter[str] = Counter()
    lock = threading.Lock()

    def flooder(n: int) -> None:
        i = 0
        while not stop.is_set() and i < 3000:
            out = rt.submit(ctx(f"f{n}-{i}", peer="flood"), CreateTask(title="x"))
            with lock:
                flood_reasons[out.reason or "accepted"] += 1
            i += 1

    def good(peer: str) -> None:
        for i in range(40):
            out = rt.submit(ctx(f"{peer}-{i}", peer=peer), CreateTask(title="ok"))
            with lock:
                good_reasons[out.reason or "accepted"] += 1
            time.sleep(0.02)  # 50/s: well under the 100/s limit

    floods = [threading.Thread(target=flooder, args=(n,)) for n in range(6)]
    goods = [threading.Thread(target=good, args=(p,)) for p in ("good-1", "good-2", "good-3")]
    for t in floods + goods:
        t.start()
    for t in goods:
        t.join(timeout=120)
    stop.set()
    for t in floods:
        t.join(timeout=120)
    rss_after = psutil.Process().memory_info().rss
    assert good_reasons == Counter({"accepted": 120})
    assert flood_reasons["overloaded"] > flood_reasons["accepted"] > 0
    records = rt.audit()
    assert len(records) == sum(flood_reasons.values()) + 120  # every refusal audited
    print(f"flood: {dict(flood_reasons)} rss {rss_before >> 20} -> {rss_after >> 20} MiB")
    assert rss_after - rss_before < 150 * 2**20
