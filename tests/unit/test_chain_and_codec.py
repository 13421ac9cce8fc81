"""The hash chain detects edits; the wire codec never raises and reads only well-formed bytes."""

from __future__ import annotations

import hashlib
import json

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st
from task_ingress.actors.rules.chain import (
    checkpoint_mac,
    checkpoint_ok,
    first_bad_record,
    record_hash,
)
from task_ingress.messages import Action, AuditRecord, CreateTask, Reason, UpdateTask
from task_ingress.messages.audit import GENESIS_HASH
from task_ingress.messages.codec import decode_envelope, encode_envelope


def _chain(n: int) -> list[AuditRecord]:
    out, prev = [], GENESIS_HASH
    for i in range(1, n + 1):
        fields = {
            "seq": i, "at": 1.5 * i, "workspace": "ws", "channel": "ops", "peer_id": "p",
            "actor": "peer:p/channel:ops", "request_id": f"r{i}", "action": "task.create",
            "outcome": "accepted", "reason": None, "task_id": f"t{i}", "run_id": None,
            "payload_size": 10, "replay": False, "prev_hash": prev,
        }
        fields["hash"] = record_hash(fields)
        prev = str(fields["hash"])
        out.append(AuditRecord.model_validate(fields, strict=False))
    return out


_TEXT = st.text(max_size=40)
_OPT = st.none() | _TEXT


@given(st.fixed_dictionaries({
    "seq": st.integers(1, 2**53), "at": st.floats(allow_nan=False, allow_infinity=False),
    "workspace": _TEXT, "channel": _TEXT, "peer_id": _TEXT, "actor": _TEXT,
    "request_id": _TEXT, "action": _TEXT, "outcome": _TEXT, "reason": _OPT,
    "task_id": _OPT, "run_id": _OPT, "payload_size": st.integers(0, 2**31),
    "replay": st.booleans(), "prev_hash": _TEXT, "hash": _TEXT,
}))
def test_record_hash_is_sha256_of_sorted_compact_ascii_json(fields: dict[str, object]) -> None:
    # The on-disk chain format: any faster encoding must stay byte-for-byte this one.
    chained = {k: v for k, v in fields.items() if k != "hash"}
    blob = json.dumps(chained, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    assert record_hash(fields) == hashlib.sha256(blob.encode()).hexdigest()


def test_intact_chain_verifies() -> None:
    assert first_bad_record(_chain(5)) is None


def test_edited_record_is_named_by_the_chain() -> None:
    records = _chain(5)
    records[2] = records[2].model_copy(update={"outcome": "rejected"})
    assert first_bad_record(records) == (3, "hash does not match the record's contents")


def test_deleted_record_is_a_sequence_gap() -> None:
    records = _chain(5)
    del records[1]
    assert first_bad_record(records) == (3, "sequence gap: expected 2 (record 2 is missing)")
    del records[1:3]
    assert first_bad_record(records) == (5, "sequence gap: expected 2 (records 2-4 are missing)")


def test_checkpoint_mac_binds_seq_and_head_to_the_key() -> None:
    mac = checkpoint_mac(b"k", 7, "abc")
    assert checkpoint_ok(b"k", 7, "abc", mac)
    assert not checkpoint_ok(b"k", 6, "abc", mac)
    assert not checkpoint_ok(b"other", 7, "abc", mac)


def test_a_valid_envelope_decodes_to_its_request() -> None:
    req = UpdateTask(task_id="t-1", title="new")
    decoded = decode_envelope(encode_envelope(req, "r-9"))
    assert decoded.rejection is None
    assert decoded.request == req
    assert decoded.request_id == "r-9"
    assert decoded.action is Action.UPDATE


def _pack(obj: object) -> bytes:
    return bytes(msgpack.packb(obj, use_bin_type=True))


GOOD = {"v": 1, "kind": "task.create", "request_id": "r", "body": {"title": "t"}}


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", Reason.INVALID_REQUEST),
        (b"\xc1", Reason.INVALID_REQUEST),                            # never-used byte
        (_pack(GOOD)[:-2], Reason.INVALID_REQUEST),                   # truncated
        (_pack(GOOD) + b"\x00", Reason.INVALID_REQUEST),              # trailing bytes
        (_pack([1, 2]), Reason.INVALID_REQUEST),
        (_pack({**GOOD, "v": 2}), Reason.INVALID_REQUEST),
        (_pack({**GOOD, "v": True}), Reason.INVALID_REQUEST),
        (_pack({**GOOD, "kind": "task.delete"}), Reason.INVALID_REQUEST),
        (_pack({**GOOD, "request_id": 5}), Reason.INVALID_REQUEST),
        (_pack({**GOOD, "body": []}), Reason.INVALID_REQUEST),
        (_pack({**GOOD, "extra": 1}), Reason.INVALID_REQUEST),
        (_pack({**GOOD, "body": {"title": 5}}), Reason.INVALID_REQUEST),  # wrong type
        (_pack({**GOOD, "body": {"title": "t", "bogus": 1}}), Reason.INVALID_REQUEST),
        (_pack({**GOOD, "body": {}}), Reason.INVALID_REQUEST),            # missing title
        (_pack({**GOOD, "body": {"title": "t", "metadata": {"k": 1}}}), Reason.INVALID_REQUEST),
        (_pack({**GOOD, "body": {"title": "t", "description": "x" * 70000}}),
         Reason.VALIDATION_FAILED),                                       # oversized envelope
        (b"\x91" * 5000 + b"\x80", Reason.INVALID_REQUEST),               # deep nesting
        (_pack({**GOOD, "request_id": b"bytes"}), Reason.INVALID_REQUEST),
    ],
)
def test_malformed_bytes_are_classified_never_raised(data: bytes, reason: Reason) -> None:
    assert decode_envelope(data).rejection == reason


def test_a_well_typed_body_breaking_a_payload_rule_still_decodes() -> None:
    # Empty titles are the gate's business (validation_failed), not the codec's.
    decoded = decode_envelope(_pack({**GOOD, "body": {"title": ""}}))
    assert decoded.rejection is None
    assert decoded.request == CreateTask(title="")


def test_non_bytes_input_is_invalid_not_an_exception() -> None:
    assert decode_envelope("text").rejection == Reason.INVALID_REQUEST  # type: ignore[arg-type]
