"""The hot-path protocol messages as plain frozen slotted classes (messages/frozen.py): they
refuse changes, pickle, copy with `replace`, keep their defaults and keyword constructors,
and cross the pipeline process's pipe."""

from __future__ import annotations

import copy
import pickle
from typing import ClassVar

import pytest
from task_ingress.messages.frozen import FrozenInstanceError, FrozenMessage
from task_ingress.messages.outcomes import Outcome
from task_ingress.messages.protocol import (
    ChainLease,
    Dones,
    InFlight,
    InFlights,
    LeaseWanted,
    Replied,
    Replies,
    Submission,
    SubmitBatch,
    Verdict,
    Verdicts,
)
from task_ingress.messages.reasons import Action, Reason
from task_ingress.messages.requests import CreateTask, IngressContext
from task_ingress.runtime.pipeline import wire

CONTEXT = IngressContext(workspace="ws", peer_id="peer-a", channel="ops", request_id="r-1")
SUBMISSION = Submission(ticket=7, context=CONTEXT, request=CreateTask(title="t"),
                        action=Action.CREATE, payload_size=12, now=3.5)
FLIGHT = InFlight(submission=SUBMISSION, context=CONTEXT, reply_to="caller", router="router",
                  checked=True)
OUTCOME = Outcome(request_id="r-1", action=Action.CREATE, accepted=True, task_id="t-1")
VERDICT = Verdict(flight=FLIGHT, outcome=OUTCOME, outbox_id=4)
LEASE = ChainLease(lease_id=2, seq=10, head="ab" * 32)
REPLIED = Replied(ticket=7, outcome=OUTCOME)

ONE_OF_EACH: list[FrozenMessage] = [
    SUBMISSION, FLIGHT, VERDICT, REPLIED, LEASE,
    SubmitBatch(items=(SUBMISSION, SUBMISSION.replace(ticket=8))),
    InFlights(items=(FLIGHT,)),
    Verdicts(items=(VERDICT,), lease=LEASE, chained=True),
    Replies(items=(REPLIED,)),
    Dones(tickets=(7, 8)),
    LeaseWanted(lease_id=2),
]
IDS = [type(m).__name__ for m in ONE_OF_EACH]


@pytest.mark.parametrize("message", ONE_OF_EACH, ids=IDS)
def test_assigning_or_deleting_a_field_of_a_hot_path_message_raises(
        message: FrozenMessage) -> None:
    name = type(message)._fields[0]
    before = getattr(message, name)
    with pytest.raises(FrozenInstanceError):
        setattr(message, name, before)
    with pytest.raises(FrozenInstanceError):
        delattr(message, name)
    with pytest.raises((FrozenInstanceError, AttributeError)):
        message.extra = 1  # type: ignore[attr-defined]
    assert getattr(message, name) is before
    assert not hasattr(message, "__dict__")  # slotted: no per-instance dict to write into


@pytest.mark.parametrize("protocol", [2, pickle.DEFAULT_PROTOCOL, pickle.HIGHEST_PROTOCOL])
@pytest.mark.parametrize("message", ONE_OF_EACH, ids=IDS)
def test_a_pickled_message_loads_equal_and_still_frozen(message: FrozenMessage,
                                                        protocol: int) -> None:
    loaded = pickle.loads(pickle.dumps(message, protocol))
    assert type(loaded) is type(message)
    assert loaded == message
    assert loaded is not message
    with pytest.raises(FrozenInstanceError):
        setattr(loaded, type(loaded)._fields[0], None)


@pytest.mark.parametrize("message", ONE_OF_EACH, ids=IDS)
def test_copy_and_deepcopy_give_an_equal_message(message: FrozenMessage) -> None:
    assert copy.copy(message) == message
    assert copy.deepcopy(message) == message


def test_replace_gives_a_new_message_with_the_change_and_leaves_the_original() -> None:
    stamped = SUBMISSION.replace(now=99.0, preset=Reason.OVERLOADED)
    assert stamped is not SUBMISSION
    assert (stamped.now, stamped.preset) == (99.0, Reason.OVERLOADED)
    assert (SUBMISSION.now, SUBMISSION.preset) == (3.5, None)
    # every other field is carried over as it was (the same objects)
    for name in ("ticket", "context", "request", "action", "payload_size"):
        assert getattr(stamped, name) is getattr(SUBMISSION, name)
    assert SUBMISSION.replace() == SUBMISSION


def test_replace_can_set_a_field_to_none() -> None:
    assert VERDICT.replace(outbox_id=None).outbox_id is None
    assert VERDICT.outbox_id == 4


def test_replace_with_an_unknown_field_raises() -> None:
    with pytest.raises(TypeError):
        SUBMISSION.replace(nowish=1.0)


def test_defaults_are_the_ones_the_protocol_declares() -> None:
    sub = Submission(ticket=1, context=CONTEXT, request=None, action=Action.UNKNOWN,
                     payload_size=0, now=0.0)
    assert sub.preset is None
    flight = InFlight(submission=sub, context=CONTEXT, reply_to=None)
    assert (flight.router, flight.checked) == (None, False)
    assert Verdict(flight=flight, outcome=OUTCOME).outbox_id is None
    verdicts = Verdicts(items=())
    assert (verdicts.lease, verdicts.chained) == (None, False)


def test_an_unknown_a_missing_or_a_positional_field_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        Dones(tickets=(1,), extra=2)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Replied(ticket=1)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        LeaseWanted(3)  # type: ignore[misc]


def test_equality_is_by_type_and_field_values() -> None:
    assert Dones(tickets=(1, 2)) == Dones(tickets=(1, 2))
    assert Dones(tickets=(1, 2)) != Dones(tickets=(2, 1))
    assert LeaseWanted(lease_id=1) != ChainLease(lease_id=1, seq=0, head="")
    assert Dones(tickets=(1,)) != ((1,),)  # not a tuple in disguise
    assert hash(Dones(tickets=(1, 2))) == hash(Dones(tickets=(1, 2)))
    assert {LeaseWanted(lease_id=1), LeaseWanted(lease_id=1)} == {LeaseWanted(lease_id=1)}


def test_repr_names_the_class_and_every_field() -> None:
    assert repr(LEASE) == f"ChainLease(lease_id=2, seq=10, head='{'ab' * 32}')"
    assert repr(Dones(tickets=(7,))) == "Dones(tickets=(7,))"


def test_a_submission_crosses_the_pipeline_pipe_equal() -> None:
    for sub, preset in ((SUBMISSION, None), (SUBMISSION.replace(request=None),
                                             Reason.VALIDATION_FAILED),
                        (SUBMISSION.replace(checked=True), None)):
        item = wire.decode_stamped(wire.loads(wire.dumps([
            wire.encode_stamped(sub, 42.0, preset)]))[0])
        assert item == sub.replace(now=42.0, preset=preset)


def test_replies_cross_the_pipeline_pipe_equal() -> None:
    replies = Replies(items=(REPLIED, Replied(ticket=8, outcome=Outcome.rejected(
        "r-2", Action.UPDATE, Reason.PEER_NOT_FOUND))))
    encoded, tickets = wire.encode_reply(replies)
    assert tickets == [7, 8]
    assert wire.decode_reply(wire.loads(wire.dumps([encoded]))[0]) == replies


def test_a_message_class_declares_fields_as_annotations_with_plain_defaults() -> None:
    class Probe(FrozenMessage):
        """A message declared here only."""

        LIMIT: ClassVar[int] = 3
        name: str
        count: int = 1

        def doubled(self) -> int:
            """Methods stay methods."""
            return 2 * self.count

    probe = Probe(name="x")
    assert (probe.name, probe.count, probe.doubled(), Probe.LIMIT) == ("x", 1, 2, 3)
    assert Probe._fields == ("name", "count")
    assert Probe.__slots__ == ("name", "count")


def test_a_message_class_refuses_private_field_names_and_field_inheritance() -> None:
    with pytest.raises(TypeError):
        class Private(FrozenMessage):
            _hidden: int

    class Parent(FrozenMessage):
        a: int

    with pytest.raises(TypeError):
        class Child(Parent):
            b: int


def test_the_hot_path_messages_keep_their_field_names() -> None:
    assert type(SUBMISSION)._fields == ("ticket", "context", "request", "action", "payload_size",
                                   "now", "preset", "checked")
    assert type(FLIGHT)._fields == ("submission", "context", "reply_to", "router", "checked")
    assert type(VERDICT)._fields == ("flight", "outcome", "outbox_id")
    assert type(REPLIED)._fields == ("ticket", "outcome")
    assert Verdicts._fields == ("items", "lease", "chained")
    assert type(LEASE)._fields == ("lease_id", "seq", "head")
