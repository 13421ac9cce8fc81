"""What crosses the pipe between the embedding process and the pipeline process.

Each frame is one `pickle` of a list of items, in order. Hot items are plain tuples; the
pydantic models inside them (context, request, outcome) cross as the state pydantic's own
pickling carries (`__getstate__`: the field values' `__dict__` and the set of fields given)
and are rebuilt from it WITHOUT validation, as unpickling does (`__setstate__`), only
cheaper (see `_rebuilt`). Rare messages (queries, presence changes, test seams) travel as
pickled models.

Why skipping validation here is sound: the pipe is private between our two processes (a
socket pair the embedding process creates and hands to the child it starts; nothing else
holds an end) and `pickle` already trusts every byte on it. Everything in a frame was built
by our own code from values already validated: contexts and requests by the embedding
process's edge (`IngressRuntime.deliver/submit` build them with the validating
constructors), outcomes by the pipeline's actors. Nothing a peer sends reaches `_rebuilt`
any other way: it is called only on items read from this pipe.

Cost (callgrind instructions a request, a frame of 16 mixed requests there and their
outcomes back, encode + pickle + unpickle + decode): dumping and validating again ~133 k,
pickling the models themselves ~150 k, this ~89 k. In the whole pipeline mode (both
processes, `det.py` rounds of 16) ~879 k -> ~848 k a request.

Embedding -> pipeline:
- `("B", [submission or presence item, ...])`: one batch for the router, in order;
- `("A", role, message)`: a query for the actor playing `role` (see `ROLES`);
- `("S", now, ticket)`: a housekeeping sweep (answered by a `ChannelCount` under
  `ticket`); `("X",)`: stop.
Pipeline -> embedding:
- `("R", [(ticket, outcome state...), ...])`: one group commit's answers;
- `("P", ticket)`: an actor failed on that ticket's message (Thespian's PoisonMessage);
- `("O", message)`: any other reply (a pickled model);
- `("ready", pids | None, error)` once at start, `("stopped",)` once at the end.
"""

from __future__ import annotations

import pickle
from typing import Any, TypeVar

from pydantic import BaseModel
from task_ingress.messages.outcomes import Outcome
from task_ingress.messages.protocol import (
    PresenceChange,
    Replied,
    Replies,
    Submission,
)
from task_ingress.messages.reasons import Reason
from task_ingress.messages.requests import REQUEST_BY_ACTION, IngressContext
from thespian.actors import PoisonMessage

ROLES = ("router", "presence", "capability", "audit", "store", "store_proxy")
"""The actors a query can name across the pipe (the `Addresses` fields)."""

PROTOCOL = pickle.HIGHEST_PROTOCOL

Item = tuple[Any, ...]

# The four slots of every pydantic model: exactly what `BaseModel.__setstate__` sets when
# pickle rebuilds one. `_rebuilt` sets them through the slots' own descriptors (~4 k
# instructions a model; `__setstate__` ~10 k, `model_construct` and the validating
# constructor more). Should a pydantic upgrade change that layout, importing this module
# fails rather than rebuild models short of a slot.
MODEL_SLOTS = ("__dict__", "__pydantic_fields_set__", "__pydantic_extra__",
               "__pydantic_private__")
if tuple(BaseModel.__slots__) != MODEL_SLOTS:
    raise ImportError(f"pydantic's model slots changed: {BaseModel.__slots__!r}")
_set_values, _set_fields_set, _set_extra, _set_private = (
    BaseModel.__dict__[slot].__set__ for slot in MODEL_SLOTS)
_new = object.__new__

CROSSING = (IngressContext, Outcome, *REQUEST_BY_ACTION.values())
"""The models rebuilt by `_rebuilt`: none may hold extra or private values (their state is
then only `__dict__` and the fields set, which is all that crosses)."""
for _model in CROSSING:
    if _model.__private_attributes__ or _model.model_config.get("extra") == "allow":
        raise ImportError(f"{_model.__name__} holds state the pipe does not carry")

M = TypeVar("M", bound=BaseModel)


def _rebuilt(cls: type[M], values: dict[str, Any], fields_set: set[str]) -> M:
    """The model `cls` holding `values` (its `__dict__`: every field, whatever the model
    has gained) as pydantic's unpickling sets it, NOT validated: only ever for values our
    own process validated and sent down this private pipe (see the module docstring)."""
    model = _new(cls)
    _set_values(model, values)
    _set_fields_set(model, fields_set)
    _set_extra(model, None)
    _set_private(model, None)
    return model


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
    """A request (as a tuple) or a presence change (as its model), stamped.

    Enum members and request classes cross as themselves: pickle writes each distinct one
    once a frame and refers back to it after."""
    if isinstance(msg, PresenceChange):
        return ("p", msg.model_copy(update={"now": now}))
    ctx = msg.context
    request = msg.request
    if request is None:
        return ("s", msg.ticket, ctx.__dict__, ctx.__pydantic_fields_set__, msg.action,
                None, None, None, msg.payload_size, now, preset, msg.checked)
    return ("s", msg.ticket, ctx.__dict__, ctx.__pydantic_fields_set__, msg.action,
            type(request), request.__dict__, request.__pydantic_fields_set__,
            msg.payload_size, now, preset, msg.checked)


def decode_stamped(item: Item) -> Submission | PresenceChange:
    """The model `encode_stamped` encoded."""
    if item[0] == "p":
        change: PresenceChange = item[1]
        return change
    (_, ticket, ctx, ctx_set, action, request_type, request, request_set, size, now, preset,
     checked) = item
    return Submission(ticket=ticket, context=_rebuilt(IngressContext, ctx, ctx_set),
                      request=None if request_type is None
                      else _rebuilt(request_type, request, request_set),
                      action=action, payload_size=size, now=now, preset=preset,
                      checked=checked)


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
    return (r.ticket, o.__dict__, o.__pydantic_fields_set__)


def decode_reply(item: Item) -> Any:
    """What the driver resolves futures with: `Replies`, a `PoisonMessage`-like marker,
    or the reply model itself."""
    kind = item[0]
    if kind == "R":
        return Replies(items=tuple([
            Replied(ticket=ticket, outcome=_rebuilt(Outcome, values, fields_set))
            for ticket, values, fields_set in item[1]]))
    if kind == "P":
        return PoisonMessage(_Ticketed(item[1]), None)
    return item[1]


class _Ticketed:
    """Stands for the message an actor failed on: the driver needs only its ticket."""

    def __init__(self, ticket: int | None) -> None:
        self.ticket = ticket
