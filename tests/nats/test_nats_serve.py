"""`serve` over a real nats-server: the JSON contract, forged identities, garbage, replays."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import msgpack
from task_ingress.messages.reasons import Action, Reason
from task_ingress.runtime.nats import envelope as wire
from task_ingress.runtime.nats.signing import parse_public_key, sign_envelope, verify_envelope
from task_ingress.runtime.nats.trust import revoke

from tests.conftest import FakeClock
from tests.nats.conftest import RunningDaemon
from tests.nats.nats_support import (
    DAEMON,
    WS,
    Peer,
    Wire,
    body_of,
    broadcast,
    daemon_subject,
)

Start = Callable[..., RunningDaemon]


def _greet(nats_wire: Wire, data: bytes, channel: str = "ops") -> dict[str, Any]:
    return body_of(nats_wire.request(broadcast(channel), data))


def _ask(nats_wire: Wire, data: bytes, channel: str = "ops") -> dict[str, Any]:
    return body_of(nats_wire.request(daemon_subject(channel), data))


def _wait_for(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_signed_peer_greets_creates_updates_cancels_and_enqueues_over_json_envelopes(
        start_daemon: Start, nats_wire: Wire) -> None:
    d = start_daemon()
    a = Peer("peer-a", d.info.trust_file)
    on_peer_subject = nats_wire.collect(wire.peer_subject(WS, "ops", "peer-a"))
    assert _greet(nats_wire, a.greet())["applied"] is True

    raw = nats_wire.request(daemon_subject(), a.task(
        "task.create", {"title": "Ship it", "network_channel": "ops"}, "r-1"))
    reply = json.loads(raw)
    assert reply["kind"] == "task.result" and reply["reply_to"] == "r-1"
    assert reply["from"] == DAEMON and reply["to"] == "peer-a"
    daemon_key = parse_public_key(d.info.daemon_public_key)
    assert daemon_key is not None and verify_envelope(reply, daemon_key)
    created = reply["body"]
    assert created["accepted"] is True and created["reason"] is None
    task_id = created["task_id"]

    updated = _ask(nats_wire, a.task("task.update", {"task_id": task_id, "title": "v2"}, "r-2"))
    assert updated["accepted"] is True
    run = _ask(nats_wire, a.task("task.run.enqueue",
                                 {"task_id": task_id, "idempotency_key": "k-1"}, "r-3"))
    assert run["accepted"] is True and run["run_id"]
    canceled = _ask(nats_wire, a.task("task.cancel", {"task_id": task_id}, "r-4"))
    assert canceled["accepted"] is True

    task = d.runtime.get_task(WS, task_id)
    assert task is not None and task.title == "v2" and task.status == "canceled"
    assert task.network_channel == "ops"
    assert d.runtime.get_run(WS, run["run_id"]) is not None
    records = d.runtime.audit()
    assert [(r.action, r.outcome) for r in records] == [
        (Action.CREATE, "accepted"), (Action.UPDATE, "accepted"),
        (Action.ENQUEUE, "accepted"), (Action.CANCEL, "accepted")]
    assert all(r.peer_id == "peer-a" and r.channel == "ops" for r in records)
    # The same replies also went to the sender's peer subject (AGH style).
    _wait_for(lambda: len(on_peer_subject) == 4)
    assert [json.loads(m)["reply_to"] for m in on_peer_subject] == ["r-1", "r-2", "r-3", "r-4"]


def test_peer_b_cannot_greet_as_peer_a(start_daemon: Start, nats_wire: Wire) -> None:
    d = start_daemon()
    a = Peer("peer-a", d.info.trust_file)
    b = Peer("peer-b", d.info.trust_file)
    forged = _greet(nats_wire, b.greet(sender="peer-a"))
    assert forged == {"applied": False, "reason": "invalid_request", "task_write": False}
    unsigned = _greet(nats_wire, b.greet(sender="peer-a", signed=False))
    assert unsigned["applied"] is False
    # peer-a was never made visible by B's greets.
    denied = _ask(nats_wire, a.task("task.create", {"title": "t"}, "r-1"))
    assert denied["reason"] == Reason.PEER_NOT_FOUND
    records = d.runtime.audit()
    assert [(r.peer_id, r.action, r.reason) for r in records] == [
        ("peer-a", Action.UNKNOWN, Reason.INVALID_REQUEST),
        ("peer-a", Action.UNKNOWN, Reason.INVALID_REQUEST),
        ("peer-a", Action.CREATE, Reason.PEER_NOT_FOUND)]


def test_peer_b_cannot_write_as_peer_a(start_daemon: Start, nats_wire: Wire) -> None:
    d = start_daemon()
    a = Peer("peer-a", d.info.trust_file)
    b = Peer("peer-b", d.info.trust_file)
    assert _greet(nats_wire, a.greet())["applied"]
    assert _greet(nats_wire, b.greet())["applied"]
    forged = _ask(nats_wire, b.task("task.create", {"title": "evil"}, "r-x", sender="peer-a"))
    assert forged["accepted"] is False and forged["reason"] == Reason.INVALID_REQUEST
    unsigned = _ask(nats_wire, b.task("task.create", {"title": "evil"}, "r-y",
                                      sender="peer-a", signed=False))
    assert unsigned["reason"] == Reason.INVALID_REQUEST
    records = d.runtime.audit()
    assert len(records) == 2 and all(r.task_id is None for r in records)
    assert {r.request_id for r in records} == {"r-x", "r-y"}


def test_peer_b_cannot_make_peer_a_leave_or_lose_task_write(
        start_daemon: Start, nats_wire: Wire) -> None:
    d = start_daemon()
    a = Peer("peer-a", d.info.trust_file)
    b = Peer("peer-b", d.info.trust_file)
    assert _greet(nats_wire, a.greet())["task_write"] is True
    # A forged re-greet that drops task.write would, if applied, act as A leaving writes.
    assert _greet(nats_wire, b.greet(sender="peer-a", capabilities=()))["applied"] is False
    assert _greet(nats_wire, b.greet(sender="peer-a", capabilities=(),
                                     signed=False))["applied"] is False
    ok = _ask(nats_wire, a.task("task.create", {"title": "still mine"}, "r-1"))
    assert ok["accepted"] is True
    assert d.runtime.get_task(WS, ok["task_id"]) is not None


def test_bad_signatures_are_rejected_and_audited(start_daemon: Start, nats_wire: Wire) -> None:
    d = start_daemon()
    a = Peer("peer-a", d.info.trust_file)
    assert _greet(nats_wire, a.greet())["applied"]
    env = wire.build_envelope(kind="task.create", workspace=WS, channel="ops",
                              sender="peer-a", body={"title": "signed"}, to=DAEMON,
                              env_id="r-1")
    signed = sign_envelope(env, a.key)
    tampered = {**signed, "body": {"title": "tampered"}}
    assert _ask(nats_wire, wire.encode_json(tampered))["reason"] == Reason.INVALID_REQUEST
    garbled = {**signed, "proof": {"alg": "ed25519", "sig": "AAAA"}}
    assert _ask(nats_wire, wire.encode_json(garbled))["reason"] == Reason.INVALID_REQUEST
    moved = {**signed, "channel": "dev"}  # signed for ops, replayed into dev
    assert _ask(nats_wire, wire.encode_json(moved), "dev")["reason"] == Reason.INVALID_REQUEST
    unknown = Peer("peer-z", None)  # never enrolled
    assert _ask(nats_wire, unknown.task("task.create", {"title": "t"}, "r-2"))["reason"] == (
        Reason.INVALID_REQUEST)
    records = d.runtime.audit()
    assert [r.reason for r in records] == [Reason.INVALID_REQUEST] * 4
    assert [r.action for r in records] == [Action.CREATE] * 4
    assert all(r.task_id is None for r in records)


def test_garbage_bytes_on_both_subjects_get_audited_rejections(
        start_daemon: Start, nats_wire: Wire) -> None:
    d = start_daemon()
    garbage = [b"", b"\x00\xff\xfe", b"{not json", b"[1, 2]", b"{}", b'{"protocol": 5}',
               b"\x81\xa1x\xc1", msgpack.packb({"v": 1, "from": "peer-a"}),
               b"{" + b"[" * 100_000, b'{"a": NaN}', b"\xde" + b"\x00" * 3]
    replies = []
    for subject in (broadcast(), daemon_subject()):
        for data in garbage:
            replies.append(nats_wire.request(subject, data))
    assert len(replies) == 2 * len(garbage)
    for raw in replies:
        if raw[:1] == b"{":
            assert body_of(raw)["reason"] == Reason.INVALID_REQUEST
        else:
            assert msgpack.unpackb(raw)["reason"] == Reason.INVALID_REQUEST
    records = d.runtime.audit()
    assert len(records) == 2 * len(garbage)
    assert all(r.reason == Reason.INVALID_REQUEST and r.outcome == "rejected" for r in records)
    # Still serving afterwards.
    a = Peer("peer-a", d.info.trust_file)
    assert _greet(nats_wire, a.greet())["applied"]
    assert _ask(nats_wire, a.task("task.create", {"title": "t"}, "r-1"))["accepted"]


def test_a_replayed_task_envelope_returns_the_first_outcome_and_is_audited_as_replay(
        start_daemon: Start, nats_wire: Wire) -> None:
    d = start_daemon()
    a = Peer("peer-a", d.info.trust_file)
    assert _greet(nats_wire, a.greet())["applied"]
    data = a.task("task.create", {"title": "once"}, "r-1")
    first = _ask(nats_wire, data)
    again = _ask(nats_wire, data)
    assert first["accepted"] and again["accepted"]
    assert again["task_id"] == first["task_id"] and again["replay"] is True
    records = d.runtime.audit()
    assert [(r.request_id, r.replay) for r in records] == [("r-1", False), ("r-1", True)]


def test_a_replayed_greet_id_does_not_refresh_presence(start_daemon: Start, nats_wire: Wire,
                                                        clock: FakeClock) -> None:
    d = start_daemon(clock=clock)
    a = Peer("peer-a", d.info.trust_file)
    greet = a.greet(env_id="g-1")
    assert _greet(nats_wire, greet)["applied"]
    clock.advance(61.0)  # expired: 2 x 30 s without a greet
    assert _greet(nats_wire, greet) == {"applied": False, "reason": "duplicate",
                                         "task_write": False}
    late = _ask(nats_wire, a.task("task.create", {"title": "t"}, "r-1"))
    assert late["reason"] == Reason.PEER_NOT_FOUND
    assert _greet(nats_wire, a.greet(env_id="g-2"))["applied"]  # a fresh greet works


def test_a_peer_expires_after_missed_greets(start_daemon: Start, nats_wire: Wire,
                                            clock: FakeClock) -> None:
    d = start_daemon(clock=clock)
    a = Peer("peer-a", d.info.trust_file)
    assert _greet(nats_wire, a.greet())["applied"]
    clock.advance(59.0)  # one greet interval of 30 s missed, the second not yet
    assert _ask(nats_wire, a.task("task.create", {"title": "t"}, "r-1"))["accepted"]
    clock.advance(1.0)  # 2 x 30 s without a greet
    expired = _ask(nats_wire, a.task("task.create", {"title": "t"}, "r-2"))
    assert expired["accepted"] is False and expired["reason"] == Reason.PEER_NOT_FOUND


def test_an_agh_format_greet_is_understood(start_daemon: Start, nats_wire: Wire) -> None:
    """AGH's own fixture (envelope_integration_test.go), ts made fresh: its card is read,
    unsigned it is refused and audited, signed by the peer's key it is applied."""
    d = start_daemon(workspace="wks_test")
    now = int(time.time())
    agh_greet = """{
      "protocol": "agh-network/v0",
      "workspace_id": "wks_test",
      "id": "msg_greet_01",
      "kind": "greet",
      "channel": "builders",
      "from": "coder.sess-abc",
      "to": null,
      "ts": 1775822400,
      "body": {
        "peer_card": {
          "peer_id": "coder.sess-abc",
          "profiles_supported": ["agh-network/v0"],
          "capabilities": ["workspace.patch.apply"],
          "artifacts_supported": ["capability"],
          "trust_modes_supported": ["unverified"]
        }
      },
      "proof": null
    }""".replace('"ts": 1775822400', f'"ts": {now}').encode()
    subject = wire.broadcast_subject("wks_test", "builders")
    assert body_of(nats_wire.request(subject, agh_greet))["applied"] is False
    record = d.runtime.audit()[-1]
    assert (record.peer_id, record.request_id, record.channel, record.workspace) == (
        "coder.sess-abc", "msg_greet_01", "builders", "wks_test")
    peer = Peer("coder.sess-abc", d.info.trust_file)
    signed = sign_envelope(json.loads(agh_greet), peer.key)
    assert body_of(nats_wire.request(subject, wire.encode_json(signed))) == {
        "applied": True, "reason": None, "task_write": False}
    # Visible with the card's capabilities: a write is judged on capability, not presence.
    write = peer.task("task.create", {"title": "t"}, "r-1", channel="builders", ws="wks_test")
    answer = body_of(nats_wire.request(wire.peer_subject("wks_test", "builders", DAEMON),
                                       write))
    assert answer["reason"] == Reason.CAPABILITY_DENIED


def test_valid_agh_traffic_of_other_kinds_is_ignored_not_audited(
        start_daemon: Start, nats_wire: Wire) -> None:
    d = start_daemon()
    a = Peer("peer-a", d.info.trust_file)
    say = wire.build_envelope(kind="say", workspace=WS, channel="ops", sender="peer-a",
                              body={"text": "hello"})
    nats_wire.publish(broadcast(), wire.encode_json(say))
    assert _greet(nats_wire, a.greet())["applied"]  # processed after the say
    assert d.runtime.audit() == []
    assert d.daemon.metrics.ignored.labels("say")._value.get() == 1


def test_trust_file_changes_apply_without_restart(start_daemon: Start, nats_wire: Wire,
                                                  clock: FakeClock) -> None:
    d = start_daemon(clock=clock)
    late = Peer("peer-late", d.info.trust_file)  # enrolled after the daemon started
    assert _greet(nats_wire, late.greet())["applied"]
    assert _ask(nats_wire, late.task("task.create", {"title": "t"}, "r-1"))["accepted"]
    revoke(d.info.trust_file, ["peer-late"])
    clock.advance(0.3)  # a known peer's key is re-checked at most every 0.25 s
    revoked = _ask(nats_wire, late.task("task.create", {"title": "t"}, "r-2"))
    assert revoked["reason"] == Reason.INVALID_REQUEST


def test_metrics_and_readiness_are_served_on_loopback(start_daemon: Start,
                                                       nats_wire: Wire) -> None:
    from task_ingress.runtime.ports import free_port

    d = start_daemon(metrics_port=free_port())
    a = Peer("peer-a", d.info.trust_file)
    assert _greet(nats_wire, a.greet())["applied"]
    _ask(nats_wire, a.task("task.create", {"title": "t"}, "r-1"))
    _ask(nats_wire, a.task("task.cancel", {"task_id": "nope"}, "r-2"))
    base = d.info.metrics_url.rsplit("/", 1)[0]
    with urllib.request.urlopen(base + "/ready", timeout=5) as resp:
        assert resp.status == 200
    with urllib.request.urlopen(d.info.metrics_url, timeout=5) as resp:
        text = resp.read().decode()
    assert ('task_ingress_requests_total{action="task.create",outcome="accepted",reason=""} 1.0'
            in text)
    assert ('task_ingress_requests_total{action="task.cancel",outcome="rejected",'
            'reason="task_not_found"} 1.0' in text)
    assert "task_ingress_request_seconds_bucket" in text
    assert "task_ingress_in_flight 0.0" in text
    assert "task_ingress_runtime_queue 0.0" in text
    assert "task_ingress_runtime_admitted 0.0" in text


def test_signed_task_bodies_are_judged_like_the_in_process_wire(start_daemon: Start,
                                                                 nats_wire: Wire) -> None:
    d = start_daemon()
    a = Peer("peer-a", d.info.trust_file)
    assert _greet(nats_wire, a.greet())["applied"]
    unknown_key = _ask(nats_wire, a.task("task.create", {"title": "t", "owner": "x"}, "r-1"))
    wrong_type = _ask(nats_wire, a.task("task.create", {"title": 5}, "r-2"))
    too_long = _ask(nats_wire, a.task("task.create", {"title": "x" * 300}, "r-3"))
    bad_id = _ask(nats_wire, a.task("task.create", {"title": "t"}, "bad/id"))
    not_to_us = _ask(nats_wire, a.task("task.create", {"title": "t"}, "r-4", to="someone"))
    assert [unknown_key["reason"], wrong_type["reason"], too_long["reason"], bad_id["reason"],
            not_to_us["reason"]] == [Reason.INVALID_REQUEST, Reason.INVALID_REQUEST,
                                     Reason.VALIDATION_FAILED, Reason.INVALID_REQUEST,
                                     Reason.INVALID_REQUEST]
    assert len(d.runtime.audit()) == 5


def test_channel_option_narrows_the_subscriptions(start_daemon: Start, nats_wire: Wire) -> None:
    import pytest
    from nats.errors import NoRespondersError

    d = start_daemon(channels=["ops"])
    a = Peer("peer-a", d.info.trust_file)
    assert _greet(nats_wire, a.greet("ops"))["applied"]
    with pytest.raises(NoRespondersError):
        nats_wire.request(broadcast("dev"), a.greet("dev"), timeout=2)
