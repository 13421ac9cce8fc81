"""The whole runtime against a sequential model of SPEC, step by step (hypothesis).

Each example starts a fresh runtime (fake clock, greet interval 30 s) and runs random greets
(writer, writer without proof, reader, the local peer), leaves, clock advances across the
expiry boundary, sweeps (which stop idle channel actors: reaping must change no outcome),
operator locks, and submits of all four actions, good and bad, from
4 peers + the local peer in 3 channels of 2 workspaces. After every submit the outcome,
the single new audit record and (for acceptances) the stored task/run must match the model.

Normal suite: 300 examples. `TASK_INGRESS_SLOW=1`: 5,000, as ten tests of 500 (see
docs/race-freedom.md); `TASK_INGRESS_RACE_EXAMPLES=N` sets any other count.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, Phase, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    rule,
    run_state_machine_as_test,
)
from task_ingress.actors import presence
from task_ingress.actors.rules import gate
from task_ingress.messages import (
    CancelTask,
    CreateTask,
    EnqueueRun,
    IngressContext,
    Outcome,
    PeerCard,
    UpdateTask,
)
from task_ingress.messages.requests import AnyRequest
from task_ingress.runtime import IngressRuntime, RuntimeConfig

from tests.conftest import FakeClock
from tests.race.race_model import Prediction, SpecModel

SLOW = os.environ.get("TASK_INGRESS_SLOW") == "1"
EXAMPLES = int(os.environ.get("TASK_INGRESS_RACE_EXAMPLES", 5000 if SLOW else 300))
STEPS = 60
CHUNK = 500
INTERVAL = 30.0
LOCAL = "local"
# A failing example is shrunk by replaying it on fresh runtimes; give that room to finish.
pytestmark = pytest.mark.timeout(3600 if SLOW else 1200)
Sender = tuple[str, str, str, int, int]

workspaces = st.sampled_from(["ws1", "ws2"])
channels = st.sampled_from(["c1", "c2", "c3"])
peers = st.sampled_from(["pa", "pb", "pc", "pd"])
request_ids = st.sampled_from([f"r{i}" for i in range(10)])
task_picks = st.integers(min_value=0, max_value=19)
# Who submits: mostly someone the model says is visible (so writes reach the store), else
# any (workspace, channel, peer) at all.
senders = st.tuples(workspaces, channels, peers, st.integers(min_value=0, max_value=4),
                    st.integers(min_value=0, max_value=99))
# "own" / "other" are resolved against the ingress channel when the request is built.
wanted_channels = st.sampled_from(["", "own", "own", "own", "other", "BAD!"])


def _card(peer: str, kind: str) -> PeerCard:
    caps = ["task.read"] if kind == "reader" else ["task.read", "task.write"]
    return PeerCard(peer_id=peer, capabilities=caps, proof="" if kind == "no-proof" else "sig")


def _resolve(wanted: str | None, channel: str) -> str | None:
    if wanted == "own":
        return channel
    if wanted == "other":
        return {"c1": "c2", "c2": "c3", "c3": "c1"}[channel]
    return wanted


class RuntimeMachine(RuleBasedStateMachine):
    """One runtime per example; every step checked against `SpecModel`."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.model = SpecModel(greet_interval=INTERVAL, local_peer_id=LOCAL,
                               now=self.clock.now)
        self.rt = IngressRuntime(RuntimeConfig(
            clock=self.clock, greet_interval=INTERVAL, local_peer_id=LOCAL, peer_rate=0.0))
        self.rt.start()
        self.seen = 0

    def teardown(self) -> None:
        """Close the runtime (and with it every actor)."""
        self.rt.close()

    # ---- presence and time ----------------------------------------------------------
    @initialize()
    def some_writers(self) -> None:
        """Start with two writers so that writes get far enough to reach the store."""
        for ws, ch, peer in (("ws1", "c1", "pa"), ("ws1", "c2", "pb"), ("ws1", "c1", "pc"),
                             ("ws2", "c1", "pd"), ("ws2", "c3", "pa")):
            self.rt.greet(ws, ch, _card(peer, "writer"))
            self.model.greet(ws, ch, _card(peer, "writer"))

    @rule(ws=workspaces, ch=channels,
          peer=st.sampled_from(["pa", "pb", "pc", "pd", LOCAL]),
          kind=st.sampled_from(["writer", "writer", "no-proof", "reader"]))
    def greet(self, ws: str, ch: str, peer: str, kind: str) -> None:
        """Greet or re-greet with a card that may or may not grant task.write."""
        self.rt.greet(ws, ch, _card(peer, kind))
        self.model.greet(ws, ch, _card(peer, kind))

    @rule(ws=workspaces, ch=channels, peer=peers)
    def leave(self, ws: str, ch: str, peer: str) -> None:
        """Leave (also when not present)."""
        self.rt.leave(ws, ch, peer)
        self.model.leave(ws, ch, peer)

    @rule(seconds=st.sampled_from([1.0, 1.0, 5.0, 10.0, 20.0, 29.0, 30.0, 31.0, 60.0]))
    def tick(self, seconds: float) -> None:
        """Move the fake clock; expiry is exactly at 2 x 30 s."""
        self.clock.advance(seconds)
        self.model.advance(seconds)

    @rule()
    def sweep(self) -> None:
        """Housekeeping now: expired peers and cards are forgotten, idle channel actors
        stopped. Invisible to every later outcome (the model has no such step); what
        stays held is exactly what the model says is visible."""
        held = self.rt.sweep()
        visible = self.model.visible()
        assert (held.presence_entries, held.peer_cards) == (len(visible), len(visible)), (
            f"runtime holds {held}, model has {len(visible)} visible")
        assert held.channel_actors >= len({(ws, ch) for ws, ch, _ in visible}), (
            f"runtime holds {held}, model has {visible} visible")

    @rule(pick=task_picks)
    def lock(self, pick: int) -> None:
        """Operator lock on a known task."""
        if self.model.order:
            task = self.model.tasks[self.model.order[pick % len(self.model.order)]]
            assert self.rt.lock_task(task.workspace, task.task_id)
            self.model.lock(task.task_id)

    # ---- submits ----------------------------------------------------------------------
    def _context(self, who: Sender, rid: str) -> IngressContext:
        ws, ch, peer, bias, index = who
        # 0-2: a visible writer; 3: anyone ever greeted (expired, reader, local); 4: anyone.
        pool = self.model.visible(writers_only=True) if bias < 3 else sorted(self.model.greets)
        if bias < 4 and pool:
            ws, ch, peer = pool[index % len(pool)]
        return IngressContext(workspace=ws, peer_id=peer, channel=ch, request_id=rid)

    def _task_id(self, pick: int, ctx: IngressContext) -> str:
        """Mostly a task this sender may touch; else any task, or one that does not exist."""
        order = self.model.order
        here = [t for t in order if self.model.tasks[t].workspace == ctx.workspace]
        mine = [t for t in here if self.model.tasks[t].binding in ("", ctx.channel)]
        for pool, below in ((mine, 10), (here, 14), (order, 16)):
            if pick < below and pool:
                return pool[pick % len(pool)]
        return f"task_missing{pick}"

    @rule(who=senders, rid=request_ids, bind=st.booleans())
    def create_good(self, who: Sender, rid: str, bind: bool) -> None:
        """The common case, so that later steps have tasks to race on."""
        ctx = self._context(who, rid)
        self._submit(ctx, CreateTask(title="Task", network_channel=ctx.channel if bind else ""))

    @rule(who=senders, rid=request_ids, pick=task_picks,
          title=st.sampled_from([None, None, "Renamed", ""]),
          wanted=st.sampled_from([None, None, None, "", "own", "other", "BAD!"]),
          expected=st.sampled_from([None, None, None, 1, 2, 0]))
    def update(self, who: Sender, rid: str, pick: int, title: str | None,
               wanted: str | None, expected: int | None) -> None:
        """task.update, good and bad (stale versions, foreign channels, blank titles)."""
        ctx = self._context(who, rid)
        ch = ctx.channel
        self._submit(ctx, UpdateTask(task_id=self._task_id(pick, ctx), title=title,
                                network_channel=_resolve(wanted, ch), expected_version=expected))

    @rule(who=senders, rid=request_ids, pick=task_picks)
    def cancel(self, who: Sender, rid: str, pick: int) -> None:
        """task.cancel (repeat cancels are accepted no-ops)."""
        ctx = self._context(who, rid)
        self._submit(ctx, CancelTask(task_id=self._task_id(pick, ctx), reason="stop"))

    @rule(who=senders, rid=request_ids, pick=task_picks,
          key=st.sampled_from(["k1", "k2", "k2", ""]),
          wanted=st.sampled_from(["", "", "own", "other"]))
    def enqueue(self, who: Sender, rid: str, pick: int, key: str,
                wanted: str) -> None:
        """task.run.enqueue, with idempotency keys reused across tasks."""
        ctx = self._context(who, rid)
        ch = ctx.channel
        self._submit(ctx, EnqueueRun(task_id=self._task_id(pick, ctx), idempotency_key=key,
                                network_channel=_resolve(wanted, ch) or ""))

    @rule(ws=st.sampled_from(["ws1", "bad.ws"]), ch=st.sampled_from(["c1", "-x"]),
          peer=st.sampled_from(["pa", "Bad Peer"]), rid=st.sampled_from(["r0", "a/b", ""]))
    def malformed_context(self, ws: str, ch: str, peer: str, rid: str) -> None:
        """Rule 1 (and, when everything is fine after all, the normal path)."""
        self._submit(IngressContext(workspace=ws, peer_id=peer, channel=ch, request_id=rid),
                     CreateTask(title="from a bad context"))

    def _submit(self, ctx: IngressContext, request: AnyRequest) -> None:
        pred = self.model.predict(ctx, request)
        out = self.rt.submit(ctx, request)
        event(f"{out.action.value} " + ("replay" if out.replay else "accepted" if out.accepted
                                         else str(out.reason)))
        self._check_outcome(ctx, pred, out)
        self._check_audit(ctx, out)
        self.model.commit(ctx, request, pred, out.task_id, out.run_id)
        if pred.accepted and not pred.replay:
            self._check_store(ctx, out)

    def _check_outcome(self, ctx: IngressContext, pred: Prediction, out: Outcome) -> None:
        got = (out.accepted, out.reason, out.action, out.replay)
        want = (pred.accepted, pred.reason, pred.action, pred.replay)
        assert got == want, f"{ctx} -> runtime {got}, model {want}"
        if pred.new_task:
            assert out.task_id and out.task_id not in self.model.tasks
        elif pred.accepted:
            assert out.task_id == pred.task_id
        if pred.new_run:
            assert out.run_id
        elif pred.accepted:
            assert out.run_id == pred.run_id
        else:
            assert (out.task_id, out.run_id) == (None, None)

    def _check_audit(self, ctx: IngressContext, out: Outcome) -> None:
        records = self.rt.audit()
        assert len(records) == self.seen + 1, "exactly one audit record per submit"
        self.seen += 1
        rec = records[-1]
        assert (rec.workspace, rec.channel, rec.peer_id, rec.request_id) == (
            ctx.workspace, ctx.channel, ctx.peer_id, ctx.request_id)
        assert (rec.outcome == "accepted") == out.accepted
        assert (rec.reason, rec.action, rec.replay, rec.task_id, rec.run_id) == (
            out.reason, out.action, out.replay, out.task_id, out.run_id)

    def _check_store(self, ctx: IngressContext, out: Outcome) -> None:
        assert out.task_id is not None
        want = self.model.tasks[out.task_id]
        task = self.rt.get_task(want.workspace, out.task_id)
        assert task is not None
        assert (task.network_channel, task.status, task.version, task.title, task.locked) == (
            want.binding, want.status, want.version, want.title, want.locked)
        if out.run_id is not None:
            run = self.rt.get_run(ctx.workspace, out.run_id)
            assert run is not None and run.task_id == out.task_id


def _chunks(total: int) -> list[int]:
    """Examples per test: hypothesis keeps every explored choice in memory while a test
    runs (about 0.5 MB per example here), so long runs are split into 500-example tests."""
    return [min(CHUNK, total - start) for start in range(0, total, CHUNK)]


@pytest.mark.parametrize("examples", _chunks(EXAMPLES),
                         ids=[f"part{i + 1}" for i in range(len(_chunks(EXAMPLES)))])
def test_runtime_agrees_with_the_spec_model_step_by_step(examples: int) -> None:
    run_state_machine_as_test(RuntimeMachine, settings=settings(
        max_examples=examples, stateful_step_count=STEPS, deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    ))


def _finds_a_difference() -> str:
    """Run the machine briefly (no shrinking) and return the model/runtime disagreement."""
    quick = settings(max_examples=300, stateful_step_count=STEPS, deadline=None,
                     phases=[Phase.generate], database=None, derandomize=True,
                     suppress_health_check=[HealthCheck.too_slow])
    with pytest.raises(AssertionError) as caught:
        run_state_machine_as_test(RuntimeMachine, settings=quick)
    return str(caught.value)


def test_state_machine_catches_an_expiry_off_by_one(monkeypatch: pytest.MonkeyPatch) -> None:
    # Planted bug: a peer stays visible at exactly 2 x greet_interval.
    monkeypatch.setattr(presence, "is_visible", lambda last, now, interval: (
        last is not None and now - last <= 2 * interval))
    assert "model" in _finds_a_difference()


def test_state_machine_catches_a_binding_check_that_skips_a_channel(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Planted bug: tasks bound to c2 may be mutated from any channel.
    real = gate.check_binding
    monkeypatch.setattr(gate, "check_binding", lambda bound, ingress, request: (
        None if bound == "c2" else real(bound, ingress, request)))
    assert "model" in _finds_a_difference()
