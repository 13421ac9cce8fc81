"""Pure parts of the NATS transport: subjects, envelope parsing, signing, replay, settings."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import msgpack
import pytest
from task_ingress.runtime.nats import envelope as wire
from task_ingress.runtime.nats.compact import CompactError, decode_compact, encode_compact
from task_ingress.runtime.nats.replay import SeenWindow
from task_ingress.runtime.nats.settings import ServeSettings
from task_ingress.runtime.nats.signing import (
    compact_signing_bytes,
    generate_key,
    parse_public_key,
    public_key_text,
    sign_envelope,
    verify,
    verify_envelope,
)
from task_ingress.runtime.nats.trust import TrustStore, enroll


def _env(**overrides: object) -> dict[str, object]:
    obj = wire.build_envelope(kind="task.create", workspace="default", channel="ops",
                              sender="peer-a", body={"title": "t"}, to="task-ingress",
                              env_id="r-1")
    obj.update(overrides)
    return obj


def test_route_token_is_the_hex_of_the_first_16_bytes_of_sha256_of_the_peer_id() -> None:
    token = wire.route_token("reviewer.sess-xyz")
    assert token == hashlib.sha256(b"reviewer.sess-xyz").hexdigest()[:32]
    assert wire.peer_subject("wks_test", "builders", "reviewer.sess-xyz") == (
        f"agh.network.v0.wks_test.builders.peer.{token}")
    assert wire.broadcast_subject("wks_test", "builders") == (
        "agh.network.v0.wks_test.builders.broadcast")
    with pytest.raises(ValueError):
        wire.route_token("BadPeer")


def test_subjects_parse_back_and_foreign_subjects_do_not() -> None:
    assert wire.parse_subject("agh.network.v0.ws.ops.broadcast") == wire.Subject("ws", "ops",
                                                                                  False)
    assert wire.parse_subject("agh.network.v0.ws.ops.peer.abc") == wire.Subject("ws", "ops",
                                                                                True)
    for bad in ("agh.network.v1.ws.ops.broadcast", "x", "agh.network.v0.ws.ops.peer",
                "agh.network.v0.ws.ops.other.x"):
        assert wire.parse_subject(bad) is None


@pytest.mark.parametrize(("data", "form"), [
    (b'{"a":1}', "json"), (b' \n{"a":1}', "json"), (b"\x81\xa1a\x01", "msgpack"),
    (b"\xde\x00\x01", "msgpack"), (b"", "unknown"), (b"[1]", "unknown"), (b"\x00", "unknown"),
])
def test_wire_form_is_told_by_the_first_byte(data: bytes, form: str) -> None:
    assert wire.wire_form(data) == form


def test_a_well_formed_envelope_parses_with_trimmed_identifiers() -> None:
    env = wire.parse_envelope(wire.encode_json(_env(channel=" ops ", **{"from": "peer-a "})))
    assert (env.kind, env.channel, env.sender, env.to, env.id) == (
        "task.create", "ops", "peer-a", "task-ingress", "r-1")


@pytest.mark.parametrize(("overrides", "detail"), [
    ({"protocol": "agh-network/v1"}, "protocol"),
    ({"id": "  "}, "id is required"),
    ({"workspace_id": "a.b"}, "workspace_id"),
    ({"channel": "Bad Channel"}, "channel"),
    ({"from": "BadPeer"}, "from"),
    ({"to": ""}, "to must be"),
    ({"ts": 0}, "ts is required"),
    ({"ts": "1"}, "ts is required"),
    ({"ts": int(time.time()) - 301}, "older"),
    ({"ts": int(time.time()) + 400}, "future"),
    ({"expires_at": int(time.time()) - 1}, "expired"),
    ({"body": [1]}, "body"),
    ({"proof": "sig"}, "proof"),
])
def test_malformed_envelopes_are_refused_with_what_could_be_read(
        overrides: dict[str, object], detail: str) -> None:
    with pytest.raises(wire.EnvelopeError) as err:
        wire.parse_envelope(wire.encode_json(_env(**overrides)))
    assert detail in err.value.detail
    assert err.value.kind == "task.create" and err.value.id in ("r-1", "")


def test_an_old_envelope_with_a_future_expires_at_is_still_fresh() -> None:
    env = _env(ts=int(time.time()) - 1000, expires_at=int(time.time()) + 60)
    assert wire.parse_envelope(wire.encode_json(env)).expires_at is not None


def test_oversized_and_deeply_nested_json_is_refused_not_crashed() -> None:
    with pytest.raises(wire.EnvelopeError):
        wire.parse_envelope(b"{" + b" " * (64 * 1024))
    with pytest.raises(wire.EnvelopeError):
        wire.parse_envelope(b'{"a":' + b"[" * 50_000 + b"]" * 50_000 + b"}")


def test_a_signature_covers_every_field_but_the_proof() -> None:
    key = generate_key()
    public = parse_public_key(public_key_text(key))
    assert public is not None
    signed = sign_envelope(_env(), key)
    assert verify_envelope(signed, public)
    assert verify_envelope(json.loads(wire.encode_json(signed)), public)  # survives JSON
    for field, value in (("from", "peer-b"), ("channel", "dev"), ("to", "other"),
                         ("body", {"title": "x"}), ("ts", 1)):
        assert not verify_envelope({**signed, field: value}, public)
    assert not verify_envelope({**signed, "proof": None}, public)
    assert not verify_envelope(signed, generate_key().public_key())


def test_the_compact_form_round_trips_and_binds_subject_and_daemon() -> None:
    key = generate_key()
    data = encode_compact(b"inner", workspace="ws", channel="ops", sender="peer-a",
                          to="task-ingress", ts=123, key=key)
    compact = decode_compact(data)
    assert (compact.sender, compact.to, compact.ts, compact.inner) == (
        "peer-a", "task-ingress", 123, b"inner")

    def signed_for(channel: str) -> bytes:
        return compact_signing_bytes(workspace="ws", channel=channel, sender="peer-a",
                                     to="task-ingress", ts=123, inner=b"inner")

    assert verify(key.public_key(), compact.signature, signed_for("ops"))
    assert not verify(key.public_key(), compact.signature, signed_for("dev"))
    for bad in (b"\x81\xa1v\x01", msgpack.packb([1, 2]), b"\xc1",
                msgpack.packb({"v": 1, "from": "peer-a", "to": "d", "ts": 1, "env": b"",
                               "sig": b"short"})):
        with pytest.raises(CompactError):
            decode_compact(bad)


def test_the_replay_window_forgets_after_the_window_and_stays_bounded() -> None:
    now = [0.0]
    window = SeenWindow(window=10.0, capacity=3, clock=lambda: now[0])
    assert window.seen("a") is False
    assert window.seen("a") is True
    now[0] = 10.0
    assert window.seen("a") is False  # expired, recorded afresh
    for key in "bcde":
        window.seen(key)
    assert len(window) == 3


def test_the_trust_store_follows_enrolment_without_a_restart(tmp_path: Path) -> None:
    path = str(tmp_path / "trust.json")
    store = TrustStore(path)
    assert store.lookup("peer-a") is None
    key = generate_key()
    enroll(path, {"peer-a": public_key_text(key)})
    enroll(path, {"peer-b": public_key_text(generate_key())})
    found = store.lookup("peer-a")
    assert found is not None and public_key_text(found) == public_key_text(key)
    assert len(store) == 2
    with pytest.raises(ValueError):
        enroll(path, {"Bad Peer": public_key_text(key)})


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


def test_metrics_read_the_runtime_queue_depths_at_scrape_time() -> None:
    from task_ingress.runtime.driver import RuntimeStatistics
    from task_ingress.runtime.nats.metrics import Metrics

    class Runtime:
        """Reports whatever the test sets, as IngressRuntime.statistics() would."""

        def __init__(self) -> None:
            self.now = RuntimeStatistics(calls_waiting=3, requests_in_flight=2)

        def statistics(self) -> RuntimeStatistics:
            return self.now

    runtime = Runtime()
    metrics = Metrics()
    metrics.watch_runtime(runtime)
    text = metrics.exposition().decode()
    assert "task_ingress_runtime_queue 3.0" in text
    assert "task_ingress_runtime_admitted 2.0" in text
    runtime.now = RuntimeStatistics(calls_waiting=2, requests_in_flight=0)
    text = metrics.exposition().decode()
    assert "task_ingress_runtime_queue 2.0" in text
    assert "task_ingress_runtime_admitted 0.0" in text
