"""A refused greet or leave raises `PresenceRefused`, changes nothing, and is audited as
exactly one record (action `greet`/`leave`): every outcome is audited, presence changes too.

Card limits (RuntimeConfig `max_card_capabilities`, `max_capability_chars`,
`max_display_name_chars`, `max_proof_bytes`) keep a peer from growing memory through the
card the runtime holds until it leaves or expires.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from task_ingress.messages import Action, CreateTask, PeerCard, Reason
from task_ingress.runtime import IngressRuntime, PresenceRefused

from tests.conftest import FakeClock, ctx, writer_card

BASES = ["simpleSystemBase", pytest.param("multiprocQueueBase", marks=pytest.mark.multiproc)]
OVERSIZED = {
    "capabilities": {"capabilities": ["task.write"] + [f"cap{i}" for i in range(64)]},
    "capability_length": {"capabilities": ["task.write", "c" * 65]},
    "capability_grammar": {"capabilities": ["task.write", "Task.Admin"]},
    "display_name": {"display_name": "n" * 129},
    "proof": {"proof": "p" * 4097},
}


@pytest.mark.parametrize("base", BASES)
def test_a_card_over_a_limit_is_refused_audited_once_and_keeps_the_old_card_and_expiry(
    make_runtime: Callable[..., IngressRuntime], clock: FakeClock, base: str
) -> None:
    rt = make_runtime(actor_base=base, greet_interval=30.0)
    rt.greet("ws", "ops", writer_card("peer-a"))
    clock.advance(59.0)
    for name, over in OVERSIZED.items():
        with pytest.raises(PresenceRefused) as refused:
            rt.greet("ws", "ops", writer_card("peer-a").model_copy(update=over))
        assert refused.value.reason == Reason.INVALID_REQUEST, name
        assert isinstance(refused.value, ValueError)  # as malformed identifiers always were
    records = rt.audit()
    assert len(records) == len(OVERSIZED)
    assert {(r.workspace, r.channel, r.peer_id, r.actor, r.request_id, r.action, r.outcome,
             r.reason) for r in records} == {
        ("ws", "ops", "peer-a", "peer:peer-a/channel:ops", "", Action.GREET, "rejected",
         Reason.INVALID_REQUEST)}
    assert all(r.payload_size > 4000 for r in records if r.seq == len(OVERSIZED))  # the proof
    # The old card still holds (task.write), and the refused greets refreshed nothing.
    assert rt.submit(ctx("r-1"), CreateTask(title="t")).accepted
    clock.advance(1.0)
    assert rt.submit(ctx("r-2"), CreateTask(title="t")).reason == Reason.PEER_NOT_FOUND


def test_a_new_peer_with_an_oversized_card_stays_invisible_and_holds_nothing(
    make_runtime: Callable[..., IngressRuntime],
) -> None:
    rt = make_runtime()
    big = PeerCard(peer_id="peer-x", capabilities=[f"cap.x{i:04d}" for i in range(1000)],
                   proof="p")
    with pytest.raises(PresenceRefused):
        rt.greet("ws", "ops", big)
    assert rt.submit(ctx("r-1", peer="peer-x"), CreateTask(title="t")).reason == \
        Reason.PEER_NOT_FOUND
    held = rt.sweep()
    assert (held.channel_actors, held.presence_entries, held.peer_cards) == (0, 0, 0)


@pytest.mark.parametrize(("ws", "ch", "peer"), [("ws/x", "ops", "peer-a"),
                                                 ("ws", "OPS", "peer-a"),
                                                 ("ws", "ops", "peer\tx")])
def test_malformed_greet_and_leave_identifiers_are_refused_and_audited_in_safe_form(
    make_runtime: Callable[..., IngressRuntime], ws: str, ch: str, peer: str
) -> None:
    rt = make_runtime()
    with pytest.raises(PresenceRefused) as greet:
        rt.greet(ws, ch, writer_card(peer))
    with pytest.raises(PresenceRefused) as leave:
        rt.leave(ws, ch, peer)
    assert greet.value.reason == leave.value.reason == Reason.INVALID_REQUEST
    records = rt.audit()
    assert [(r.action, r.reason, r.actor) for r in records] == [
        (Action.GREET, Reason.INVALID_REQUEST, ""), (Action.LEAVE, Reason.INVALID_REQUEST, "")]
    assert all(r.peer_id.isprintable() for r in records)  # "peer\tx" is stored escaped


def test_an_applied_greet_or_leave_writes_no_audit_record(rt: IngressRuntime) -> None:
    rt.greet("ws", "dev", writer_card("peer-b"))
    rt.leave("ws", "dev", "peer-b")
    assert rt.audit() == []
