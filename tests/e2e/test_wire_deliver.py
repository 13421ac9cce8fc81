"""`deliver`: the wire path. Identity comes from the transport; any bytes get a reply."""

from __future__ import annotations

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from task_ingress.messages import CreateTask, EnqueueRun, Reason, UpdateTask
from task_ingress.messages.codec import decode_reply, encode_envelope
from task_ingress.runtime import IngressRuntime

REPLY_KEYS = {"v", "request_id", "accepted", "reason", "task_id", "run_id"}
REASONS = {r.value for r in Reason}


def send(rt: IngressRuntime, data: bytes, peer: str = "peer-a", channel: str = "ops"
         ) -> dict[str, object]:
    return decode_reply(rt.deliver(data, workspace="ws", channel=channel, peer_id=peer))


def assert_well_formed(reply: dict[str, object]) -> None:
    assert set(reply) == REPLY_KEYS and reply["v"] == 1
    assert isinstance(reply["accepted"], bool) and isinstance(reply["request_id"], str)
    if reply["accepted"]:
        assert reply["reason"] is None and isinstance(reply["task_id"], str)
    else:
        assert reply["reason"] in REASONS


def test_valid_envelopes_create_update_and_enqueue(rt: IngressRuntime) -> None:
    created = send(rt, encode_envelope(CreateTask(title="wire", network_channel="ops"), "w-1"))
    assert created["accepted"] and created["request_id"] == "w-1"
    task_id = str(created["task_id"])
    updated = send(rt, encode_envelope(UpdateTask(task_id=task_id, title="wire 2"), "w-2"))
    run = send(rt, encode_envelope(EnqueueRun(task_id=task_id, idempotency_key="k"), "w-3"))
    assert updated["accepted"] and run["accepted"] and run["run_id"]
    task = rt.get_task("ws", task_id)
    assert task is not None and task.title == "wire 2"


def test_identity_comes_from_the_transport_not_the_bytes(rt: IngressRuntime) -> None:
    # A body cannot name a peer or channel: such keys are unknown, hence invalid.
    forged = msgpack.packb({"v": 1, "kind": "task.create", "request_id": "f",
                            "body": {"title": "t", "peer_id": "peer-a"}})
    assert send(rt, forged, peer="peer-z")["reason"] == "invalid_request"
    # The same valid bytes are judged as whoever the transport says sent them.
    data = encode_envelope(CreateTask(title="t"), "same-bytes")
    assert send(rt, data, peer="peer-z")["reason"] == "peer_not_found"
    assert send(rt, data, peer="peer-a")["accepted"] is True
    assert rt.audit()[-1].peer_id == "peer-a"


def test_bad_bytes_are_audited_as_invalid_requests(rt: IngressRuntime) -> None:
    reply = send(rt, b"\x00garbage")
    assert reply["reason"] == "invalid_request"
    record = rt.audit()[-1]
    assert (record.outcome, record.reason, record.action.value, record.payload_size) == (
        "rejected", Reason.INVALID_REQUEST, "unknown", 8)


def test_oversized_envelope_is_validation_failed(rt: IngressRuntime) -> None:
    data = encode_envelope(CreateTask(title="t", description="x" * 70_000), "big")
    assert send(rt, data)["reason"] == "validation_failed"


def test_well_typed_body_breaking_a_payload_rule_is_validation_failed(rt: IngressRuntime
                                                                      ) -> None:
    assert send(rt, encode_envelope(CreateTask(title=""), "e"))["reason"] == "validation_failed"


def test_transport_identity_of_a_wrong_type_is_invalid_not_a_crash(rt: IngressRuntime) -> None:
    reply = decode_reply(rt.deliver(b"\x80", workspace=None, channel=3, peer_id=b"x"))  # type: ignore[arg-type]
    assert reply["reason"] == "invalid_request"


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
    | st.text(max_size=20) | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
near_envelopes = st.fixed_dictionaries(
    {"v": st.sampled_from([1, 2, True, "1"]),
     "kind": st.sampled_from(["task.create", "task.update", "task.cancel", "task.run.enqueue",
                              "x"]),
     "request_id": st.one_of(st.text(max_size=30), st.integers(-(2**63), 2**63 - 1)),
     "body": st.dictionaries(
         st.sampled_from(["title", "task_id", "idempotency_key", "network_channel",
                          "metadata", "priority", "description", "expected_version", "x"]),
         msgpack_values, max_size=5)},
)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.one_of(
    st.binary(max_size=200),
    msgpack_values.map(lambda v: bytes(msgpack.packb(v, use_bin_type=True))),
    near_envelopes.map(lambda v: bytes(msgpack.packb(v, use_bin_type=True))),
))
def test_any_bytes_get_one_well_formed_reply_and_one_audit_record(
    rt: IngressRuntime, data: bytes
) -> None:
    before = len(rt.audit())
    assert_well_formed(send(rt, data))
    assert len(rt.audit()) == before + 1
