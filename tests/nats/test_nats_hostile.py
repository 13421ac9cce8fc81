"""Issue 13: a hostile network against `serve`, over a real nats-server. Each test is one
attack, named by what must hold; the floods at full size are in test_nats_floods.py."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import msgpack
import pytest
from task_ingress.messages import CreateTask
from task_ingress.messages.codec import decode_reply, encode_envelope, encode_reply
from task_ingress.messages.outcomes import Outcome
from task_ingress.messages.reasons import Action, Reason
from task_ingress.runtime.nats import handler as handler_module
from task_ingress.runtime.nats import taskmap
from task_ingress.runtime.nats.client import (
    DaemonAddress,
    Identity,
    LoopThread,
    PeerClient,
    connect,
)
from task_ingress.runtime.nats.compact import encode_compact
from task_ingress.runtime.nats.handler import reply_target_allowed
from task_ingress.runtime.nats.identity import unb64url
from task_ingress.runtime.nats.policy import allow
from task_ingress.testing import HOLD

from tests.conftest import FakeClock
from tests.nats.conftest import RunningDaemon
from tests.nats.nats_support import (
    V0,
    WS,
    Peer,
    Wire,
    encode,
    envelope,
    peer_subject,
    presence,
    result,
)
from tests.race.race_harness import RaceHarness

Start = Callable[..., RunningDaemon]


def _verified(d: RunningDaemon, nickname: str, allowed: bool = True) -> Peer:
    peer = Peer(nickname, daemon_handle=d.info.daemon_handle)
    if allowed:
        allow(d.info.trust_file, [peer.id])
    return peer


def _greet(wire: Wire, peer: Peer, **kw: Any) -> dict[str, Any]:
    return presence(wire.ask(peer.broadcast(), peer.greet(**kw)))


def _ask(wire: Wire, peer: Peer, env: dict[str, Any]) -> dict[str, Any]:
    return wire.ask(peer.daemon_subject(), env)


def _wait_for(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def _rows(d: RunningDaemon) -> list[Any]:
    return d.runtime.audit()


def _quiet(wire: Wire) -> None:
    """Everything published so far has been delivered to every subscriber."""
    wire._run(wire.nc.flush())
    time.sleep(0.2)  # the daemon answers after its audit commit: let a stray answer land


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def _signed_raw(peer: Peer, env: dict[str, Any], extra: bytes) -> bytes:
    """`env` signed by `peer` after a top-level member `x-extra` (raw JSON) was added."""
    unsigned = json.loads(json.dumps(env)) | {"proof": None}
    unsigned["x-extra"] = json.loads(extra)
    return json.dumps(peer.finish(unsigned)).encode()


# ---- A: unproven traffic gets work only within a budget ---------------------------------
def test_an_unproven_burst_beyond_the_budget_is_dropped_and_audited_in_one_record_per_subject(
        start_daemon: Start, nats_wire: Wire) -> None:
    # The report is the one written at shutdown: a periodic one starts its interval at the
    # first drop, and a loaded machine can spread a burst over two (CI saw 20 + 5). The
    # periodic reports are summed in the slow-consumer test below.
    d = start_daemon(unproven_rate=0, unproven_burst=5, drop_report_interval=3600)
    mallory = Peer("mallory", verified=False)
    for i in range(30):  # each would be one audited rejection: capability_denied / peer_not_found
        nats_wire.publish(mallory.daemon_subject(),
                          encode(mallory.task("task.create", {"title": "t"}, f"m-{i}")))
    dropped = d.daemon.metrics.dropped.labels("unproven")
    _wait_for(lambda: dropped._value.get() == 25)
    _wait_for(lambda: len(_rows(d)) == 5)  # the five the budget let through, judged
    # Proven traffic never spends the budget: an allowed peer is served as before.
    a = _verified(d, "alice")
    assert _greet(nats_wire, a)["task_write"] is True
    assert result(_ask(nats_wire, a, a.task("task.create", {"title": "t"}, "r-1")))["accepted"]
    assert dropped._value.get() == 25
    runtime = d.runtime
    d.stop()
    from task_ingress.runtime.audit.query import AuditFilter, query_records
    from task_ingress.runtime.audit.read import open_readonly

    with open_readonly(runtime.store_path) as conn:
        rows = list(query_records(conn, AuditFilter()))
    judged = [r for r in rows if r.peer_id == "mallory"]
    assert len(judged) == 5 and not any(r.request_id.startswith("dropped:") for r in judged)
    [report] = [r for r in rows if r.request_id.startswith("dropped:")]
    assert report.request_id == "dropped:unproven:v0.peer:25"
    assert (report.peer_id, report.channel, report.reason, report.action, report.trust) == (
        "", "ops", Reason.OVERLOADED, Action.UNKNOWN, "unverified")
    assert Reason.TASK_INGRESS_UNAVAILABLE not in {r.reason for r in rows}
    assert [r.request_id for r in rows if r.peer_id == a.id] == ["r-1"]


def test_drops_not_yet_reported_are_audited_when_the_daemon_stops(start_daemon: Start,
                                                                  nats_wire: Wire) -> None:
    d = start_daemon(unproven_rate=0, unproven_burst=1, drop_report_interval=3600)
    mallory = Peer("mallory", verified=False)
    for i in range(4):
        nats_wire.publish(mallory.daemon_subject(),
                          encode(mallory.task("task.create", {"title": "t"}, f"m-{i}")))
    _wait_for(lambda: d.daemon.metrics.dropped.labels("unproven")._value.get() == 3)
    runtime = d.runtime
    d.stop()
    from task_ingress.runtime.audit.query import AuditFilter, query_records
    from task_ingress.runtime.audit.read import open_readonly

    with open_readonly(runtime.store_path) as conn:
        ids = [r.request_id for r in query_records(conn, AuditFilter())]
    assert ids == ["m-0", "dropped:unproven:v0.peer:3"]


def _dropped(record: Any) -> int:
    if not record.request_id.startswith("dropped:"):
        return 0
    return int(record.request_id.rsplit(":", 1)[1])


def test_a_busy_daemon_stops_taking_messages_and_nats_drops_the_excess_counted_and_audited(
        start_daemon: Start, nats_wire: Wire) -> None:
    """One slot, held by a write stuck before the store: the daemon takes no more messages,
    so NATS's per-subscription pending limit fills and the client drops the rest (slow
    consumer), each counted and reported, none holding a task of its own."""
    from task_ingress.runtime.nats.limits import PENDING_MSGS_LIMIT

    d = start_daemon(max_in_flight_messages=1, unproven_rate=0, unproven_burst=1,
                     drop_report_interval=0.2, runtime_config={"store_proxy_class": HOLD})
    a = _verified(d, "alice")
    assert _greet(nats_wire, a)["task_write"] is True
    hold = RaceHarness(d.runtime)
    hold.hold()
    answers = nats_wire.collect(a.own_subject())
    nats_wire.publish(a.daemon_subject(), encode(a.task("task.create", {"title": "t"}, "r-1")))
    _wait_for(lambda: hold.held() == ("r-1",))
    flood = PENDING_MSGS_LIMIT + 500

    async def junk() -> None:
        for i in range(flood):
            await nats_wire.nc.publish(a.daemon_subject(), b"junk %d" % i)
        await nats_wire.nc.flush()

    nats_wire._run(junk(), timeout=60)
    _quiet(nats_wire)
    assert len(d.daemon._tasks) <= 3  # the greeter, the held write, at most one more
    slow = d.daemon.metrics.dropped.labels("slow-consumer")
    _wait_for(lambda: slow._value.get() >= flood - PENDING_MSGS_LIMIT - 1)
    assert d.daemon._handler is not None and d.daemon._handler.peak_handling == 1
    hold.release()
    _wait_for(lambda: len(answers) == 1)
    assert json.loads(answers[0])["body"]["status"] == "accepted"
    # Every junk message is accounted for: one judged (the budget), the rest in reports.
    _wait_for(lambda: sum(_dropped(r) for r in _rows(d)) == flood - 1)
    rows = _rows(d)
    assert [r.reason for r in rows if r.request_id == ""] == [Reason.INVALID_REQUEST]
    by_cause: dict[str, int] = {}
    for r in rows:
        if r.request_id.startswith("dropped:"):
            cause = r.request_id.split(":")[1]
            by_cause[cause] = by_cause.get(cause, 0) + _dropped(r)
    assert by_cause["slow-consumer"] == slow._value.get() > 0
    assert by_cause["unproven"] == flood - 1 - by_cause["slow-consumer"]


# ---- B: nesting is bounded when decoding; a bug is still audited -----------------------
def test_json_nested_deeper_than_32_levels_is_refused_and_audited_before_any_check(
        start_daemon: Start, nats_wire: Wire) -> None:
    d = start_daemon()
    a = _verified(d, "alice")
    assert _greet(nats_wire, a)["task_write"] is True
    ok = _signed_raw(a, a.task("task.create", {"title": "t"}, "r-31"), _nested(31))
    assert result(json.loads(nats_wire.request(a.daemon_subject(), ok)))["accepted"]
    # 32 inside the envelope is 33 levels: refused although properly signed.
    nats_wire.publish(a.daemon_subject(), _signed_raw(
        a, a.task("task.create", {"title": "t"}, "r-32"), _nested(32)))
    for depth in (968, 5000):  # beyond what a signer here can canonicalize: spliced in
        deep = _signed_raw(a, a.task("task.create", {"title": "t"}, f"r-{depth}"), b"[]")
        deep = deep.replace(b'"x-extra": []', b'"x-extra": ' + _nested(depth))
        assert _nested(depth) in deep
        nats_wire.publish(a.daemon_subject(), deep)
    _wait_for(lambda: len(_rows(d)) == 4)
    refused = _rows(d)[1:]
    assert [(r.reason, r.request_id, r.task_id) for r in refused] == [
        (Reason.INVALID_REQUEST, "", None)] * 3


def test_a_bug_while_judging_a_message_is_still_audited_as_invalid_request(
        start_daemon: Start, nats_wire: Wire, monkeypatch: pytest.MonkeyPatch) -> None:
    d = start_daemon()
    a = _verified(d, "alice")
    assert _greet(nats_wire, a)["task_write"] is True

    def broken(*_args: Any) -> Any:
        raise RecursionError("a bug deep in the judging")

    monkeypatch.setattr(handler_module.taskmap, "read_task_say", broken)
    nats_wire.publish(a.daemon_subject(), encode(a.task("task.create", {"title": "t"}, "r-1")))
    _wait_for(lambda: len(_rows(d)) == 1)
    [record] = _rows(d)
    assert (record.reason, record.action, record.task_id) == (
        Reason.INVALID_REQUEST, Action.UNKNOWN, None)


# ---- C: answers are never reflected onto another peer's subject ------------------------
def test_answers_go_to_no_agh_subject_and_to_unproven_senders_only_on_an_inbox(
        start_daemon: Start, nats_wire: Wire) -> None:
    d = start_daemon()
    victim, forger = _verified(d, "victim"), _verified(d, "forger", allowed=False)
    assert _greet(nats_wire, victim)["task_write"] is True
    mallory = Peer("mallory", verified=False)
    targets = (victim.own_subject(), peer_subject("victim-v0", protocol=V0))
    hit = {subject: nats_wire.collect(subject) for subject in targets}
    for n, reply in enumerate(targets):  # the NATS reply subject aimed at a victim
        for subject, env in (
                (victim.daemon_subject(), forger.task("task.create", {"title": "x"},
                                                      f"forged-{n}", sender=victim.id)),
                (mallory.daemon_subject(), mallory.task("task.create", {"title": "x"},
                                                        f"mallory-{n}")),
                (mallory.broadcast(), mallory.greet((), env_id=f"g-{n}")),
                (victim.daemon_subject(), victim.task("task.create", {"title": "x"},
                                                      f"own-{n}"))):
            _publish_with_reply(nats_wire, subject, encode(env), reply)
    _wait_for(lambda: len(_rows(d)) == 6)
    _quiet(nats_wire)
    assert {s: [json.loads(m)["reply_to"] for m in got] for s, got in hit.items()} == {
        victim.own_subject(): ["own-0", "own-1"],  # its own receipts, AGH style: once each
        peer_subject("victim-v0", protocol=V0): []}
    assert d.daemon.metrics.replies_refused._value.get() == 8
    # An unproven sender still gets its answer on a NATS inbox, naming what it answers.
    data = encode(mallory.task("task.create", {"title": "x"}, "mallory-inbox"))
    answer = json.loads(nats_wire.request(mallory.daemon_subject(), data))
    assert result(answer)["answers"] == taskmap.answers(data)


def _publish_with_reply(wire: Wire, subject: str, data: bytes, reply: str) -> None:
    async def go() -> None:
        await wire.nc.publish(subject, data, reply=reply)
        await wire.nc.flush()

    wire._run(go())


@contextmanager
def _client(d: RunningDaemon) -> Iterator[tuple[LoopThread, PeerClient]]:
    loop = LoopThread("test-peer-client")
    address = DaemonAddress.from_ready_file(d.daemon.settings.ready_file)
    try:
        nc = loop.call(connect(address, "victim"), 15)
        yield loop, PeerClient(nc, address, timeout=20)
        loop.call(nc.close(), 10)
    finally:
        loop.stop()


def _sniff(wire: Wire, subject: str, react: Callable[[Any], Any]) -> None:
    async def cb(msg: Any) -> None:
        if msg.reply:
            await react(msg)

    async def go() -> None:
        await wire.nc.subscribe(subject, cb=cb)
        await wire.nc.flush()

    wire._run(go())


def test_a_forged_answer_raced_onto_a_victims_inbox_is_ignored_and_the_victim_gets_its_own(
        start_daemon: Start, nats_wire: Wire) -> None:
    d = start_daemon(runtime_config={"store_proxy_class": HOLD})
    victim, forger = _verified(d, "victim"), _verified(d, "forger")
    me = Identity(victim.key, victim.id)
    forged_answers = nats_wire.collect("_INBOX.>")

    async def race(msg: Any) -> None:  # what a sniffer on the daemon's subject can do
        env = json.loads(msg.data)
        if env.get("from") == victim.id and env["id"] == "r-1":
            copy = forger.task("task.create", {"title": "x"}, "r-1", sender=victim.id)
            await nats_wire.nc.publish(msg.subject, encode(copy), reply=msg.reply)

    with _client(d) as (loop, client), ThreadPoolExecutor(1) as pool:
        assert loop.call(client.greet(me, WS, "ops", ["task.write"]), 20)["task_write"]
        _sniff(nats_wire, victim.daemon_subject(), race)
        hold = RaceHarness(d.runtime)
        hold.hold()
        call: Future[Any] = pool.submit(loop.call, client.request(
            me, WS, "ops", CreateTask(title="mine"), "r-1"), 30)
        _wait_for(lambda: any(b'"trust":"rejected"' in m for m in forged_answers))
        _wait_for(lambda: hold.held() == ("r-1",))
        hold.release()
        outcome = call.result(30)
    assert outcome["accepted"] is True and outcome["task_id"]
    assert d.runtime.get_task(WS, outcome["task_id"]) is not None
    assert client.ignored >= 1


# ---- D: compact replies are signed and checked ------------------------------------------
def test_compact_replies_are_signed_and_a_client_ignores_an_injected_acceptance(
        start_daemon: Start, nats_wire: Wire) -> None:
    d = start_daemon(runtime_config={"store_proxy_class": HOLD})
    victim = _verified(d, "victim")
    me = Identity(victim.key, victim.id)
    fake = encode_reply(Outcome(request_id="c-1", action=Action.CREATE, accepted=True,
                                task_id="task_injected"))

    injected: list[str] = []

    async def inject(msg: Any) -> None:
        if msg.data[:1] != b"{" and b"c-1" in msg.data:  # answer it first, as anyone can
            await nats_wire.nc.publish(msg.reply, fake)
            await nats_wire.nc.flush()
            injected.append(msg.reply)

    inner = encode_envelope(CreateTask(title="compact"), "c-1")
    with _client(d) as (loop, client), ThreadPoolExecutor(1) as pool:
        assert loop.call(client.greet(me, WS, "ops", ["task.write"]), 20)["task_write"]
        _sniff(nats_wire, victim.daemon_subject(), inject)
        hold = RaceHarness(d.runtime)
        hold.hold()
        call: Future[Any] = pool.submit(loop.call, client.deliver_compact(
            inner, workspace=WS, channel="ops", peer_id=victim.id, me=me,
            ts=int(time.time())), 30)
        _wait_for(lambda: hold.held() == ("c-1",) and bool(injected))
        hold.release()
        reply = decode_reply(call.result(30))
    assert reply["accepted"] is True and reply["task_id"] != "task_injected"
    assert d.runtime.get_task(WS, reply["task_id"]) is not None
    assert client.ignored >= 1
    # The raw reply is the daemon's signature over exactly the request's bytes.
    from task_ingress.runtime.nats.compact import open_reply

    data = encode_compact(encode_envelope(CreateTask(title="t"), "c-2"), workspace=WS,
                          channel="ops", sender=victim.id, to=d.info.daemon_handle,
                          ts=int(time.time()), key=victim.key)
    raw = nats_wire.request(victim.daemon_subject(), data)
    public_key = unb64url(d.info.daemon_public_key)
    assert public_key is not None
    assert decode_reply(open_reply(raw, request=data, public_key=public_key))["accepted"]
    assert msgpack.unpackb(raw)["answers"] == hashlib.sha256(data).digest()


# ---- E: a judged id is final within its window, however full the window ----------------
def test_a_full_judged_id_window_refuses_new_ids_rather_than_forget_a_refusal(
        start_daemon: Start, nats_wire: Wire, clock: FakeClock) -> None:
    d = start_daemon(clock=clock, replay_capacity=5, replay_per_peer=3)
    victim, flooder, second = (_verified(d, "victim"), _verified(d, "flooder"),
                               _verified(d, "second"))
    early = victim.task("task.create", {"title": "early"}, "r-early")  # before its greet
    assert result(_ask(nats_wire, victim, early))["reason"] == Reason.PEER_NOT_FOUND
    assert _greet(nats_wire, flooder)["task_write"] and _greet(nats_wire, second)["task_write"]
    flood = [result(_ask(nats_wire, flooder, flooder.task("task.create", {"title": "f"},
                                                          f"f-{i}")))["reason"]
             for i in range(5)]
    assert flood == [None, None, None, Reason.OVERLOADED, Reason.OVERLOADED]  # per peer: 3
    assert result(_ask(nats_wire, second, second.task("task.create", {"title": "s"}, "s-1")))[
        "accepted"]  # the fifth entry; now the window is full
    assert _greet(nats_wire, victim)["task_write"] is True
    replayed = _ask(nats_wire, victim, early)
    assert replayed["body"]["status"] == "duplicate"
    assert result(replayed)["reason"] == Reason.PEER_NOT_FOUND  # never a write
    late = victim.task("task.create", {"title": "late"}, "r-late")
    assert result(_ask(nats_wire, victim, late))["reason"] == Reason.OVERLOADED
    clock.advance(303.0)  # the window's entries expire (ts + 300 s); its refusals do not
    assert _greet(nats_wire, victim)["task_write"] is True
    again = _ask(nats_wire, victim, late)
    assert again["body"]["status"] == "duplicate"
    assert result(again)["reason"] == Reason.OVERLOADED
    assert result(_ask(nats_wire, victim, victim.task("task.create", {"title": "new"},
                                                      "r-new")))["accepted"]
    assert [r.request_id for r in _rows(d) if r.outcome == "accepted"] == [
        "f-0", "f-1", "f-2", "s-1", "r-new"]


def test_a_refusal_dated_ahead_stays_final_for_as_long_as_its_ts_keeps_it_fresh(
        start_daemon: Start, nats_wire: Wire, clock: FakeClock) -> None:
    """AGH accepts a ts up to 300 s ahead, so such an envelope is fresh for up to 600 s
    after it was judged: its id is remembered that long, not 300 s."""
    d = start_daemon(clock=clock)
    a = _verified(d, "alice")
    ahead = a.finish({**a.task("task.create", {"title": "t"}, "r-ahead"), "proof": None,
                      "ts": int(time.time()) + 290})
    assert result(_ask(nats_wire, a, ahead))["reason"] == Reason.PEER_NOT_FOUND
    clock.advance(301.0)
    assert _greet(nats_wire, a)["task_write"] is True
    again = _ask(nats_wire, a, ahead)
    assert again["body"]["status"] == "duplicate"
    assert result(again)["reason"] == Reason.PEER_NOT_FOUND
    assert all(r.task_id is None for r in _rows(d))


def test_a_refusal_captured_before_a_restart_stays_final_after_it(
        start_daemon: Start, nats_wire: Wire) -> None:
    d = start_daemon()
    victim = _verified(d, "victim")
    early = victim.task("task.create", {"title": "early"}, "r-early")  # before its greet
    assert result(_ask(nats_wire, victim, early))["reason"] == Reason.PEER_NOT_FOUND
    d.stop()
    d = start_daemon()
    assert _greet(nats_wire, victim)["task_write"] is True
    replayed = _ask(nats_wire, victim, early)
    assert replayed["body"]["status"] == "duplicate"
    assert result(replayed)["reason"] == Reason.PEER_NOT_FOUND  # never a write
    late = victim.task("task.create", {"title": "late"}, "r-late")
    assert result(_ask(nats_wire, victim, late))["accepted"]
    assert [(r.request_id, r.outcome) for r in _rows(d)] == [
        ("r-early", "rejected"), ("r-early", "rejected"), ("r-late", "accepted")]


# ---- F: expires_at never lifts the ts window --------------------------------------------
def test_expires_at_never_makes_an_old_envelope_fresh_again(start_daemon: Start,
                                                           nats_wire: Wire) -> None:
    d = start_daemon()
    a = _verified(d, "alice")
    assert _greet(nats_wire, a)["task_write"] is True
    now = int(time.time())
    old = a.task("task.create", {"title": "from last month"}, "r-old")
    old = a.finish({**old, "proof": None, "ts": now - 30 * 86400, "expires_at": now + 86400})
    nats_wire.publish(a.daemon_subject(), encode(old))
    shortened = a.finish({**a.task("task.create", {"title": "t"}, "r-short"), "proof": None,
                          "expires_at": now - 1})
    nats_wire.publish(a.daemon_subject(), encode(shortened))
    _wait_for(lambda: len(_rows(d)) == 2)
    assert [(r.reason, r.task_id) for r in _rows(d)] == [(Reason.INVALID_REQUEST, None)] * 2


# ---- G: an older greet never undoes a newer one -----------------------------------------
def test_a_captured_older_greet_cannot_restore_task_write_after_a_restart(
        start_daemon: Start, nats_wire: Wire) -> None:
    d = start_daemon()
    a = _verified(d, "alice")
    now = int(time.time())
    captured = a.finish({**a.greet(("task.write",)), "proof": None, "ts": now - 20})
    assert presence(nats_wire.ask(a.broadcast(), captured))["task_write"] is True
    newer = a.finish({**a.greet(()), "proof": None, "ts": now - 10})  # drops task.write
    assert presence(nats_wire.ask(a.broadcast(), newer))["applied"] is True
    d.stop()
    d = start_daemon()
    assert presence(nats_wire.ask(a.broadcast(), captured)) == {
        "applied": False, "reason": "stale", "task_write": False, "trust": "verified"}
    assert presence(nats_wire.ask(a.broadcast(), newer))["reason"] == "duplicate"
    write = result(_ask(nats_wire, a, a.task("task.create", {"title": "t"}, "r-1")))
    assert write["accepted"] is False and write["reason"] == Reason.PEER_NOT_FOUND


def test_a_captured_older_greet_cannot_restore_task_write_once_its_id_is_forgotten(
        start_daemon: Start, nats_wire: Wire, clock: FakeClock) -> None:
    """The greet-id window used to forget ids (by time on the daemon's clock, or under a
    flood of 100,000 other greets) while the captured greet was still fresh by its ts."""
    d = start_daemon(clock=clock)
    a = _verified(d, "alice")
    now = int(time.time())
    captured = a.finish({**a.greet(("task.write",)), "proof": None, "ts": now - 20})
    assert presence(nats_wire.ask(a.broadcast(), captured))["task_write"] is True
    clock.advance(301.0)
    newer = a.finish({**a.greet(()), "proof": None, "ts": now - 10})
    assert presence(nats_wire.ask(a.broadcast(), newer))["applied"] is True
    assert presence(nats_wire.ask(a.broadcast(), captured))["reason"] == "stale"
    write = result(_ask(nats_wire, a, a.task("task.create", {"title": "t"}, "r-1")))
    assert write["reason"] == Reason.CAPABILITY_DENIED


# ---- H: one reading of every envelope ---------------------------------------------------
def test_an_envelope_with_a_repeated_key_is_refused_whoever_reads_it(
        start_daemon: Start, nats_wire: Wire) -> None:
    d = start_daemon()
    victim, forger = _verified(d, "victim"), _verified(d, "forger")
    assert _greet(nats_wire, forger)["task_write"] is True
    signed = encode(forger.task("task.create", {"title": "whose?"}, "r-1"))
    # A first-wins reader (a relay, a SIEM) would see the victim as the sender.
    two_froms = signed.replace(b'"from":', b'"from":"' + victim.id.encode() + b'","from":', 1)
    nats_wire.publish(forger.daemon_subject(), two_froms)
    _wait_for(lambda: len(_rows(d)) == 1)
    [record] = _rows(d)
    assert (record.reason, record.peer_id, record.task_id) == (
        Reason.INVALID_REQUEST, "", None)


def test_an_identifier_padded_with_unicode_space_is_not_read_as_the_peer_it_resembles(
        start_daemon: Start, nats_wire: Wire) -> None:
    d = start_daemon()
    plain = Peer("peer-b", verified=False)
    nbsp = "peer-b\u00a0"
    nats_wire.publish(plain.broadcast(), encode(plain.greet((), sender=nbsp)))
    nats_wire.publish(plain.daemon_subject(), encode(plain.task(
        "task.create", {"title": "t"}, "r-1", sender=nbsp)))
    _wait_for(lambda: len(_rows(d)) == 2)
    # Audited as claimed, in safe form: never under peer-b.
    assert {(r.reason, r.peer_id) for r in _rows(d)} == {
        (Reason.INVALID_REQUEST, "peer-b\\u00a0")}
    assert d.daemon.metrics.greets.labels("applied", "unverified")._value.get() == 0


def test_a_task_request_on_the_broadcast_subject_is_refused(start_daemon: Start,
                                                           nats_wire: Wire) -> None:
    d = start_daemon()
    a = _verified(d, "alice")
    assert _greet(nats_wire, a)["task_write"] is True
    receipt = nats_wire.ask(a.broadcast(), a.task("task.create", {"title": "t"}, "r-1"))
    assert result(receipt)["reason"] == Reason.INVALID_REQUEST
    [record] = _rows(d)
    assert (record.reason, record.task_id, record.trust) == (
        Reason.INVALID_REQUEST, None, "verified")


def test_envelopes_judged_by_the_daemon_are_v0_and_v1_alike_for_the_nbsp_rule() -> None:
    from task_ingress.runtime.nats import envelope as wire

    env = envelope("greet", "peer-b\u00a0", {"peer_card": {
        "peer_id": "peer-b\u00a0", "profiles_supported": [], "capabilities": [],
        "artifacts_supported": [], "trust_modes_supported": []}}, protocol=V0)
    with pytest.raises(wire.EnvelopeError):
        wire.validate_object(env)
    ok = {**env, "from": " peer-b\t", "body": {"peer_card": {
        **env["body"]["peer_card"], "peer_id": "peer-b"}}}
    assert wire.validate_object(ok).sender == "peer-b"


def test_a_verified_sender_cannot_aim_answers_at_another_applications_subject(
        start_daemon: Start, nats_wire: Wire) -> None:
    d = start_daemon()
    peer = _verified(d, "peer")
    assert _greet(nats_wire, peer)["task_write"] is True
    hit = nats_wire.collect("orders.new")  # another application on the shared NATS server
    _publish_with_reply(nats_wire, peer.daemon_subject(),
                        encode(peer.task("task.create", {"title": "x"}, "r-0")), "orders.new")
    _wait_for(lambda: len(_rows(d)) == 1)
    _quiet(nats_wire)
    assert hit == []
    assert d.daemon.metrics.replies_refused._value.get() == 1


@pytest.mark.parametrize(("reply", "allowed"), [
    ("_INBOX.abc.1", True),
    ("_INBOX." + "a" * 32 + ".1", True),
    ("agh.network.v1.ws.ops.peer.x", False),  # never an AGH subject
    ("orders.new", False),  # nor another application's
    ("_INBOXX.a", False),
    ("", False),
])
def test_answers_go_only_onto_nats_inboxes(reply: str, allowed: bool) -> None:
    assert reply_target_allowed(reply) is allowed
