"""The pipeline process's pipe (`runtime/pipeline/wire.py`): what crosses it comes out equal,
of the same types field for field, with the state pydantic's own pickling would carry.

The models cross without being validated again (the pipe is private between our two
processes); these tests pin that nothing is lost or changed on the way: every request kind,
every optional field set and unset, every trust value, outcomes of every shape, and a model
gaining a field.
"""

from __future__ import annotations

import pickle
from typing import Any

import pytest
from pydantic import BaseModel
from task_ingress.messages.outcomes import Outcome
from task_ingress.messages.protocol import Replied, Replies, Submission
from task_ingress.messages.reasons import Action, Reason
from task_ingress.messages.requests import (
    REQUEST_BY_ACTION,
    AnyRequest,
    CancelTask,
    CreateTask,
    EnqueueRun,
    IngressContext,
    UpdateTask,
)
from task_ingress.runtime.pipeline import wire

TRUSTS = ("embedded", "verified", "unverified", "rejected")
FULL_CONTEXT = IngressContext(workspace="ws", peer_id="peer-a", channel="ops",
                              request_id="r-1", work_id="w-1", trace_id="t-1",
                              causation_id="c-1", trust="verified")
"""Every field of `IngressContext` set to a value other than its default."""
FULL_REQUESTS: dict[type[BaseModel], BaseModel] = {
    CreateTask: CreateTask(title="t", description="d", network_channel="ops", priority=7,
                           metadata={"k": "v", "k2": ""}),
    UpdateTask: UpdateTask(task_id="t-1", title="u", description="d2", network_channel="",
                           metadata={}, expected_version=3),
    CancelTask: CancelTask(task_id="t-1", reason="done"),
    EnqueueRun: EnqueueRun(task_id="t-1", idempotency_key="k-1", network_channel="ops"),
}
"""Every field of every request kind set to a value other than its default."""
FULL_OUTCOME = Outcome(request_id="r-1", action=Action.ENQUEUE, accepted=True,
                       reason=Reason.TASK_NOT_FOUND, task_id="t-1", run_id="run-1",
                       replay=True)
"""Every field of `Outcome` set to a value other than its default (a shape the runtime never
answers, which is the point: the pipe carries values, it does not judge them)."""


def _crossed(sub: Submission, now: float = 42.0, preset: Reason | None = None) -> Submission:
    """`sub` stamped, through a real frame both ways."""
    frame = wire.dumps([("B", [wire.encode_stamped(sub, now, preset)])])
    [(kind, [item])] = wire.loads(frame)
    assert kind == "B"
    got = wire.decode_stamped(item)
    assert isinstance(got, Submission)
    return got


def _replies_crossed(replies: Replies) -> Replies:
    encoded, tickets = wire.encode_reply(replies)
    assert tickets == [r.ticket for r in replies.items]
    got = wire.decode_reply(wire.loads(wire.dumps([encoded]))[0])
    assert isinstance(got, Replies)
    return got


def _assert_same_model(got: Any, sent: Any) -> None:
    """Equal, same type, every field of the same type and value, and the same pickle state
    (fields set, extra, private) as pydantic's own pickling gives."""
    assert type(got) is type(sent)
    assert got == sent
    for name in type(sent).model_fields:
        mine, theirs = getattr(got, name), getattr(sent, name)
        assert type(mine) is type(theirs), name
        assert mine == theirs, name
    assert got.__getstate__() == sent.__getstate__()
    assert got.__getstate__() == pickle.loads(pickle.dumps(sent)).__getstate__()


def _assert_same_submission(got: Submission, sent: Submission) -> None:
    assert got == sent
    for name in Submission._fields:
        mine, theirs = getattr(got, name), getattr(sent, name)
        assert type(mine) is type(theirs), name
        if isinstance(theirs, BaseModel):
            _assert_same_model(mine, theirs)
        else:
            assert mine == theirs, name


def _submission(request: AnyRequest | None, context: IngressContext = FULL_CONTEXT,
                action: Action = Action.CREATE, checked: bool = True) -> Submission:
    return Submission(ticket=9, context=context, request=request,
                      action=action if request is None else request.action,
                      payload_size=123, now=0.0, checked=checked)


REQUESTS: list[AnyRequest] = [
    CreateTask(title="t"),
    CreateTask(title="t", description="d", network_channel="ops", priority=0,
               metadata={"a": "1", "b": "2"}),
    CreateTask(title="t", priority=100, metadata={}),
    UpdateTask(task_id="t-1"),
    *(UpdateTask(task_id="t-1", **{field: value})  # type: ignore[arg-type]
      for field, value in (("title", "u"), ("description", ""), ("network_channel", ""),
                           ("network_channel", "ops"), ("metadata", {"k": "v"}),
                           ("metadata", {}), ("expected_version", 0),
                           ("expected_version", 5))),
    UpdateTask(task_id="t-1", title=None, metadata=None),  # None given, not left out
    EnqueueRun(task_id="t-1", idempotency_key="k"),
    EnqueueRun(task_id="t-1", idempotency_key="k", network_channel="ops"),
    CancelTask(task_id="t-1"),
    CancelTask(task_id="t-1", reason="r"),
    *FULL_REQUESTS.values(),  # type: ignore[list-item]
]


@pytest.mark.parametrize("request_", REQUESTS, ids=repr)
def test_every_request_kind_crosses_equal_field_for_field(request_: AnyRequest) -> None:
    sub = _submission(request_)
    _assert_same_submission(_crossed(sub), sub.replace(now=42.0))


def test_metadata_crosses_as_a_dict_of_its_own() -> None:
    sub = _submission(CreateTask(title="t", metadata={"k": "v"}))
    got = _crossed(sub)
    assert isinstance(got.request, CreateTask) and got.request.metadata == {"k": "v"}
    assert got.request.metadata is not sub.request.metadata  # type: ignore[union-attr]


@pytest.mark.parametrize("trust", TRUSTS)
def test_a_context_with_every_field_crosses_equal_for_each_trust(trust: str) -> None:
    context = FULL_CONTEXT.model_copy(update={"trust": trust})
    sub = _submission(CreateTask(title="t"), context=context)
    got = _crossed(sub)
    _assert_same_model(got.context, context)
    assert got.context.trust == trust


def test_a_context_with_only_its_required_fields_crosses_with_its_defaults() -> None:
    context = IngressContext(workspace="ws", peer_id="p", channel="c", request_id="r")
    got = _crossed(_submission(EnqueueRun(task_id="t", idempotency_key="k"), context))
    _assert_same_model(got.context, context)
    assert got.context.model_fields_set == {"workspace", "peer_id", "channel", "request_id"}


@pytest.mark.parametrize("preset", [None, Reason.VALIDATION_FAILED, Reason.OVERLOADED,
                                    Reason.INVALID_REQUEST])
@pytest.mark.parametrize("checked", [True, False])
def test_a_submission_without_request_crosses_with_its_preset_and_checked(
        preset: Reason | None, checked: bool) -> None:
    sub = _submission(None, action=Action.UNKNOWN, checked=checked)
    got = _crossed(sub, now=7.5, preset=preset)
    _assert_same_submission(got, sub.replace(now=7.5, preset=preset))
    assert got.preset is preset and got.action is Action.UNKNOWN and got.checked is checked


def test_many_submissions_in_one_frame_cross_in_order_and_apart() -> None:
    subs = [_submission(r).replace(ticket=i) for i, r in enumerate(REQUESTS)]
    frame = wire.dumps([("B", [wire.encode_stamped(s, float(s.ticket), None)
                               for s in subs])])
    got = [wire.decode_stamped(item) for item in wire.loads(frame)[0][1]]
    assert got == [s.replace(now=float(s.ticket)) for s in subs]


OUTCOMES = [
    Outcome(request_id="r-1", action=Action.CREATE, accepted=True, task_id="t-1"),
    Outcome(request_id="r-2", action=Action.ENQUEUE, accepted=True, task_id="t-1",
            run_id="run-1"),
    Outcome(request_id="r-3", action=Action.ENQUEUE, accepted=True, task_id="t-1",
            run_id="run-1", replay=True),
    Outcome(request_id="r-4", action=Action.UPDATE, accepted=True, task_id="t-1",
            replay=True),
    Outcome(request_id="r-5", action=Action.CANCEL, accepted=True),
    Outcome.rejected("r-6", Action.UPDATE, Reason.PEER_NOT_FOUND),
    Outcome.rejected("", Action.GREET, Reason.OVERLOADED),
    Outcome.failed("r-7", Action.UNKNOWN),
    FULL_OUTCOME,
]


@pytest.mark.parametrize("outcome", OUTCOMES, ids=repr)
def test_every_outcome_shape_crosses_back_equal_field_for_field(outcome: Outcome) -> None:
    [replied] = _replies_crossed(Replies(items=(Replied(ticket=3, outcome=outcome),))).items
    assert replied.ticket == 3
    _assert_same_model(replied.outcome, outcome)


def test_one_group_commits_outcomes_cross_back_in_order() -> None:
    replies = Replies(items=tuple(Replied(ticket=i, outcome=o) for i, o in enumerate(OUTCOMES)))
    assert _replies_crossed(replies) == replies
    single = Replied(ticket=5, outcome=OUTCOMES[0])
    encoded, tickets = wire.encode_reply(single)
    assert tickets == [5]
    assert wire.decode_reply(wire.loads(wire.dumps([encoded]))[0]) == Replies(items=(single,))


# ---- a model gaining a field -------------------------------------------------------------
@pytest.mark.parametrize("model", [FULL_CONTEXT, *FULL_REQUESTS.values(), FULL_OUTCOME],
                         ids=lambda m: type(m).__name__)
def test_the_samples_above_set_every_field_of_every_crossing_model(model: BaseModel) -> None:
    """Fails when a crossing model gains a field: add it to the full sample above, and the
    crossing tests then show it crosses."""
    cls = type(model)
    assert model.model_fields_set == set(cls.model_fields)
    for name, field in cls.model_fields.items():
        assert getattr(model, name) != field.default, name


def test_every_crossing_model_has_a_full_sample() -> None:
    assert set(wire.CROSSING) == {IngressContext, Outcome, *FULL_REQUESTS}
    assert set(FULL_REQUESTS) == set(REQUEST_BY_ACTION.values())


class WiderCreate(CreateTask):
    """A request kind with a field the pipe has never heard of."""

    labels: dict[str, int] | None = None
    weight: float = 0.0


def test_a_request_with_a_field_the_pipe_never_named_crosses_whole() -> None:
    request = WiderCreate(title="t", labels={"a": 1}, weight=2.5, metadata={"k": "v"})
    got = _crossed(_submission(request))
    _assert_same_model(got.request, request)


# ---- the rebuild is pydantic's unpickling, only cheaper ----------------------------------
def test_the_rebuild_sets_the_slots_pydantic_unpickling_sets() -> None:
    assert BaseModel.__slots__ == wire.MODEL_SLOTS
    for model in (FULL_CONTEXT, *FULL_REQUESTS.values(), FULL_OUTCOME):
        state = model.__getstate__()
        assert state["__pydantic_extra__"] is None and state["__pydantic_private__"] is None
        theirs = pickle.loads(pickle.dumps(model))
        mine = wire._rebuilt(type(model), dict(model.__dict__),
                             set(model.__pydantic_fields_set__))
        assert mine.__getstate__() == theirs.__getstate__() == state
    for model in (FULL_CONTEXT, FULL_OUTCOME):  # frozen, no dict fields: hashable by value
        crossed = wire._rebuilt(type(model), dict(model.__dict__), set())
        assert hash(crossed) == hash(model)


def test_a_rebuilt_model_stays_frozen() -> None:
    got = _crossed(_submission(CreateTask(title="t")))
    with pytest.raises(ValueError, match="frozen"):
        got.context.trust = "verified"  # type: ignore[misc]
