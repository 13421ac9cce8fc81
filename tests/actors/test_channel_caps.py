"""Channel caps: `max_channels` (channel actors the runtime keeps) and
`max_channels_per_peer` (channels one peer ID is visible in). A greet past either is
`overloaded`, audited, not applied; requests and leaves never start a channel actor."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from task_ingress.actors.presence import over_channel_cap
from task_ingress.messages import Action, CreateTask, Reason
from task_ingress.runtime import IngressRuntime, PresenceRefused

from tests.conftest import FakeClock, ctx, writer_card

INTERVAL = 30.0


def refused(rt: IngressRuntime, ws: str, ch: str, peer: str) -> Reason:
    with pytest.raises(PresenceRefused) as info:
        rt.greet(ws, ch, writer_card(peer))
    return info.value.reason


def test_the_per_peer_cap_counts_visible_channels_and_lets_re_greets_pass() -> None:
    greets = {("ws", "a", "p"): 0.0, ("ws", "b", "p"): 50.0, ("ws2", "a", "p"): 50.0}
    mine = {("ws", "a"), ("ws", "b"), ("ws2", "a")}
    def over(key: tuple[str, str, str], now: float, cap: int) -> bool:
        return over_channel_cap(key, mine, greets, now, INTERVAL, cap)
    assert over(("ws", "c", "p"), 59.0, cap=3)  # three visible
    assert not over(("ws", "c", "p"), 60.0, cap=3)  # ws/a expired: two visible
    assert not over(("ws", "b", "p"), 60.0, cap=2)  # a re-greet of a visible channel
    assert over(("ws", "a", "p"), 60.0, cap=2)  # an expired one counts as new


def test_a_greet_for_one_channel_more_than_max_channels_is_overloaded_until_one_is_freed(
    make_runtime: Callable[..., IngressRuntime], clock: FakeClock
) -> None:
    rt = make_runtime(max_channels=2, greet_interval=INTERVAL)
    rt.greet("ws", "ch-a", writer_card("peer-a"))
    rt.greet("ws", "ch-b", writer_card("peer-b"))
    assert refused(rt, "ws", "ch-c", "peer-c") == Reason.OVERLOADED
    [record] = rt.audit()
    assert (record.channel, record.peer_id, record.action, record.outcome, record.reason) == (
        "ch-c", "peer-c", Action.GREET, "rejected", Reason.OVERLOADED)
    assert rt.submit(ctx("r-1", "peer-c", "ch-c"), CreateTask(title="t")).reason == \
        Reason.PEER_NOT_FOUND
    # Channels that have an actor take any number of greets.
    rt.greet("ws", "ch-a", writer_card("peer-c"))
    rt.greet("ws", "ch-a", writer_card("peer-a"))
    assert rt.submit(ctx("r-2", "peer-c", "ch-a"), CreateTask(title="t")).accepted
    # Once ch-b's peer expired, the sweep stops its actor and frees the slot.
    clock.advance(2 * INTERVAL)
    rt.greet("ws", "ch-a", writer_card("peer-a"))
    assert rt.sweep().channel_actors == 1
    rt.greet("ws", "ch-c", writer_card("peer-c"))
    assert rt.submit(ctx("r-3", "peer-c", "ch-c"), CreateTask(title="t")).accepted


def test_a_peer_visible_in_max_channels_per_peer_cannot_greet_one_more(
    make_runtime: Callable[..., IngressRuntime], clock: FakeClock
) -> None:
    rt = make_runtime(max_channels_per_peer=2, greet_interval=INTERVAL)
    rt.greet("ws", "ch-a", writer_card("peer-a"))
    rt.greet("ws2", "ch-a", writer_card("peer-a"))  # the cap counts across workspaces
    assert refused(rt, "ws", "ch-b", "peer-a") == Reason.OVERLOADED
    [record] = rt.audit()
    assert (record.workspace, record.channel, record.action, record.reason) == (
        "ws", "ch-b", Action.GREET, Reason.OVERLOADED)
    assert rt.submit(ctx("r-1", "peer-a", "ch-b"), CreateTask(title="t")).reason == \
        Reason.PEER_NOT_FOUND
    rt.greet("ws", "ch-a", writer_card("peer-a"))  # a re-greet only refreshes: always passes
    rt.greet("ws", "ch-b", writer_card("peer-b"))  # other peers are not affected
    rt.leave("ws2", "ch-a", "peer-a")  # leaving frees one
    rt.greet("ws", "ch-b", writer_card("peer-a"))
    assert rt.submit(ctx("r-2", "peer-a", "ch-b"), CreateTask(title="t")).accepted
    clock.advance(2 * INTERVAL)  # so does expiry, even before a sweep
    rt.greet("ws", "ch-c", writer_card("peer-a"))
    rt.greet("ws", "ch-d", writer_card("peer-a"))
    assert refused(rt, "ws", "ch-e", "peer-a") == Reason.OVERLOADED


def test_requests_and_leaves_for_a_channel_without_an_actor_start_none(
    make_runtime: Callable[..., IngressRuntime],
) -> None:
    rt = make_runtime(max_channels=1)
    for i in range(5):
        out = rt.submit(ctx(f"r-{i}", "peer-a", f"nowhere-{i}"), CreateTask(title="t"))
        assert out.reason == Reason.PEER_NOT_FOUND
        rt.leave("ws", f"nowhere-{i}", "peer-a")
    assert [r.reason for r in rt.audit()] == [Reason.PEER_NOT_FOUND] * 5
    assert rt.sweep().channel_actors == 0
    rt.greet("ws", "ops", writer_card("peer-a"))  # the one slot is still free
    assert rt.sweep().channel_actors == 1
