"""The keyed chain detects edits; the wire codec never raises and reads only well-formed
bytes."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st
from task_ingress.actors.rules.chain import (
    ChainKey,
    canonical,
    first_bad_record,
    genesis_hash,
    legacy_checkpoint_mac,
    legacy_checkpoint_ok,
    record_hash,
)
from task_ingress.messages import (
    Action,
    AuditRecord,
    CancelTask,
    CreateTask,
    EnqueueRun,
    Outcome,
    Reason,
    UpdateTask,
    codec,
)
from task_ingress.messages.codec import decode_envelope, encode_envelope, encode_reply
from task_ingress.messages.requests import AnyRequest

KEY = ChainKey(b"k" * 32)
GENESIS = genesis_hash("store-a")


def _chain(n: int, key: ChainKey = KEY, genesis: str = GENESIS) -> list[AuditRecord]:
    out, prev = [], genesis
    for i in range(1, n + 1):
        fields = {
            "seq": i, "at": 1.5 * i, "workspace": "ws", "channel": "ops", "peer_id": "p",
            "actor": "peer:p/channel:ops", "request_id": f"r{i}", "action": "task.create",
            "outcome": "accepted", "reason": None, "task_id": f"t{i}", "run_id": None,
            "payload_size": 10, "replay": False, "prev_hash": prev,
            "trust": "embedded" if i % 2 else None,
        }
        fields["hash"] = key.seal(fields)
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
    "replay": st.booleans(), "prev_hash": _TEXT, "hash": _TEXT, "trust": _OPT,
}))
def test_record_seal_is_hmac_sha256_of_sorted_compact_ascii_json(fields: dict[str, object]
                                                                 ) -> None:
    # The on-disk chain format: any faster encoding must stay byte-for-byte this one.
    chained = {k: v for k, v in fields.items() if k != "hash"}
    blob = json.dumps(chained, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    assert canonical(fields) == blob.encode()  # trust included, even None
    assert KEY.seal(fields) == hmac.new(b"k" * 32, blob.encode(), hashlib.sha256).hexdigest()
    # Schema 3 and older: trust left out of the unkeyed hash when it is None.
    old = {k: v for k, v in chained.items() if k != "trust" or v is not None}
    old_blob = json.dumps(old, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    assert record_hash(fields) == hashlib.sha256(old_blob.encode()).hexdigest()


@given(st.fixed_dictionaries({
    "workspace": _TEXT, "channel": _TEXT, "peer_id": _TEXT, "actor": _TEXT,
    "request_id": _TEXT, "action": _TEXT, "outcome": _TEXT, "reason": _OPT,
    "task_id": _OPT, "run_id": _OPT, "payload_size": st.integers(0, 2**31),
    "replay": st.booleans(), "trust": _OPT,
}), st.integers(1, 2**53), _TEXT, st.floats(allow_nan=False, allow_infinity=False))
def test_a_linked_record_is_its_fields_placed_and_sealed_over_sorted_json(
        fields: dict[str, object], seq: int, prev: str, at: float) -> None:
    # `link` builds the record in canonical key order itself (not through `canonical`):
    # its hash must still be the HMAC of json.dumps(sort_keys=True) of exactly these fields.
    record = KEY.link(fields, seq, prev, at)
    placed = dict(fields, seq=seq, at=at, prev_hash=prev)
    assert {k: v for k, v in record.items() if k != "hash"} == placed
    blob = json.dumps(placed, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    assert record["hash"] == hmac.new(b"k" * 32, blob.encode(), hashlib.sha256).hexdigest()
    assert record["hash"] == KEY.seal(record)
    assert KEY.link(dict(fields, unchained="x"), seq, prev, at) == record  # not a field


def test_a_legacy_hash_leaves_out_only_an_empty_trust_and_the_seal_never_does() -> None:
    fields = _chain(2)[1].model_dump(mode="json")
    assert fields["trust"] is None
    before_trust = {k: v for k, v in fields.items() if k != "trust"}
    assert record_hash(fields) == record_hash(before_trust)
    assert record_hash(fields) != record_hash(dict(fields, trust="verified"))
    assert KEY.seal(fields) != KEY.seal(dict(fields, trust=""))
    with pytest.raises(KeyError):  # a record without the field is not sealed as if it had one
        KEY.seal(before_trust)


@given(st.binary(min_size=1, max_size=200))
def test_record_seal_is_hmac_for_keys_of_any_length(key: bytes) -> None:
    fields = _chain(1)[0].model_dump(mode="json")
    expected = hmac.new(key, canonical(fields), hashlib.sha256).hexdigest()
    assert ChainKey(key).seal(fields) == expected


def seal(records: list[AuditRecord]) -> tuple[int, str] | None:
    return first_bad_record(records, KEY.seal, GENESIS)


def test_intact_chain_verifies() -> None:
    assert seal(_chain(5)) is None


def test_edited_record_is_named_by_the_chain() -> None:
    records = _chain(5)
    records[2] = records[2].model_copy(update={"outcome": "rejected"})
    assert seal(records) == (3, "hash does not match the record's contents")


def test_chain_rehashed_without_the_key_fails_at_its_first_record() -> None:
    forged = _chain(5, key=ChainKey(b"guess" * 8))
    assert seal(forged) == (1, "hash does not match the record's contents")


def test_chain_of_another_store_fails_at_its_first_record() -> None:
    other = _chain(5, genesis=genesis_hash("store-b"))
    assert seal(other) == (1, "prev_hash is not this store's genesis (a record of another "
                              "store?)")


def test_deleted_record_is_a_sequence_gap() -> None:
    records = _chain(5)
    del records[1]
    assert seal(records) == (3, "sequence gap: expected 2 (record 2 is missing)")
    del records[1:3]
    assert seal(records) == (5, "sequence gap: expected 2 (records 2-4 are missing)")


def test_checkpoint_mac_binds_store_seq_head_and_time_to_the_key() -> None:
    mac = KEY.checkpoint_mac("store-a", 7, "abc", 1.5)
    assert KEY.checkpoint_ok("store-a", 7, "abc", 1.5, mac)
    assert not KEY.checkpoint_ok("store-b", 7, "abc", 1.5, mac)
    assert not KEY.checkpoint_ok("store-a", 6, "abc", 1.5, mac)
    assert not KEY.checkpoint_ok("store-a", 7, "abd", 1.5, mac)
    assert not KEY.checkpoint_ok("store-a", 7, "abc", 1.6, mac)
    assert not ChainKey(b"other").checkpoint_ok("store-a", 7, "abc", 1.5, mac)


def test_legacy_checkpoint_mac_binds_seq_and_head_to_the_key() -> None:
    mac = legacy_checkpoint_mac(b"k", 7, "abc")
    assert legacy_checkpoint_ok(b"k", 7, "abc", mac)
    assert not legacy_checkpoint_ok(b"k", 6, "abc", mac)
    assert not legacy_checkpoint_ok(b"other", 7, "abc", mac)


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
        (_pack({**GOOD, "kind": ["task.create"]}), Reason.INVALID_REQUEST),  # unhashable
        (_pack({**GOOD, "kind": 1}), Reason.INVALID_REQUEST),
        (_pack({**GOOD, "kind": "greet"}), Reason.INVALID_REQUEST),   # no request kind
        (_pack({**GOOD, "kind": "unknown"}), Reason.INVALID_REQUEST),
        (_pack({k: v for k, v in GOOD.items() if k != "body"}), Reason.INVALID_REQUEST),
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


@pytest.mark.parametrize("request_", [CreateTask(title="t"), UpdateTask(task_id="t-1"),
                                      CancelTask(task_id="t-1"),
                                      EnqueueRun(task_id="t-1", idempotency_key="k")])
def test_each_request_kind_decodes_to_its_own_action_member(request_: AnyRequest) -> None:
    decoded = decode_envelope(encode_envelope(request_, "r-1"))
    assert decoded.action is request_.action and type(decoded.action) is Action
    assert decoded.request == request_ and type(decoded.request) is type(request_)


@given(request_id=st.text(max_size=40), action=st.sampled_from(list(Action)),
       reason=st.none() | st.sampled_from(list(Reason)),
       task_id=st.none() | st.text(max_size=20), run_id=st.none() | st.text(max_size=20),
       replay=st.booleans())
def test_a_reply_is_the_msgpack_map_peers_read(
        request_id: str, action: Action, reason: Reason | None, task_id: str | None,
        run_id: str | None, replay: bool) -> None:
    outcome = Outcome(request_id=request_id, action=action, accepted=reason is None,
                      reason=reason, task_id=task_id, run_id=run_id, replay=replay)
    assert encode_reply(outcome) == _pack({
        "v": 1, "request_id": request_id, "accepted": reason is None,
        "reason": None if reason is None else reason.value, "task_id": task_id,
        "run_id": run_id})


def test_each_thread_encodes_replies_with_its_own_packer() -> None:
    # A packer keeps a buffer between calls: one shared by the callers of `deliver`
    # would be one more thing to keep thread-safe.
    seen: list[object] = []
    threads = [threading.Thread(target=lambda: seen.append(codec._packer()))
               for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len({id(p) for p in seen}) == 4 and codec._packer() is codec._packer()
