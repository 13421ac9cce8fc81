"""`serve` over a real nats-server, spoken to as AGH peers: verified (RFC 004, v1) and plain
(AGH v0, unverified). Every envelope the daemon publishes in these tests is checked against
AGH's rules by the `start_daemon` fixture (tests/nats/agh_rules.py)."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from task_ingress.messages import CreateTask
from task_ingress.messages.codec import decode_reply, encode_envelope
from task_ingress.messages.reasons import Action, Reason
from task_ingress.runtime.eventloop import EVENT_LOOP_ENV
from task_ingress.runtime.nats.compact import encode_compact, open_reply
from task_ingress.runtime.nats.identity import unb64url
from task_ingress.runtime.nats.policy import allow, disallow

from tests.conftest import FakeClock
from tests.nats.conftest import RunningDaemon
from tests.nats.nats_support import (
    DAEMON,
    V0,
    V1,
    WS,
    Peer,
    Wire,
    broadcast,
    encode,
    envelope,
    peer_subject,
    presence,
    result,
    sign_rfc004,
)

Start = Callable[..., RunningDaemon]
ULID = "01JDQ8Z6X4V7K2M9N3P5R8T1W0"


def _verified(d: RunningDaemon, nickname: str = "alice", allowed: bool = True) -> Peer:
    peer = Peer(nickname, daemon_handle=d.info.daemon_handle)
    if allowed:
        allow(d.info.trust_file, [peer.id])
    return peer


def _greet(wire: Wire, peer: Peer, **kw: Any) -> dict[str, Any]:
    channel = kw.get("channel", "ops")
    ws = kw.get("ws", WS)
    return presence(wire.ask(peer.broadcast(channel, ws), peer.greet(**kw)))


def _ask(wire: Wire, peer: Peer, env: dict[str, Any], channel: str = "ops",
         ws: str = WS) -> dict[str, Any]:
    return wire.ask(peer.daemon_subject(channel, ws), env)


def _wait_for(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


@pytest.mark.parametrize(("process_mode", "event_loop"), [
    ("pipeline", "uvloop"), ("inprocess", "uvloop"), ("inprocess", "asyncio")])
def test_a_verified_allowed_peer_writes_every_action_as_says_and_reads_receipts(
        start_daemon: Start, nats_wire: Wire, process_mode: str, event_loop: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # uvloop is serve's loop; the standard one is what runs where uvloop has no wheels.
    monkeypatch.setenv(EVENT_LOOP_ENV, event_loop)
    d = start_daemon(process_mode=process_mode)
    assert d.runtime.config.process_mode == process_mode
    assert type(d.daemon._loop).__module__.split(".")[0] == event_loop
    a = _verified(d)
    on_own_subject = nats_wire.collect(a.own_subject())
    assert _greet(nats_wire, a) == {"applied": True, "reason": None, "task_write": True,
                                    "trust": "verified"}
    receipt = _ask(nats_wire, a, a.task("task.create", {"title": "Ship it",
                                                         "network_channel": "ops"}, "r-1"))
    assert receipt["kind"] == "receipt" and receipt["from"] == d.info.daemon_handle
    assert receipt["to"] == a.id and receipt["reply_to"] == "r-1"
    assert receipt["work_id"] == "work_default" and receipt["surface"] == "direct"
    assert receipt["body"] == {"for_id": "r-1", "status": "accepted"}
    created = result(receipt)
    assert created["accepted"] is True and created["trust"] == "verified"
    task_id = created["task_id"]
    assert result(_ask(nats_wire, a, a.task("task.update", {"task_id": task_id,
                                                           "title": "v2"}, "r-2")))["accepted"]
    run = result(_ask(nats_wire, a, a.task("task.run.enqueue", {"task_id": task_id,
                                                               "idempotency_key": "k"}, "r-3")))
    assert run["accepted"] and run["run_id"]
    assert result(_ask(nats_wire, a, a.task("task.cancel", {"task_id": task_id},
                                            "r-4")))["accepted"]
    task = d.runtime.get_task(WS, task_id)
    assert task is not None and task.title == "v2" and task.status == "canceled"
    records = d.runtime.audit()
    assert [(r.action, r.outcome, r.peer_id) for r in records] == [
        (Action.CREATE, "accepted", a.id), (Action.UPDATE, "accepted", a.id),
        (Action.ENQUEUE, "accepted", a.id), (Action.CANCEL, "accepted", a.id)]
    assert {r.trust for r in records} == {"verified"}
    # AGH style: the receipts also went to the sender's own v1 peer subject.
    _wait_for(lambda: len(on_own_subject) == 4)
    assert [json.loads(m)["body"]["for_id"] for m in on_own_subject] == [
        "r-1", "r-2", "r-3", "r-4"]


def test_an_unverified_agh_peer_is_visible_but_cannot_write_and_its_greets_are_not_audited(
        start_daemon: Start, nats_wire: Wire) -> None:
    d = start_daemon()
    plain = Peer("coder.sess-abc", verified=False)
    for _ in range(3):  # AGH re-greets every 30 s: presence, never an audit row each
        answer = presence(nats_wire.ask(plain.broadcast(), plain.greet()))
        assert answer == {"applied": True, "reason": None, "task_write": False,
                          "trust": "unverified"}
    assert d.runtime.audit() == []
    assert d.daemon.metrics.greets.labels("applied", "unverified")._value.get() == 3
    receipt = _ask(nats_wire, plain, plain.task("task.create", {"title": "t"}, "r-1"))
    assert receipt["protocol"] == V0 and receipt["from"] == DAEMON
    assert receipt["body"]["status"] == "rejected"
    assert receipt["body"]["reason_code"] == "verification_failed"
    assert receipt["body"]["detail"] == Reason.CAPABILITY_DENIED
    assert result(receipt)["trust"] == "unverified"
    [record] = d.runtime.audit()
    assert (record.peer_id, record.reason, record.task_id, record.trust) == (
        "coder.sess-abc", Reason.CAPABILITY_DENIED, None, "unverified")


def test_a_verified_peer_outside_the_policy_is_denied_until_trust_add_without_restart(
        start_daemon: Start, nats_wire: Wire) -> None:
    d = start_daemon()
    a = _verified(d, allowed=False)
    assert _greet(nats_wire, a)["task_write"] is False
    denied = result(_ask(nats_wire, a, a.task("task.create", {"title": "t"}, "r-1")))
    assert denied["reason"] == Reason.CAPABILITY_DENIED and denied["trust"] == "verified"
    allow(d.info.trust_file, [a.id])  # what `task-ingress trust add` does
    assert _greet(nats_wire, a)["task_write"] is True  # the grant rides the next greet
    assert result(_ask(nats_wire, a, a.task("task.create", {"title": "t"}, "r-2")))[
        "accepted"]
    disallow(d.info.trust_file, [a.id])  # `trust remove`: effective at once
    revoked = result(_ask(nats_wire, a, a.task("task.create", {"title": "t"}, "r-3")))
    assert revoked["reason"] == Reason.CAPABILITY_DENIED
    assert [r.reason for r in d.runtime.audit()] == [
        Reason.CAPABILITY_DENIED, None, Reason.CAPABILITY_DENIED]


def test_trust_remove_denies_the_next_compact_request_of_a_granted_peer(
        start_daemon: Start, nats_wire: Wire) -> None:
    # The compact form reads the trust policy once per message, when it is admitted; that
    # read must still decide the revocation of a peer whose greet was granted task.write.
    d = start_daemon()
    a = _verified(d)
    assert _greet(nats_wire, a)["task_write"] is True
    public_key = unb64url(d.info.daemon_public_key)
    assert public_key is not None

    def compact(request_id: str) -> dict[str, Any]:
        data = encode_compact(encode_envelope(CreateTask(title="t"), request_id),
                              workspace=WS, channel="ops", sender=a.id,
                              to=d.info.daemon_handle, ts=int(time.time()), key=a.key)
        raw = nats_wire.request(a.daemon_subject(), data)
        return decode_reply(open_reply(raw, request=data, public_key=public_key))

    assert compact("c-1")["accepted"] is True
    disallow(d.info.trust_file, [a.id])  # `trust remove`: the very next request is denied
    denied = compact("c-2")
    assert denied["accepted"] is False and denied["reason"] == Reason.CAPABILITY_DENIED
    assert [r.reason for r in d.runtime.audit()] == [None, Reason.CAPABILITY_DENIED]


def test_the_daemon_greets_on_join_and_every_interval_and_answers_whois(
        start_daemon: Start, nats_wire: Wire) -> None:
    seen = nats_wire.collect("agh.network.*.default.ops.broadcast")
    d = start_daemon(channels=["ops"], greet_interval=0.3)
    greets = lambda: [json.loads(m) for m in seen  # noqa: E731
                      if json.loads(m).get("from") in (DAEMON, d.info.daemon_handle)]
    _wait_for(lambda: len(greets()) >= 4)  # at join and again a greet_interval later
    by_protocol = {g["protocol"]: g for g in greets()}
    assert by_protocol[V0]["body"]["peer_card"]["peer_id"] == DAEMON
    assert by_protocol[V1]["body"]["peer_card"]["peer_id"] == d.info.daemon_handle
    assert "task.create" in by_protocol[V0]["body"]["peer_card"]["capabilities"]
    plain = Peer("asker", verified=False)
    answers = nats_wire.collect(plain.own_subject())
    nats_wire.publish(plain.daemon_subject(), encode(plain.whois(DAEMON)))
    nats_wire.publish(plain.broadcast(), encode(plain.whois(None, "task.create")))
    nats_wire.publish(plain.broadcast(), encode(plain.whois(None, "someone-else")))
    verified = _verified(d, "v-asker")
    v_answers = nats_wire.collect(verified.own_subject())
    nats_wire.publish(verified.daemon_subject(), encode(verified.whois(d.info.daemon_handle)))
    _wait_for(lambda: len(answers) == 2 and len(v_answers) == 1)
    time.sleep(0.2)
    assert len(answers) == 2  # the non-matching query got nothing
    for raw in answers:
        reply = json.loads(raw)
        assert reply["kind"] == "whois" and reply["body"]["type"] == "response"
        assert reply["to"] == "asker" and reply["body"]["peer_card"]["peer_id"] == DAEMON
    assert json.loads(v_answers[0])["from"] == d.info.daemon_handle
    assert d.runtime.audit() == []


def test_a_forger_can_neither_greet_nor_write_nor_strip_capability_as_another_peer(
        start_daemon: Start, nats_wire: Wire) -> None:
    d = start_daemon()
    a, b = _verified(d, "alice"), _verified(d, "bob")
    assert _greet(nats_wire, a)["task_write"] is True
    # B signs a greet that claims A's handle (fingerprint mismatch) or strips the proof.
    forged = presence(nats_wire.ask(a.broadcast(), b.greet((), sender=a.id)))
    stripped = presence(nats_wire.ask(a.broadcast(), b.greet((), sender=a.id, signed=False)))
    assert forged["applied"] is False and forged["trust"] == "rejected"
    assert stripped["applied"] is False and stripped["trust"] == "rejected"
    write = _ask(nats_wire, a, b.task("task.create", {"title": "evil"}, "r-x", sender=a.id))
    assert result(write)["reason"] == Reason.INVALID_REQUEST
    assert result(write)["trust"] == "rejected"
    ok = result(_ask(nats_wire, a, a.task("task.create", {"title": "mine"}, "r-1")))
    assert ok["accepted"]  # A kept its card and its task.write
    assert [(r.request_id, r.reason, r.trust) for r in d.runtime.audit()] == [
        ("r-x", Reason.INVALID_REQUEST, "rejected"), ("r-1", None, "verified")]


def test_tampered_moved_and_stripped_task_envelopes_are_rejected_and_audited(
        start_daemon: Start, nats_wire: Wire) -> None:
    d = start_daemon()
    a = _verified(d)
    assert _greet(nats_wire, a)["applied"]
    signed = a.task("task.create", {"title": "signed"}, "r-1")
    tampered = {**signed, "ext": {"dev.task-ingress.request": {"title": "tampered"}}}
    stripped = {**signed, "proof": None}
    moved = {**signed, "channel": "dev"}
    assert result(_ask(nats_wire, a, tampered))["trust"] == "rejected"
    assert result(_ask(nats_wire, a, stripped))["trust"] == "rejected"
    assert result(_ask(nats_wire, a, moved, "dev"))["trust"] == "rejected"
    records = d.runtime.audit()
    assert [r.reason for r in records] == [Reason.INVALID_REQUEST] * 3
    assert all(r.task_id is None for r in records)


def test_garbage_is_audited_without_an_answer_and_the_daemon_keeps_serving(
        start_daemon: Start, nats_wire: Wire) -> None:
    d = start_daemon()
    garbage = [b"\x00\xff\xfe", b"{not json", b"{}", b'{"protocol": 5}',
               b"{" + b"[" * 100_000, b'{"a": NaN}', encode(envelope("nope", "x", {}))]
    for data in garbage:
        nats_wire.publish(broadcast(protocol=V0), data)
        nats_wire.publish(peer_subject(DAEMON, protocol=V0), data)
    _wait_for(lambda: len(d.runtime.audit()) == 2 * len(garbage))
    assert all(r.reason == Reason.INVALID_REQUEST for r in d.runtime.audit())
    a = _verified(d)
    assert _greet(nats_wire, a)["applied"]
    assert result(_ask(nats_wire, a, a.task("task.create", {"title": "t"}, "r-1")))[
        "accepted"]


def test_a_repeated_id_gets_the_recorded_outcome_and_a_captured_refusal_never_writes(
        start_daemon: Start, nats_wire: Wire) -> None:
    d = start_daemon()
    a = _verified(d)
    refused = a.task("task.create", {"title": "early"}, "r-early")  # before the greet
    first = _ask(nats_wire, a, refused)
    assert result(first)["reason"] == Reason.PEER_NOT_FOUND
    assert _greet(nats_wire, a)["task_write"] is True
    again = _ask(nats_wire, a, refused)  # the same signed envelope, replayed
    assert again["body"]["status"] == "duplicate" and result(again)["accepted"] is False
    assert result(again)["reason"] == Reason.PEER_NOT_FOUND
    ok = a.task("task.create", {"title": "once"}, "r-1")
    one, two = _ask(nats_wire, a, ok), _ask(nats_wire, a, ok)
    assert result(one)["accepted"] and result(two)["accepted"]
    assert two["body"]["status"] == "duplicate" and result(two)["replay"] is True
    assert result(two)["task_id"] == result(one)["task_id"]
    records = d.runtime.audit()
    assert [(r.request_id, r.reason, r.replay) for r in records] == [
        ("r-early", Reason.PEER_NOT_FOUND, False), ("r-early", Reason.PEER_NOT_FOUND, False),
        ("r-1", None, False), ("r-1", None, True)]


def test_a_replayed_greet_id_does_not_refresh_presence_and_peers_expire(
        start_daemon: Start, nats_wire: Wire, clock: FakeClock) -> None:
    d = start_daemon(clock=clock)
    a = _verified(d)
    greet = a.greet(env_id="g-1")
    assert presence(nats_wire.ask(a.broadcast(), greet))["applied"]
    clock.advance(59.0)  # one greet interval of 30 s missed, the second not yet
    assert result(_ask(nats_wire, a, a.task("task.create", {"title": "t"}, "r-0")))[
        "accepted"]
    clock.advance(1.0)  # expired: 2 x 30 s without a greet
    assert presence(nats_wire.ask(a.broadcast(), greet))["reason"] == "duplicate"
    late = result(_ask(nats_wire, a, a.task("task.create", {"title": "t"}, "r-1")))
    assert late["reason"] == Reason.PEER_NOT_FOUND
    assert _greet(nats_wire, a, env_id="g-2")["applied"]


def test_an_agh_greet_in_a_ulid_workspace_is_presence_and_its_write_is_denied(
        start_daemon: Start, nats_wire: Wire) -> None:
    """A greet as AGH's manager builds it (DefaultPeerCard, peer.go:123 + router.go:207),
    in a real AGH workspace ID (an uppercase ULID)."""
    d = start_daemon(workspace=ULID)
    agh_greet = {
        "protocol": "agh-network/v0", "id": "msg_01JDQ90ABCDEF", "workspace_id": ULID,
        "kind": "greet", "channel": "builders", "from": "coder.sess-abc",
        "ts": int(time.time()),
        "body": {"peer_card": {"peer_id": "coder.sess-abc", "display_name": "coder",
                               "profiles_supported": ["agh-network/v0"],
                               "capabilities": ["workspace.patch.apply"],
                               "artifacts_supported": ["capability"],
                               "trust_modes_supported": []},
                 "summary": "coder joined"},
        "proof": None}
    assert presence(nats_wire.ask(broadcast("builders", ULID, V0), agh_greet))["applied"]
    plain = Peer("coder.sess-abc", verified=False)
    receipt = nats_wire.ask(peer_subject(DAEMON, "builders", ULID, V0),
                            plain.task("task.create", {"title": "t"}, "r-1", "builders",
                                       ws=ULID))
    assert result(receipt)["reason"] == Reason.CAPABILITY_DENIED
    [record] = d.runtime.audit()
    assert (record.workspace, record.channel, record.peer_id) == (
        ULID, "builders", "coder.sess-abc")


def test_valid_agh_traffic_of_other_kinds_is_ignored_not_audited(
        start_daemon: Start, nats_wire: Wire) -> None:
    d = start_daemon()
    plain = Peer("chatty", verified=False)
    say = envelope("say", "chatty", {"text": "hello"}, protocol=V0, surface="thread",
                   thread_id="thread_general")
    nats_wire.publish(broadcast(protocol=V0), encode(say))
    assert presence(nats_wire.ask(plain.broadcast(), plain.greet(())))["applied"]
    assert d.runtime.audit() == []
    assert d.daemon.metrics.ignored.labels("say")._value.get() == 1


def test_task_says_are_judged_like_the_in_process_wire(start_daemon: Start,
                                                       nats_wire: Wire) -> None:
    d = start_daemon()
    a = _verified(d)
    assert _greet(nats_wire, a)["applied"]

    def reason(env: dict[str, Any]) -> Any:
        return result(_ask(nats_wire, a, env))["reason"]

    assert reason(a.task("task.create", {"title": "t", "owner": "x"}, "r-1")) == (
        Reason.INVALID_REQUEST)
    assert reason(a.task("task.create", {"title": 5}, "r-2")) == Reason.INVALID_REQUEST
    assert reason(a.task("task.create", {"title": "x" * 300}, "r-3")) == (
        Reason.VALIDATION_FAILED)
    assert reason(a.task("task.create", {"title": "t"}, "bad/id")) == Reason.INVALID_REQUEST
    assert reason(a.task("task.create", {"title": "t"}, "r-4", work_id=None)) == (
        Reason.INVALID_REQUEST)
    assert reason(a.task("task.create", {"title": "t"}, "r-5",
                         direct_id="direct_" + "0" * 32)) == Reason.INVALID_REQUEST
    assert reason(a.task("task.bogus", {"title": "t"}, "r-6")) == Reason.INVALID_REQUEST
    assert len(d.runtime.audit()) == 7


def test_metrics_count_requests_by_trust_and_greets_by_result(start_daemon: Start,
                                                              nats_wire: Wire) -> None:
    from task_ingress.runtime.ports import free_port

    d = start_daemon(metrics_port=free_port())
    a = _verified(d)
    assert _greet(nats_wire, a)["applied"]
    _ask(nats_wire, a, a.task("task.create", {"title": "t"}, "r-1"))
    _ask(nats_wire, a, a.task("task.cancel", {"task_id": "nope"}, "r-2"))
    base = d.info.metrics_url.rsplit("/", 1)[0]
    with urllib.request.urlopen(base + "/ready", timeout=5) as resp:
        assert resp.status == 200
    with urllib.request.urlopen(d.info.metrics_url, timeout=5) as resp:
        text = resp.read().decode()
    assert ('task_ingress_requests_total{action="task.create",outcome="accepted",reason=""} 1.0'
            in text)
    assert ('task_ingress_requests_total{action="task.cancel",outcome="rejected",'
            'reason="task_not_found"} 1.0' in text)
    assert 'task_ingress_requests_by_trust_total{outcome="accepted",trust="verified"} 1.0' in text
    assert 'task_ingress_greets_total{result="applied",trust="verified"} 1.0' in text
    assert "task_ingress_unsendable_envelopes_total 0.0" in text


def test_channel_option_narrows_the_subscriptions(start_daemon: Start, nats_wire: Wire) -> None:
    from nats.errors import NoRespondersError, TimeoutError

    d = start_daemon(channels=["ops"])
    a = _verified(d)
    assert _greet(nats_wire, a, channel="ops")["applied"]
    # Only the test's wire tap listens on dev: no answer comes.
    with pytest.raises((NoRespondersError, TimeoutError)):
        nats_wire.request(a.broadcast("dev"), encode(a.greet(channel="dev")), timeout=1)


def test_an_rfc004_signature_over_a_copy_with_extra_fields_does_not_verify(
        start_daemon: Start, nats_wire: Wire) -> None:
    d = start_daemon()
    a = _verified(d)
    env = a.task("task.create", {"title": "t"}, "r-1")
    unsigned = {k: v for k, v in env.items() if k != "proof"}
    resigned = sign_rfc004({**unsigned, "expires_at": None}, a.key)  # what a verifier
    injected = {**resigned, "expires_at": None}
    del injected["expires_at"]  # that injected defaults would have computed differently
    assert result(_ask(nats_wire, a, injected))["trust"] == "rejected"
    assert _greet(nats_wire, a)["applied"]
    assert result(_ask(nats_wire, a, resigned))["accepted"]


def test_a_peer_following_only_aghs_rfcs_finds_the_daemon_writes_and_reads_its_receipt(
        start_daemon: Start, nats_wire: Wire) -> None:
    """No ready file, no NATS request/reply: discovery by whois on the broadcast subject,
    presence by greet, the write as a say, the receipt on the peer's own subject."""
    d = start_daemon()
    peer = Peer("rfc-only")
    allow(d.info.trust_file, [peer.id])  # the operator's decision, out of band
    inbox = nats_wire.collect(peer.own_subject())
    nats_wire.publish(broadcast(), encode(peer.whois(None, "task.create")))
    _wait_for(lambda: len(inbox) == 1)
    card = json.loads(inbox[0])["body"]["peer_card"]
    daemon = card["peer_id"]
    assert daemon == d.info.daemon_handle and "task.create" in card["capabilities"]
    nats_wire.publish(broadcast(), encode(peer.greet()))
    peer.daemon = daemon
    for attempt in range(50):  # the greet and the say travel on two subjects: retry as AGH
        rid = f"r-{attempt}"
        nats_wire.publish(peer_subject(daemon), encode(peer.task(
            "task.create", {"title": "found you"}, rid, to=daemon)))
        _wait_for(lambda rid=rid: any(json.loads(m).get("reply_to") == rid for m in inbox))
        receipt = next(json.loads(m) for m in inbox if json.loads(m).get("reply_to") == rid)
        if result(receipt)["reason"] != Reason.PEER_NOT_FOUND:
            break
    assert receipt["body"]["status"] == "accepted" and result(receipt)["task_id"]
