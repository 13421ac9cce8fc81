"""What crosses the pipe between the embedding process and the pipeline process.

Each frame is one `pickle` of a list of items, in order. Hot items are plain tuples; the
pydantic models inside them (context, request, outcome) are rebuilt on the other side with
their validated constructors (pickling a pydantic model and loading it again costs ~50 us
per request; this ~10). Rare messages (queries, presence changes, test seams) travel as
pickled models.

Embedding -> pipeline:
- `("B", [submission or presence item, ...])`: one batch for the router, in order;
- `("A", role, message)`: a query for the actor playing `role` (see `ROLES`);
- `("S", now, ticket)`: a housekeeping sweep (answered by a `ChannelCount` under
  `ticket`); `("X",)`: stop.
Pipeline -> embedding:
- `("R", [(ticket, outcome tuple), ...])`: one group commit's answers;
- `("P", ticket)`: an actor failed on that ticket's message (Thespian's PoisonMessage);
- `("O", message)`: any other reply (a pickled model);
- `("ready", pids | None, error)` once at start, `("stopped",)` once at the end.
"""

from __future__ import annotations

import operator
import pickle
from typing import Any

from task_ingress.messages.outcomes import Outcome
from task_ingress.messages.protocol import (
    PresenceChange,
    Replied,
    Replies,
    Submission,
)
from task_ingress.messages.reasons import Action, Reason
from task_ingress.messages.requests import REQUEST_BY_ACTION, IngressContext
from thespian.actors import PoisonMessage

ROLES = ("router", "presence", "capability", "audit", "store", "store_proxy")
"""The actors a query can name across the pipe (the `Addresses` fields)."""

CONTEXT_FIELDS = tuple(IngressContext.model_fields)
_context_values = operator.attrgetter(*CONTEXT_FIELDS)  # every field, whatever it gains
PROTOCOL = pickle.HIGHEST_PROTOCOL

Item = tuple[Any, ...]


def dumps(items: list[Item]) -> bytes:
    """One frame."""
    return pickle.dumps(items, PROTOCOL)


def loads(frame: bytes) -> list[Item]:
    """The items of one frame."""
    items: list[Item] = pickle.loads(frame)
    return items


# ---- requests (embedding -> pipeline) ----------------------------------------------------
def encode_stamped(msg: Submission | PresenceChange, now: float, preset: Reason | None
                   ) -> Item:
    """A request (as a tuple) or a presence change (as its model), stamped."""
    if isinstance(msg, PresenceChange):
        return ("p", msg.model_copy(update={"now": now}))
    ctx = msg.context
    request = msg.request
    return ("s", msg.ticket, _context_values(ctx),
            msg.action.value, None if request is None else request.model_dump(),
            msg.payload_size, now, None if preset is None else preset.value, msg.checked)


def decode_stamped(item: Item) -> Submission | PresenceChange:
    """The model `encode_stamped` encoded."""
    if item[0] == "p":
        change: PresenceChange = item[1]
        return change
    _, ticket, ctx, action, body, size, now, preset, checked = item
    act = Action(action)
    request = None if body is None else REQUEST_BY_ACTION[act](**body)
    return Submission(ticket=ticket, context=IngressContext(**dict(zip(CONTEXT_FIELDS, ctx,
                                                                        strict=True))),
                      request=request, action=act, payload_size=size, now=now,
                      preset=None if preset is None else Reason(preset), checked=checked)


# ---- replies (pipeline -> embedding) -----------------------------------------------------
def encode_reply(reply: Any) -> tuple[Item, list[int]]:
    """A reply for the pipe, and the tickets it answers."""
    if isinstance(reply, Replies):
        return ("R", [_replied(r) for r in reply.items]), [r.ticket for r in reply.items]
    if isinstance(reply, Replied):
        return ("R", [_replied(reply)]), [reply.ticket]
    if isinstance(reply, PoisonMessage):
        ticket = getattr(reply.poisonMessage, "ticket", None)
        return ("P", ticket if isinstance(ticket, int) else None), \
            [ticket] if isinstance(ticket, int) else []
    ticket = getattr(reply, "ticket", None)
    return ("O", reply), [ticket] if isinstance(ticket, int) else []


def _replied(r: Replied) -> Item:
    o = r.outcome
    return (r.ticket, o.request_id, o.action.value, o.accepted,
            None if o.reason is None else o.reason.value, o.task_id, o.run_id, o.replay)


def decode_reply(item: Item) -> Any:
    """What the driver resolves futures with: `Replies`, a `PoisonMessage`-like marker,
    or the reply model itself."""
    kind = item[0]
    if kind == "R":
        return Replies(items=tuple(
            Replied(ticket=t, outcome=Outcome(
                request_id=rid, action=Action(action), accepted=accepted,
                reason=None if reason is None else Reason(reason), task_id=task_id,
                run_id=run_id, replay=replay))
            for t, rid, action, accepted, reason, task_id, run_id, replay in item[1]))
    if kind == "P":
        return PoisonMessage(_Ticketed(item[1]), None)
    return item[1]


class _Ticketed:
    """Stands for the message an actor failed on: the driver needs only its ticket."""

    def __init__(self, ticket: int | None) -> None:
        self.ticket = ticket
