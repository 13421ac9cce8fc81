"""Messages of the race-test `Hold` actor (task_ingress.testing.hold): hold store-bound
requests, release them.

Only a runtime started with `RuntimeConfig(store_proxy_class=HOLD)` has a `Hold` in its
pipeline; production never sends these. Each query carries a `ticket` so the driver can
match the reply.
"""

from __future__ import annotations

from pydantic import Field
from task_ingress.messages.base import InternalMessage


class HoldArm(InternalMessage):
    """Start holding every request bound for TaskStore until `HoldRelease`; reply `HoldState`."""

    ticket: int


class HoldRelease(InternalMessage):
    """Forward the held requests to TaskStore and stop holding; reply `HoldState` (after).

    The released requests go as one message, so they reach TaskStore ahead of its `Flush`
    and are judged in one batch, in the order given.
    """

    ticket: int
    order: tuple[int, ...] = Field(
        default=(), description="Indices into the held list (arrival order); () = all, in order."
    )


class HoldQuery(InternalMessage):
    """Ask what is held; reply `HoldState`. On simpleSystemBase it is also a barrier."""

    ticket: int


class HoldState(InternalMessage):
    """Reply to the hold messages: whether holding is armed and which requests are held."""

    ticket: int
    holding: bool
    held: tuple[str, ...] = Field(description="Request IDs of the held requests, arrival order.")
