"""A channel actor that dies is replaced; what it held is answered, later requests served."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from thespian.actors import ActorExitRequest

from actors.presence import Presence
from actors.router import lost_tickets
from messages import CreateTask, Reason
from runtime import IngressRuntime
from runtime.driver import Call
from tests.conftest import ctx, writer_card


def test_lost_tickets_are_the_suspects_still_unanswered() -> None:
    assert lost_tickets({1, 2, 3}, {2: object(), 3: object(), 9: object()}) == [2, 3]  # type: ignore[dict-item]


def test_requests_held_by_a_dead_channel_actor_get_failed_and_the_channel_recovers(
    make_runtime: Callable[..., IngressRuntime], monkeypatch: pytest.MonkeyPatch
) -> None:
    rt = make_runtime(channel_pipeline=1, max_in_flight_per_peer=64)
    rt.greet("ws", "ops", writer_card("peer-a"))
    original = Presence.receiveMsg_InFlight
    killed: list[str] = []

    def kill_channel_on_first(self: Presence, msg: Any, sender: Any) -> None:
        if not killed:
            # `sender` is the channel actor; it dies holding the requests queued behind.
            killed.append(msg.context.request_id)
            self.send(sender, ActorExitRequest())
        original(self, msg, sender)

    monkeypatch.setattr(Presence, "receiveMsg_InFlight", kill_channel_on_first)
    driver = rt._driver
    assert driver is not None
    # Several requests of one channel in one batch, so some wait inside the channel actor.
    calls = []
    for i in range(40):
        target, sub, key = rt._submission(driver, ctx(f"r{i}"), CreateTask(title="t"))
        calls.append(Call(target=target, message=sub, peer=key))
    with driver.inbox.not_empty:  # enqueue atomically: the driver takes them as one batch
        driver.inbox.queue.extend(calls)
        driver.inbox.unfinished_tasks += len(calls)
        driver.inbox.not_empty.notify()
    futures = [c.future for c in calls]
    outcomes = [driver.wait(f).outcome for f in futures]
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
