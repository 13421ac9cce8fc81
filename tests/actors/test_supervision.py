"""A channel actor that dies is replaced; what it held is answered, later requests served."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from task_ingress.actors.presence import Presence
from task_ingress.actors.router import lost_tickets
from task_ingress.actors.task_store import TaskStore
from task_ingress.messages import CreateTask, IngressContext, Outcome, Reason
from task_ingress.messages.protocol import ChainLease
from task_ingress.runtime import IngressRuntime
from task_ingress.runtime.inbox import Call
from task_ingress.testing import OUTBOX_STORE
from thespian.actors import ActorExitRequest

from tests.conftest import ctx, writer_card


def submit_as_one_batch(rt: IngressRuntime, items: list[tuple[IngressContext, Any]]
                        ) -> list[Outcome]:
    """Hand the driver several requests at once, so they travel as one batch."""
    driver = rt._driver
    assert driver is not None
    calls = []
    for context, request in items:
        sub, key = rt._submission(driver, context, request)
        calls.append(Call(message=sub, peer=key))
    driver.submit_calls(calls)  # one inbox item: the driver takes them as one batch
    return [driver.wait(c.future).outcome for c in calls]


def test_lost_tickets_are_the_suspects_still_unanswered() -> None:
    assert lost_tickets({1, 2, 3}, {2: object(), 3: object(), 9: object()}) == [2, 3]  # type: ignore[dict-item]


def _kill_channel_on_first_batch(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make the first channel actor that hands Presence a batch die right after; returns
    (once it happened) the request IDs of that batch."""
    original = Presence.receiveMsg_InFlights
    killed: list[str] = []

    def kill_channel_on_first(self: Presence, msg: Any, sender: Any) -> None:
        if not killed:
            # `sender` is the channel actor; it dies holding the requests queued behind.
            killed.extend(f.context.request_id for f in msg.items)
            self.send(sender, ActorExitRequest())
        original(self, msg, sender)

    monkeypatch.setattr(Presence, "receiveMsg_InFlights", kill_channel_on_first)
    return killed


def test_requests_held_by_a_dead_channel_actor_get_failed_and_the_channel_recovers(
    make_runtime: Callable[..., IngressRuntime], monkeypatch: pytest.MonkeyPatch
) -> None:
    rt = make_runtime(channel_pipeline=1, max_in_flight_per_peer=64)
    rt.greet("ws", "ops", writer_card("peer-a"))
    killed = _kill_channel_on_first_batch(monkeypatch)
    # Several requests of one channel in one batch, so some wait inside the channel actor.
    outcomes = submit_as_one_batch(rt, [(ctx(f"r{i}"), CreateTask(title="t")) for i in range(40)])
    monkeypatch.undo()
    reasons = {o.reason for o in outcomes}
    assert killed and reasons == {None, Reason.TASK_INGRESS_FAILED}
    records = rt.audit()
    assert len(records) == 40  # every request answered exactly once
    by_id = {r.request_id: r for r in records}
    for o in outcomes:
        assert by_id[o.request_id].outcome == ("accepted" if o.accepted else "rejected")
    # A failed request was not applied: it can be retried and is judged afresh.
    for o in outcomes:
        if o.reason == Reason.TASK_INGRESS_FAILED:
            retry = rt.submit(ctx(o.request_id), CreateTask(title="t"))
            assert retry.accepted and not retry.replay
    assert rt.submit(ctx("after"), CreateTask(title="t")).accepted


def test_a_probe_lost_in_a_dead_store_goes_again_and_the_dead_channels_requests_are_answered(
    make_runtime: Callable[..., IngressRuntime], monkeypatch: pytest.MonkeyPatch
) -> None:
    rt = make_runtime(channel_pipeline=1, max_in_flight_per_peer=64)
    rt.greet("ws", "ops", writer_card("peer-a"))
    killed = _kill_channel_on_first_batch(monkeypatch)

    def die_on_first_probe(self: TaskStore, msg: Any, sender: Any) -> None:
        # The store dies with the probe the channel actor's death sent down (and whatever
        # it had buffered): nothing comes back for that probe from this store.
        monkeypatch.setattr(TaskStore, "receiveMsg_Probe", original_probe)
        self.pending = []
        self.send(self.myAddress, ActorExitRequest())

    original_probe = TaskStore.receiveMsg_Probe
    monkeypatch.setattr(TaskStore, "receiveMsg_Probe", die_on_first_probe)
    outcomes = submit_as_one_batch(rt, [(ctx(f"r{i}"), CreateTask(title="t")) for i in range(40)])
    monkeypatch.undo()
    assert killed and Reason.TASK_INGRESS_FAILED in {o.reason for o in outcomes}
    records = rt.audit()
    assert sorted(r.request_id for r in records) == sorted(o.request_id for o in outcomes)
    assert rt.submit(ctx("after"), CreateTask(title="t")).accepted


def _crash_store_on_first_flush(monkeypatch: pytest.MonkeyPatch, commit_first: bool) -> None:
    """Make the store die like a killed process on its first batch: buffer lost, and (with
    `commit_first`) only after committing the batch without reporting it. A chaining store
    dies holding Audit's lease (its records committed with the batch, or nothing); an
    outbox store's batch leaves outbox rows."""
    crashed: list[bool] = []
    originals = {"receiveMsg_Flush": TaskStore.receiveMsg_Flush,
                 "receiveMsg_ChainLease": TaskStore.receiveMsg_ChainLease}

    def batch_then_die(name: str) -> Callable[[TaskStore, Any, Any], None]:
        def handler(self: TaskStore, msg: Any, sender: Any) -> None:
            if crashed:
                originals[name](self, msg, sender)
                return
            crashed.append(True)
            if commit_first:
                self.lease = msg if isinstance(msg, ChainLease) else None
                self._apply_batch(self.pending)  # committed, verdicts never sent
            self.pending = []
            self.send(self.myAddress, ActorExitRequest())
        return handler

    def die(self: TaskStore, msg: Any, sender: Any) -> None:
        if self.conn is not None:
            self.conn.close()  # no flush: a crash does not tidy up
            self.conn = None

    for name in originals:
        monkeypatch.setattr(TaskStore, name, batch_then_die(name))
    monkeypatch.setattr(TaskStore, "receiveMsg_ActorExitRequest", die)


STORES = [pytest.param(None, id="chaining"), pytest.param(OUTBOX_STORE, id="outbox")]


def _two_channels(make_runtime: Callable[..., IngressRuntime], store: str | None = None
                  ) -> IngressRuntime:
    rt = make_runtime(**({} if store is None else {"store_actor_class": store}))
    for channel in ("ops", "dev"):
        for peer in ("peer-a", "peer-b"):
            rt.greet("ws", channel, writer_card(peer))
    return rt


def _batch() -> list[tuple[IngressContext, Any]]:
    return [(ctx(f"{p}-{c}", peer=p, channel=c), CreateTask(title=f"{p}-{c}"))
            for p in ("peer-a", "peer-b") for c in ("ops", "dev")]


@pytest.mark.parametrize("store", STORES)
def test_store_death_fails_its_uncommitted_batch_and_a_new_store_serves(
    make_runtime: Callable[..., IngressRuntime], monkeypatch: pytest.MonkeyPatch,
    store: str | None
) -> None:
    rt = _two_channels(make_runtime, store)
    _crash_store_on_first_flush(monkeypatch, commit_first=False)
    outcomes = submit_as_one_batch(rt, _batch())
    assert {o.reason for o in outcomes} == {Reason.TASK_INGRESS_FAILED}
    records = rt.audit()
    assert len(records) == 4 and {r.reason for r in records} == {Reason.TASK_INGRESS_FAILED}
    monkeypatch.undo()
    out = rt.submit(ctx("later"), CreateTask(title="t"))
    assert out.accepted and rt.get_task("ws", out.task_id or "") is not None


@pytest.mark.parametrize("store", STORES)
def test_store_death_after_commit_answers_the_committed_writes_accepted_once(
    make_runtime: Callable[..., IngressRuntime], monkeypatch: pytest.MonkeyPatch,
    store: str | None
) -> None:
    rt = _two_channels(make_runtime, store)
    _crash_store_on_first_flush(monkeypatch, commit_first=True)
    outcomes = submit_as_one_batch(rt, _batch())
    monkeypatch.undo()
    assert all(o.accepted and o.task_id for o in outcomes), outcomes
    records = rt.audit()
    assert sorted(r.request_id for r in records) == sorted(o.request_id for o in outcomes)
    for o in outcomes:
        task = rt.get_task("ws", o.task_id or "")
        assert task is not None and task.metadata["ingress.request_id"] == o.request_id
    assert rt.submit(ctx("later"), CreateTask(title="t")).accepted


@pytest.mark.parametrize("store", STORES)
def test_store_death_after_commit_recovers_ids_whose_record_holds_them_escaped(
    make_runtime: Callable[..., IngressRuntime], monkeypatch: pytest.MonkeyPatch,
    store: str | None
) -> None:
    # SPEC 2 admits format characters (here U+200B) in workspace and request IDs; the
    # record holds them escaped (gate.safe_field), and so does what a probe recovers.
    rt = make_runtime(**({} if store is None else {"store_actor_class": store}))
    workspace = "w\u200bs"
    rt.greet(workspace, "ops", writer_card("peer-a"))
    _crash_store_on_first_flush(monkeypatch, commit_first=True)
    request = ctx("r\u200b1", workspace=workspace)
    [outcome] = submit_as_one_batch(rt, [(request, CreateTask(title="t"))])
    monkeypatch.undo()
    assert outcome.accepted and outcome.task_id, outcome
    assert outcome.request_id == request.request_id
    records = rt.audit()
    assert [(r.request_id, r.outcome) for r in records] == [("r\\u200b1", "accepted")]
    assert rt.get_task(workspace, outcome.task_id) is not None
