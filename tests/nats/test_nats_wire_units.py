"""Pure parts of the NATS transport: subjects, AGH envelope rules, compact form, policy,
settings."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import msgpack
import pytest
from task_ingress.runtime.nats import envelope as wire
from task_ingress.runtime.nats.compact import (
    CompactError,
    decode_compact,
    encode_compact,
    evaluate_compact,
)
from task_ingress.runtime.nats.identity import Trust, generate_key, handle
from task_ingress.runtime.nats.policy import TrustPolicy, allow, disallow, listed
from task_ingress.runtime.nats.settings import ServeSettings, mask_url

from tests.nats.agh_rules import agh_problems

NOW = 1775606400


def test_v0_route_token_is_the_hex_of_the_first_16_bytes_of_sha256_of_the_peer_id() -> None:
    token = wire.route_token("reviewer.sess-xyz")
    assert token == hashlib.sha256(b"reviewer.sess-xyz").hexdigest()[:32]
    assert wire.peer_subject("wks_test", "builders", "reviewer.sess-xyz") == (
        f"agh.network.v0.wks_test.builders.peer.{token}")
    assert wire.broadcast_subject("wks_test", "builders") == (
        "agh.network.v0.wks_test.builders.broadcast")
    with pytest.raises(ValueError):
        wire.route_token("BadPeer")


def test_a_verified_handles_v1_route_token_is_its_fingerprint() -> None:
    fp = "39f713d0a644253f04529421b9f51b9b"
    assert wire.peer_subject("ws", "ops", f"patch-worker@{fp}", wire.PROTOCOL_V1) == (
        f"agh.network.v1.ws.ops.peer.{fp}")
    assert wire.broadcast_subject("ws", "ops", wire.PROTOCOL_V1) == (
        "agh.network.v1.ws.ops.broadcast")


def test_subjects_parse_back_and_foreign_subjects_do_not() -> None:
    assert wire.parse_subject("agh.network.v0.WS.ops.broadcast") == wire.Subject(
        wire.PROTOCOL_V0, "WS", "ops", False)
    assert wire.parse_subject("agh.network.v1.ws.ops.peer.abc") == wire.Subject(
        wire.PROTOCOL_V1, "ws", "ops", True)
    for bad in ("agh.network.v2.ws.ops.broadcast", "x", "agh.network.v0.ws.ops.peer",
                "agh.network.v0.ws.ops.other.x"):
        assert wire.parse_subject(bad) is None


def test_direct_room_id_is_aghs_deterministic_pair_hash() -> None:
    expected = "direct_" + hashlib.sha256(
        b"agh-network/direct-room/v0\x00ws\x00ops\x00alpha\x00beta").hexdigest()[:32]
    assert wire.direct_id("ws", "ops", "beta", "alpha") == expected
    assert wire.direct_id("ws", "ops", "alpha", "beta") == expected
    with pytest.raises(ValueError):
        wire.direct_id("ws", "ops", "alpha", "alpha")


def _say(**overrides: object) -> dict[str, object]:
    obj = wire.build_envelope(kind="say", workspace="ws", channel="ops", sender="peer-a",
                              to="task-ingress", surface="direct", work_id="work_1",
                              body={"text": "hi", "intent": "task.create"}, ts=NOW)
    obj.update(overrides)
    return obj


@pytest.mark.parametrize(("change", "code"), [
    ({"protocol": "agh-network/v9"}, "malformed"),
    ({"id": " "}, "malformed"),
    ({"workspace_id": "a.b"}, "malformed"),
    ({"kind": "task.create"}, "unsupported_kind"),
    ({"channel": "Ops"}, "malformed"),
    ({"from": "peer@x"}, "malformed"),
    ({"to": "Bad"}, "malformed"),
    ({"ts": 0}, "malformed"),
    ({"ts": NOW - 301}, "expired"),
    ({"ts": NOW + 301, "expires_at": NOW + 900}, "expired"),
    ({"expires_at": NOW}, "expired"),
    ({"surface": None}, "invalid_surface"),
    ({"surface": "room"}, "invalid_surface"),
    ({"direct_id": "direct_xyz"}, "invalid_surface"),
    ({"thread_id": "thread_abc"}, "invalid_surface"),
    ({"work_id": "a/b"}, "malformed"),
    ({"body": {"text": " "}}, "malformed"),
    ({"body": []}, "malformed"),
    ({"proof": "sig"}, "malformed"),
    ({"ext": [1]}, "malformed"),
    ({"interaction_id": "x"}, "legacy_field_rejected"),
    ({"body": {"text": "password: hunter2"}}, "malformed"),
    ({"ext": {"x": {"api_key": "abc"}}}, "malformed"),
])
def test_each_agh_rule_refuses_an_envelope_on_its_own(change: dict[str, object],
                                                        code: str) -> None:
    good = _say()
    assert wire.validate_object(good, now=NOW).kind == "say"
    assert agh_problems(good, NOW) == []
    bad = {**good, **change}
    with pytest.raises(wire.EnvelopeError) as err:
        wire.validate_object(bad, now=NOW)
    assert err.value.code == code
    assert agh_problems(bad, NOW) != []  # the test-side checker agrees


def test_blank_optional_identifiers_are_absent_as_aghs_normalization_makes_them() -> None:
    env = wire.validate_object(_say(reply_to="  ", trace_id=""), now=NOW)
    assert env.reply_to is None and env.trace_id is None


def test_a_card_claiming_task_write_needs_a_proof_and_must_be_the_senders() -> None:
    card = {"peer_id": "peer-a", "profiles_supported": [], "capabilities": ["task.write"],
            "artifacts_supported": [], "trust_modes_supported": []}
    greet = wire.build_envelope(kind="greet", workspace="ws", channel="ops", sender="peer-a",
                                body={"peer_card": card}, ts=NOW)
    with pytest.raises(wire.EnvelopeError) as err:
        wire.validate_object(greet, now=NOW)
    assert err.value.code == "verification_failed"
    assert wire.validate_object({**greet, "proof": {"x": "y"}}, now=NOW).kind == "greet"
    other = {**greet, "proof": {"x": "y"}, "from": "peer-b"}
    with pytest.raises(wire.EnvelopeError):
        wire.validate_object(other, now=NOW)
    missing = {**greet, "body": {"peer_card": {"peer_id": "peer-a", "capabilities": []}}}
    with pytest.raises(wire.EnvelopeError):
        wire.validate_object(missing, now=NOW)


@pytest.mark.parametrize(("body", "ok"), [
    ({"for_id": "m", "status": "accepted"}, True),
    ({"for_id": "m", "status": "accepted", "reason_code": "malformed"}, False),
    ({"for_id": "m", "status": "rejected"}, False),
    ({"for_id": "m", "status": "rejected", "reason_code": "capability_denied"}, False),
    ({"for_id": "m", "status": "duplicate", "reason_code": "duplicate"}, True),
    ({"for_id": "m", "status": "canceled"}, True),
    ({"for_id": "m", "status": "done"}, False),
    ({"status": "accepted"}, False),
])
def test_receipt_statuses_and_reason_codes_come_from_aghs_registries(
        body: dict[str, object], ok: bool) -> None:
    env = wire.build_envelope(kind="receipt", workspace="ws", channel="ops", sender="a",
                              to="b", surface="direct", work_id="work_1", body=body, ts=NOW)
    assert (agh_problems(env, NOW) == []) is ok
    if ok:
        wire.validate_object(env, now=NOW)
    else:
        with pytest.raises(wire.EnvelopeError):
            wire.validate_object(env, now=NOW)


def test_v1_allows_handles_where_v0_does_not() -> None:
    key = generate_key()
    me = handle("alice", key)
    say = _say(**{"from": me, "direct_id": wire.direct_id("ws", "ops", me, "task-ingress")})
    with pytest.raises(wire.EnvelopeError):
        wire.validate_object(say, now=NOW)
    v1 = {**say, "protocol": wire.PROTOCOL_V1}
    assert wire.validate_object(v1, now=NOW).sender == me
    with pytest.raises(wire.EnvelopeError):
        wire.validate_object(v1, now=NOW, protocols=frozenset({wire.PROTOCOL_V0}))


@pytest.mark.parametrize(("data", "form"), [
    (b'{"a":1}', "json"), (b' \n{"a":1}', "json"), (b"\x81\xa1a\x01", "msgpack"),
    (b"\xde\x00\x01", "msgpack"), (b"", "unknown"), (b"[1]", "unknown"), (b"\x00", "unknown"),
])
def test_wire_form_is_told_by_the_first_byte(data: bytes, form: str) -> None:
    assert wire.wire_form(data) == form


def test_json_that_is_not_strict_is_refused() -> None:
    for data in (b'{"a": NaN}', b"\xff{", b"[1]", b"{" * 5000, b"x" * 70_000):
        with pytest.raises(wire.EnvelopeError):
            wire.parse_envelope(data)


def test_compact_trust_states_follow_rfc004() -> None:
    key = generate_key()
    me = handle("peer-a", key)
    common = {"workspace": "ws", "channel": "ops", "to": "task-ingress", "ts": 1}
    signed = decode_compact(encode_compact(b"inner", sender=me, key=key, **common))
    assert evaluate_compact(signed, workspace="ws", channel="ops").trust is Trust.VERIFIED
    assert evaluate_compact(signed, workspace="ws", channel="dev").trust is Trust.REJECTED
    plain = decode_compact(encode_compact(b"inner", sender="peer-a", key=None, **common))
    assert evaluate_compact(plain, workspace="ws", channel="ops").trust is Trust.UNVERIFIED
    stripped = decode_compact(encode_compact(b"inner", sender=me, key=None, **common))
    assert evaluate_compact(stripped, workspace="ws", channel="ops").trust is Trust.REJECTED
    other = decode_compact(encode_compact(b"inner", sender=me, key=generate_key(), **common))
    assert evaluate_compact(other, workspace="ws", channel="ops").trust is Trust.REJECTED
    for bad in (b"\xc1", msgpack.packb([1]), msgpack.packb({"v": 2, "from": "x"})):
        with pytest.raises(CompactError):
            decode_compact(bad)


def test_the_policy_grants_by_fingerprint_and_follows_file_changes(tmp_path: Path) -> None:
    path = str(tmp_path / "trust.json")
    key = generate_key()
    alice = handle("alice", key)
    clock = [0.0]
    policy = TrustPolicy(path, recheck=0.25, clock=lambda: clock[0])
    fp = alice.rsplit("@", 1)[1]
    assert not policy.allows(fp)
    allow(path, [alice])
    assert policy.allows(fp)  # a miss re-reads the file at once
    assert handle("other-nick", key).rsplit("@", 1)[1] == fp  # same key, same grant
    assert listed(path) == [alice]
    assert disallow(path, [alice]) == [alice]
    assert policy.allows(fp)  # a hit is re-checked at most every 0.25 s
    clock[0] += 1.0
    assert not policy.allows(fp)
    with pytest.raises(ValueError):
        allow(path, ["alice"])  # not a handle


def test_serve_settings_accept_ulid_workspaces_and_refuse_bad_names(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TASK_INGRESS_WORKSPACE", raising=False)
    assert ServeSettings(workspace="01JDQ8Z6X4V7K2M9N3P5R8T1W0").workspace == (
        "01JDQ8Z6X4V7K2M9N3P5R8T1W0")
    for bad in ({"workspace": "a.b"}, {"workspace": "a b"}, {"channels": ["Ops"]},
                {"peer_id": f"a@{'0' * 32}"}, {"nickname": "Bad"}, {"process_mode": "threads"},
                {"process_mode": "pipeline", "actor_base": "multiprocQueueBase"}):
        with pytest.raises(ValueError):
            ServeSettings(**bad)
    s = ServeSettings(store="/tmp/x.db")
    assert s.process_mode == "inprocess"
    assert s.key_path == "/tmp/x.db.peer.key" and s.trust_path == "/tmp/x.db.trust.json"


def test_wire_times_are_unix_seconds() -> None:
    assert abs(wire.build_envelope(kind="say", workspace="w", channel="c", sender="s",
                                   body={})["ts"] - time.time()) < 5


def test_settings_come_from_env_and_print_without_secrets(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASK_INGRESS_NATS_URL", "nats://user:hunter2@127.0.0.1:4222")
    monkeypatch.setenv("TASK_INGRESS_NATS_TOKEN", "s3cret-token")
    monkeypatch.setenv("TASK_INGRESS_CHANNELS", "ops, dev")
    settings = ServeSettings(workspace="wks")
    assert settings.channels == ["ops", "dev"] and settings.workspace == "wks"
    printed = json.dumps(settings.public())
    assert "hunter2" not in printed and "s3cret-token" not in printed
    assert "nats://user:***@127.0.0.1:4222" in printed
    with pytest.raises(ValueError):
        ServeSettings(workspace="Bad WS")


@pytest.mark.parametrize(("given", "shown"), [
    ("postgresql://app:hunter2@db:5432/ti", "postgresql://app:***@db:5432/ti"),
    ("postgresql://db/ti?user=app&password=hunter2&sslmode=require",
     "postgresql://db/ti?user=app&password=***&sslmode=require"),
    ("host=db dbname=ti user=app password=hunter2", "host=db dbname=ti user=app password=***"),
    ("host=db PASSWORD = 'hun ter\\'2' dbname=ti", "host=db PASSWORD = *** dbname=ti"),
    ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
])
def test_a_password_is_masked_wherever_a_connection_string_gives_it(given: str,
                                                                      shown: str) -> None:
    assert mask_url(given) == shown and "hunter" not in mask_url(given)


def test_metrics_read_the_runtime_queue_depths_and_dispatch_totals_at_scrape_time() -> None:
    from task_ingress.runtime.driver import RuntimeStatistics
    from task_ingress.runtime.nats.metrics import Metrics

    class Runtime:
        """Reports whatever the test sets, as IngressRuntime.statistics() would."""

        def __init__(self) -> None:
            self.now = RuntimeStatistics(calls_waiting=3, requests_in_flight=2,
                                         calls_dispatched=40, batches_dispatched=5)

        def statistics(self) -> RuntimeStatistics:
            return self.now

    runtime = Runtime()
    metrics = Metrics()
    metrics.watch_runtime(runtime)
    text = metrics.exposition().decode()
    assert "task_ingress_runtime_queue 3.0" in text
    assert "task_ingress_runtime_admitted 2.0" in text
    assert "task_ingress_runtime_dispatched_calls_total 40.0" in text
    assert "task_ingress_runtime_dispatched_batches_total 5.0" in text
    runtime.now = RuntimeStatistics(calls_waiting=2, requests_in_flight=0,
                                    calls_dispatched=43, batches_dispatched=7)
    text = metrics.exposition().decode()
    assert "task_ingress_runtime_queue 2.0" in text
    assert "task_ingress_runtime_admitted 0.0" in text
    assert "task_ingress_runtime_dispatched_calls_total 43.0" in text
    assert "task_ingress_runtime_dispatched_batches_total 7.0" in text


def test_requests_counted_through_cached_label_children_show_in_the_exposition() -> None:
    from task_ingress.runtime.nats.metrics import Metrics

    metrics = Metrics()
    for seconds in (0.002, 0.2):
        metrics.observe_request("task.create", True, None, "verified", seconds)
    metrics.observe_request("task.create", False, "capability_denied", "verified", 0.001)
    metrics.judged("compact", "verified")
    metrics.judged("compact", "verified")
    metrics.judged("say", "unverified")
    text = metrics.exposition().decode()
    assert ('task_ingress_requests_total{action="task.create",outcome="accepted",reason=""} '
            '2.0') in text
    assert ('task_ingress_requests_total{action="task.create",outcome="rejected",'
            'reason="capability_denied"} 1.0') in text
    assert 'task_ingress_requests_by_trust_total{outcome="accepted",trust="verified"} 2.0' in text
    assert 'task_ingress_request_seconds_count{action="task.create"} 3.0' in text
    assert 'task_ingress_request_seconds_bucket{action="task.create",le="0.0025"} 2.0' in text
    assert 'task_ingress_envelopes_total{kind="compact",trust="verified"} 2.0' in text
    assert 'task_ingress_envelopes_total{kind="say",trust="unverified"} 1.0' in text
