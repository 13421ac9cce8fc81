"""Hostile input at scale: `IngressRuntime.deliver` never raises, always answers with a
well-formed reply, and writes exactly one audit record per input.

2,000 inputs in the normal suite, 100,000 with TASK_INGRESS_SLOW=1 (split as below). One
runtime is shared by all examples of a test (starting one per example would dominate).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from task_ingress.messages.reasons import Action
from task_ingress.messages.requests import REQUEST_BY_ACTION

from tests.fuzz.fuzz_support import (
    SLOW,
    FuzzTarget,
    check_one_record,
    check_wire_reply,
    fuzz_target,
)

SCALE = 50 if SLOW else 1
pytestmark = pytest.mark.timeout(3600 if SLOW else 300)
# Inputs per test in the normal suite (sum 2,000); x50 in the slow profile (100,000).
RANDOM_BYTES, RANDOM_MSGPACK, DEEP_NESTING, NEAR_VALID = 500, 500, 200, 800


def fuzz_settings(examples: int) -> settings:
    """`examples` inputs (x50 in the slow profile), one shared runtime, no deadline."""
    return settings(
        max_examples=examples * SCALE, deadline=None, database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                               HealthCheck.large_base_example],
    )


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzTarget]:
    with fuzz_target(tmp_path_factory.mktemp("fuzz")) as t:
        yield t


# ---- transport identities: mostly the visible writer, sometimes anything ----------------

ODD_IDS = ["", " ", "peer-a\n", "peer-a\x00", "PEER-A", "p\u0435er-a", "peer-\uff41",
           "\u202epeer-a", "p" * 200, "ops\u200b", "ws/ops", "../ws"]
identities = st.one_of(
    st.just(("ws", "ops", "peer-a")),
    st.just(("ws", "ops", "peer-r")),
    st.just(("ws", "dev", "peer-a")),
    st.tuples(st.sampled_from(["ws", *ODD_IDS]), st.sampled_from(["ops", *ODD_IDS]),
              st.sampled_from(["peer-a", *ODD_IDS])),
    st.tuples(st.text(max_size=40), st.text(max_size=40), st.text(max_size=40)),
)


SEEN: Counter[tuple[str, str, str | None]] = Counter()
"""(action, outcome, reason) of every record the fuzz tests produced."""


def deliver_and_check(target: FuzzTarget, data: bytes, ident: tuple[str, str, str]) -> None:
    ws, ch, peer = ident
    target.tap.new_records()  # a failed earlier example must not leave its record to us
    raw = target.rt.deliver(data, workspace=ws, channel=ch, peer_id=peer)
    reply = check_wire_reply(raw)
    rec = check_one_record(target.tap, reply["accepted"], reply["reason"], reply["request_id"])
    SEEN[(rec.action.value, rec.outcome, rec.reason.value if rec.reason else None)] += 1


# ---- 1. random bytes ---------------------------------------------------------------------

@fuzz_settings(RANDOM_BYTES)
@given(data=st.binary(max_size=2048), ident=identities)
def test_random_bytes_get_a_reply_and_one_audit_record(target: FuzzTarget, data: bytes,
                                                       ident: tuple[str, str, str]) -> None:
    deliver_and_check(target, data, ident)


# ---- 2. random msgpack structures --------------------------------------------------------

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True), st.text(max_size=64), st.binary(max_size=64),
)


def _containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    keys = st.one_of(st.text(max_size=16),
                     st.sampled_from(["v", "kind", "request_id", "body", "title", "task_id"]))
    return st.one_of(st.lists(inner, max_size=8), st.dictionaries(keys, inner, max_size=8))


structures = st.recursive(scalars, _containers, max_leaves=40)


@fuzz_settings(RANDOM_MSGPACK)
@given(obj=structures, ident=identities)
def test_random_msgpack_structures_get_a_reply_and_one_audit_record(
        target: FuzzTarget, obj: Any, ident: tuple[str, str, str]) -> None:
    deliver_and_check(target, msgpack.packb(obj, use_bin_type=True), ident)


# ---- 3. deep nesting (built by hand: msgpack's packer refuses depth > 512) ----------------

@fuzz_settings(DEEP_NESTING)
@given(depth=st.integers(min_value=1, max_value=100_000),
       kind=st.sampled_from(["array", "map", "envelope-body", "mixed"]),
       ident=identities)
def test_deeply_nested_input_gets_a_reply_and_one_audit_record(
        target: FuzzTarget, depth: int, kind: str, ident: tuple[str, str, str]) -> None:
    if kind == "array":
        data = b"\x91" * depth + b"\xc0"
    elif kind == "map":
        data = b"\x81\xa1k" * depth + b"\xc0"
    elif kind == "mixed":
        data = b"\x91\x81\xa1k" * (depth // 2 + 1) + b"\xc0"
    else:  # a valid envelope whose body.metadata nests `depth` maps deep
        data = _deep_envelope(depth)
    deliver_and_check(target, data[: 64 * 1024 + 16], ident)


def _deep_envelope(depth: int) -> bytes:
    """{"v", "kind", "request_id", "body": {"title": "t", "metadata": <depth maps>}}."""
    prefix = msgpack.packb({"v": 1, "kind": "task.create", "request_id": f"deep-{depth}"})
    # A fixmap of 3 entries: rewrite its header to 4 (0x83 -> 0x84) and append "body".
    body = b"\x82" + msgpack.packb("title") + msgpack.packb("t") + msgpack.packb("metadata")
    nested = b"\x81\xa1k" * depth + b"\xa1v"
    return bytes(b"\x84" + prefix[1:] + msgpack.packb("body") + body + nested)


# ---- 4. near-valid envelopes with one field mutated ---------------------------------------

def valid_bodies(target: FuzzTarget) -> st.SearchStrategy[tuple[str, dict[str, Any]]]:
    tasks = st.sampled_from([*target.task_ids, "task_missing", ""])
    return st.one_of(
        st.builds(lambda t, c: ("task.create", {"title": t, "network_channel": c}),
                  st.one_of(st.just("a title"), st.text(min_size=1, max_size=20)),
                  st.sampled_from(["", "ops", "dev"])),
        st.builds(lambda i, t: ("task.update", {"task_id": i, "title": t}),
                  tasks, st.text(max_size=20)),
        st.builds(lambda i: ("task.cancel", {"task_id": i, "reason": "r"}), tasks),
        st.builds(lambda i, k: ("task.run.enqueue", {"task_id": i, "idempotency_key": k}),
                  tasks, st.text(max_size=12)),
    )


odd_values = st.one_of(
    scalars, st.lists(scalars, max_size=3), st.dictionaries(st.text(max_size=4), scalars,
                                                            max_size=3),
    st.sampled_from(["x" * 70_000, "x" * 300, "\x00", "ops\n", "task.create", -1, 2**64 - 1]),
)
mutations = st.sampled_from([
    "v", "kind", "request_id", "body", "drop_top", "extra_top", "body_field", "body_extra",
    "body_drop", "priority", "metadata",
])


@st.composite
def near_valid(draw: st.DrawFn, target: FuzzTarget) -> bytes:
    kind, body = draw(valid_bodies(target))
    rid = draw(st.one_of(st.uuids().map(str), st.uuids().map(str), st.text(max_size=30)))
    env: dict[Any, Any] = {"v": 1, "kind": kind, "request_id": rid, "body": dict(body)}
    # Four in ten envelopes stay valid, so that the gate, not only the decoder, is fuzzed.
    mutation = "none" if draw(st.integers(0, 9)) < 4 else draw(mutations)
    if mutation in ("v", "kind", "request_id", "body"):
        env[mutation] = draw(odd_values)
    elif mutation == "drop_top":
        del env[draw(st.sampled_from(sorted(env)))]
    elif mutation == "extra_top":
        env[draw(st.text(max_size=8))] = draw(odd_values)
    elif mutation == "body_field":
        env["body"][draw(st.sampled_from(sorted(body)))] = draw(odd_values)
    elif mutation == "body_extra":
        env["body"][draw(st.sampled_from(["x", "peer_id", "workspace", "expected_version"]))] = \
            draw(odd_values)
    elif mutation == "body_drop":
        del env["body"][draw(st.sampled_from(sorted(body)))]
    elif mutation == "priority":
        env["body"]["priority"] = draw(st.one_of(st.integers(-(2**63), 2**64 - 1), st.booleans(),
                                                 st.floats()))
    elif mutation == "metadata":
        env["body"]["metadata"] = draw(st.dictionaries(
            st.text(max_size=300), st.one_of(st.text(max_size=9000), scalars), max_size=40))
    return bytes(msgpack.packb(env, use_bin_type=True))


@fuzz_settings(NEAR_VALID)
@given(data=st.data())
def test_near_valid_envelopes_get_a_reply_and_one_audit_record(target: FuzzTarget,
                                                               data: st.DataObject) -> None:
    envelope = data.draw(near_valid(target))
    # Three in four from the visible writer.
    writer = data.draw(st.integers(0, 3)) < 3
    ident = ("ws", "ops", "peer-a") if writer else data.draw(identities)
    deliver_and_check(target, envelope, ident)


def test_fuzz_reaches_acceptances_and_every_action() -> None:
    """The fuzz inputs were really judged, not only refused by the decoder."""
    if not SEEN:
        pytest.skip("meaningful only after the fuzz tests of this module ran")
    assert sum(SEEN.values()) >= 2000 * SCALE
    # Every action the wire can carry (greet and leave are presence calls, not envelopes).
    assert {a for a, _, _ in SEEN} == {a.value for a in (*REQUEST_BY_ACTION, Action.UNKNOWN)}
    assert any(o == "accepted" for _, o, _ in SEEN)
    assert len({r for _, _, r in SEEN}) >= 5, SEEN
