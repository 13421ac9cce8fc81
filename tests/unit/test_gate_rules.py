"""Table tests of the pure gate rules (SPEC §2, §4)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from task_ingress.actors.rules import gate
from task_ingress.actors.rules.gate import StoredTask
from task_ingress.messages import (
    CancelTask,
    CreateTask,
    EnqueueRun,
    IngressContext,
    PeerCard,
    Reason,
    UpdateTask,
)
from task_ingress.messages.limits import CardLimits, Limits
from task_ingress.messages.requests import AnyRequest


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("peer-a", True), ("a", True), ("0.peer_x-1", True), ("a" * 128, True),
        ("a" * 129, False), ("", False), ("-peer", False), ("Peer", False), ("peer a", False),
        ("peer\n", False), ("pe\u0435r", False),  # Cyrillic look-alike of e
        ("peer/x", False), ("peer\x00", False), ("\uff50eer", False),  # full-width p
    ],
)
def test_peer_id_grammar_accepts_only_the_spec_alphabet(value: str, ok: bool) -> None:
    assert gate.is_peer_id(value) is ok


FP = "39f713d0a644253f04529421b9f51b9b"


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        (f"patch-worker@{FP}", True), (f"a@{FP}", True), (f"{'n' * 32}@{FP}", True),
        (f"{'n' * 33}@{FP}", False), (f"@{FP}", False), (f"a.b@{FP}", False),
        (f"a@{FP.upper()}", False), (f"a@{FP[:31]}", False), (f"a@{FP}0", False),
        (f"a@b@{FP}", False), (f"Nick@{FP}", False),
    ],
)
def test_a_verified_handle_is_nickname_at_32_hex_fingerprint(value: str, ok: bool) -> None:
    assert gate.is_peer_id(value) is ok


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("01JDQ8Z6X4V7K2M9N3P5R8T1W0", True), ("default", True), ("ws_alpha", True),
        ("Mixed-Case_1", True), ("x" * 128, True), ("x" * 129, False), ("", False),
        ("a.b", False), ("a b", False), ("a*", False), ("a>b", False), ("a/b", False),
        ("a\\b", False), ("a\tb", False), ("a\x00", False), ("a\x7f", False),
        ("a\x85", False),
    ],
)
def test_workspace_grammar_is_aghs_plus_no_slashes_and_allows_uppercase_ulids(
        value: str, ok: bool) -> None:
    assert gate.is_workspace(value) is ok


def test_a_ulid_workspace_passes_the_context_check() -> None:
    ctx = IngressContext(workspace="01JDQ8Z6X4V7K2M9N3P5R8T1W0", peer_id=f"nick@{FP}",
                         channel="ops", request_id="r-1")
    assert gate.check_context(ctx) is None
    assert gate.check_context(ctx.model_copy(update={"workspace": "a.b"})) == (
        Reason.INVALID_REQUEST)


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("ops", True), ("a" * 64, True), ("a" * 65, False), ("ops.dev", False),
        ("_ops", False), ("ops\n", False), ("OPS", False), ("", False),
    ],
)
def test_channel_grammar_has_no_dots_and_64_chars_at_most(value: str, ok: bool) -> None:
    assert gate.is_channel(value) is ok


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("r-1", True), ("Any Chars! ✓", True), ("x" * 128, True), ("x" * 129, False),
        ("", False), ("a/b", False), ("a\\b", False), ("a\x00", False), ("a\x7f", False),
        ("a\u2028b", False),
    ],
)
def test_request_id_rule_forbids_slashes_controls_and_length(value: str, ok: bool) -> None:
    assert gate.is_request_id(value) is ok


def _ctx(**kw: str) -> IngressContext:
    base = {"workspace": "ws", "peer_id": "peer-a", "channel": "ops", "request_id": "r-1"}
    base.update(kw)
    return IngressContext(**base)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({}, None),
        ({"workspace": "  ws  ", "peer_id": " peer-a\t"}, None),  # trimmed before the grammar
        ({"workspace": ""}, Reason.INVALID_REQUEST),
        ({"peer_id": "Peer-A"}, Reason.INVALID_REQUEST),
        ({"channel": "ops/x"}, Reason.INVALID_REQUEST),
        ({"request_id": "   "}, Reason.INVALID_REQUEST),
        ({"request_id": "a/b"}, Reason.INVALID_REQUEST),
        ({"trace_id": "t\x01"}, Reason.INVALID_REQUEST),
        ({"work_id": "w" * 129}, Reason.INVALID_REQUEST),
        ({"causation_id": "c-1"}, None),
    ],
)
def test_rule1_context_must_be_complete_and_grammatical(
    fields: dict[str, str], reason: Reason | None
) -> None:
    assert gate.check_context(_ctx(**fields)) == reason


_IDS = st.sampled_from(["ws", " ws", "ws\t", "peer-a", "Peer", "ops", "o/ps", "r-1", "",
                        "  ", "a\x01", "\u00a0ops", "x" * 128, "x" * 129, "t\u2028"])


@given(workspace=_IDS, peer_id=_IDS, channel=_IDS, request_id=_IDS, work_id=_IDS,
       trace_id=_IDS, causation_id=_IDS)
def test_checked_context_is_normalize_then_rule1_in_one_pass(**fields: str) -> None:
    ctx = IngressContext(**fields)
    trimmed, grammatical = gate.checked_context(ctx)
    assert trimmed == gate.normalize_context(ctx)
    assert grammatical is (gate.check_context(ctx) is None)
    assert all(getattr(trimmed, name) == gate.trim(value) for name, value in fields.items())


def test_a_context_with_nothing_to_trim_is_taken_as_it_is() -> None:
    ctx = _ctx(work_id="w-1")
    assert gate.normalize_context(ctx) is ctx
    assert gate.checked_context(ctx) == (ctx, True)


def test_rule4_task_write_needs_a_non_empty_proof() -> None:
    assert gate.grants_write(["task.write"], "sig")
    assert not gate.grants_write(["task.write"], "")
    assert not gate.grants_write(["task.write"], "   ")
    assert not gate.grants_write(["task.read"], "sig")
    assert not gate.grants_write([], "sig")


@pytest.mark.parametrize(
    ("request_", "reason"),
    [
        (CreateTask(title="t"), None),
        (CreateTask(title="t", network_channel="ops"), None),
        (CreateTask(title="t", network_channel=" ops "), None),
        (CreateTask(title="t", network_channel="dev"), Reason.CHANNEL_MISMATCH),
        (CreateTask(title="t", network_channel="Bad!"), Reason.INVALID_REQUEST),
        (UpdateTask(task_id="x"), None),
        (UpdateTask(task_id="x", network_channel=""), None),
        (UpdateTask(task_id="x", network_channel="dev"), Reason.CHANNEL_MISMATCH),
        (EnqueueRun(task_id="x", idempotency_key="k", network_channel="dev"),
         Reason.CHANNEL_MISMATCH),
        (CancelTask(task_id="x"), None),
    ],
)
def test_rule5_requested_channel_is_empty_or_the_ingress_channel(
    request_: AnyRequest, reason: Reason | None
) -> None:
    assert gate.check_requested_channel(request_, "ops") == reason


@pytest.mark.parametrize(
    ("stored", "request_", "reason"),
    [
        ("", UpdateTask(task_id="x", title="t"), None),                      # unbound: any channel
        ("ops", UpdateTask(task_id="x", title="t"), None),                   # bound here
        ("dev", UpdateTask(task_id="x", title="t"), Reason.CHANNEL_MISMATCH),
        ("dev", CancelTask(task_id="x"), Reason.CHANNEL_MISMATCH),
        ("dev", UpdateTask(task_id="x", network_channel=""), Reason.CHANNEL_MISMATCH),
        ("Bad.Chan", UpdateTask(task_id="x", network_channel=""), None),     # clear stale
        ("Bad.Chan", UpdateTask(task_id="x", network_channel="ops"), None),  # re-bind here
        ("Bad.Chan", UpdateTask(task_id="x", network_channel="", title="t"),
         Reason.STALE_CHANNEL),                                              # changes more
        ("Bad.Chan", UpdateTask(task_id="x", title="t"), Reason.STALE_CHANNEL),
        ("Bad.Chan", CancelTask(task_id="x"), Reason.STALE_CHANNEL),
        ("Bad.Chan", EnqueueRun(task_id="x", idempotency_key="k"), Reason.STALE_CHANNEL),
    ],
)
def test_rules7_and_8_bound_and_stale_bindings(
    stored: str, request_: AnyRequest, reason: Reason | None
) -> None:
    assert gate.check_binding(stored, "ops", request_) == reason


LIMITS = Limits()


@pytest.mark.parametrize(
    ("request_", "reason"),
    [
        (CreateTask(title="t"), None),
        (CreateTask(title=" " * 3), Reason.VALIDATION_FAILED),
        (CreateTask(title="x" * 256), None),
        (CreateTask(title="x" * 257), Reason.VALIDATION_FAILED),
        (CreateTask(title="é" * 256), None),  # title counted in characters
        (CreateTask(title="t", description="x" * 16384), None),
        (CreateTask(title="t", description="é" * 8193), Reason.VALIDATION_FAILED),  # bytes
        (CreateTask(title="t", metadata={str(i): "v" for i in range(32)}), None),
        (CreateTask(title="t", metadata={str(i): "v" for i in range(33)}),
         Reason.VALIDATION_FAILED),
        (CreateTask(title="t", metadata={"k": "v" * 8200}), Reason.VALIDATION_FAILED),
        (CreateTask(title="t", metadata={"": "v"}), Reason.VALIDATION_FAILED),
        (CreateTask(title="t", priority=101), Reason.VALIDATION_FAILED),
        (CreateTask(title="t", priority=-1), Reason.VALIDATION_FAILED),
        (UpdateTask(task_id="x", title=""), Reason.VALIDATION_FAILED),
        (UpdateTask(task_id="x", expected_version=0), Reason.VALIDATION_FAILED),
        (EnqueueRun(task_id="x", idempotency_key=""), Reason.VALIDATION_FAILED),
        (EnqueueRun(task_id="x", idempotency_key="a/b"), Reason.VALIDATION_FAILED),
        (EnqueueRun(task_id="x", idempotency_key="k-1"), None),
        (CancelTask(task_id="x", reason="r" * 20000), Reason.VALIDATION_FAILED),
    ],
)
def test_rule9_payload_limits(request_: AnyRequest, reason: Reason | None) -> None:
    assert gate.check_payload(request_, LIMITS) == reason


def test_rule9_lower_configured_limits_apply() -> None:
    assert gate.check_payload(CreateTask(title="x" * 11), Limits(max_title_chars=10)) == (
        Reason.VALIDATION_FAILED
    )


def _task(**kw: object) -> StoredTask:
    base: dict[str, object] = {"workspace": "ws", "network_channel": "", "status": "open",
                               "version": 3, "locked": False}
    base.update(kw)
    return StoredTask(**base)  # type: ignore[arg-type]


def test_rule9_expected_version_must_be_current() -> None:
    assert gate.check_version(UpdateTask(task_id="x", expected_version=3), _task()) is None
    assert gate.check_version(UpdateTask(task_id="x", expected_version=2), _task()) == (
        Reason.VALIDATION_FAILED
    )


@pytest.mark.parametrize(
    ("task", "request_", "reason"),
    [
        (_task(), UpdateTask(task_id="x", title="t"), None),
        (_task(locked=True), UpdateTask(task_id="x", title="t"), Reason.PERMISSION_DENIED),
        (_task(locked=True), CancelTask(task_id="x"), Reason.PERMISSION_DENIED),
        (_task(status="canceled"), UpdateTask(task_id="x", title="t"), Reason.PERMISSION_DENIED),
        (_task(status="canceled"), EnqueueRun(task_id="x", idempotency_key="k"),
         Reason.PERMISSION_DENIED),
        (_task(status="canceled"), CancelTask(task_id="x"), None),
    ],
)
def test_rule10_locked_or_cancelled_tasks_refuse_network_writes(
    task: StoredTask, request_: AnyRequest, reason: Reason | None
) -> None:
    assert gate.authorize(request_, task) == reason


def test_trusted_metadata_overwrites_colliding_payload_keys() -> None:
    meta = gate.trusted_metadata(
        {"ingress.actor": "peer:root", "ingress.origin": "forged", "ingress.request_id": "x",
         "own": "kept"},
        _ctx(),
    )
    assert meta == {
        "ingress.actor": "peer:peer-a/channel:ops",
        "ingress.origin": "workspace:ws/channel:ops/peer:peer-a",
        "ingress.request_id": "r-1",
        "own": "kept",
    }


def test_safe_field_escapes_controls_and_truncates() -> None:
    assert gate.safe_field("a\x00b\nc") == "a\\u0000b\\u000ac"
    assert len(gate.safe_field("x" * 1000)) == 128
    assert gate.safe_field(42) == "42"


CARD_LIMITS = CardLimits(max_capabilities=3, max_capability_chars=10,
                         max_display_name_chars=5, max_proof_bytes=4)


@pytest.mark.parametrize(
    ("card", "reason"),
    [
        (PeerCard(peer_id="p", capabilities=["task.write", "a", "b_c.d"], display_name="12345",
                  proof="1234"), None),
        (PeerCard(peer_id="p", capabilities=[" task.write "]), None),  # trimmed, like rule 4
        (PeerCard(peer_id="p"), None),
        (PeerCard(peer_id="p", capabilities=["a", "b", "c", "d"]), Reason.INVALID_REQUEST),
        (PeerCard(peer_id="p", capabilities=["a" * 11]), Reason.INVALID_REQUEST),
        (PeerCard(peer_id="p", capabilities=["a" * 10]), None),
        (PeerCard(peer_id="p", capabilities=["Task.write"]), Reason.INVALID_REQUEST),
        (PeerCard(peer_id="p", capabilities=["task-write"]), Reason.INVALID_REQUEST),
        (PeerCard(peer_id="p", capabilities=["task."]), Reason.INVALID_REQUEST),
        (PeerCard(peer_id="p", capabilities=[""]), Reason.INVALID_REQUEST),
        (PeerCard(peer_id="p", capabilities=["t\u0430sk"]), Reason.INVALID_REQUEST),
        (PeerCard(peer_id="p", display_name="123456"), Reason.INVALID_REQUEST),
        (PeerCard(peer_id="p", proof="12345"), Reason.INVALID_REQUEST),
        (PeerCard(peer_id="p", proof="\u00e9\u00e9\u00e9"), Reason.INVALID_REQUEST),  # 6 bytes
        (PeerCard(peer_id="p", proof="\u00e9\u00e9"), None),  # 4 bytes
    ],
)
def test_a_card_over_a_limit_or_with_a_malformed_capability_is_invalid(
    card: PeerCard, reason: Reason | None
) -> None:
    assert gate.check_card(card, CARD_LIMITS) == reason


def test_the_default_card_limits_admit_a_max_size_card_and_refuse_one_more_of_anything(
) -> None:
    caps = ["c" * 62 + f"{chr(97 + i // 26)}{chr(97 + i % 26)}" for i in range(64)]
    card = PeerCard(peer_id="p", capabilities=caps, display_name="n" * 128, proof="p" * 4096)
    assert gate.check_card(card, CardLimits()) is None
    for over in ({"capabilities": [*caps, "x"]}, {"capabilities": ["c" * 65]},
                 {"display_name": "n" * 129}, {"proof": "p" * 4097}):
        assert gate.check_card(card.model_copy(update=over), CardLimits()) == \
            Reason.INVALID_REQUEST, over
