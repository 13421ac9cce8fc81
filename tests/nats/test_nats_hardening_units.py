"""Issue 13, the pure parts: the unproven budget and its tally, the judged-id window and its
overflow filter, the greet ledger, the strict JSON reading, signed compact replies."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from task_ingress.messages.audit import AuditRecord
from task_ingress.messages.reasons import Action, Reason
from task_ingress.runtime.nats import envelope as wire
from task_ingress.runtime.nats.budget import MAX_TALLY_KEYS, DropKey, DropTally, UnprovenBudget
from task_ingress.runtime.nats.compact import CompactError, open_reply, sign_reply
from task_ingress.runtime.nats.greets import (
    MAX_IDS_PER_TS,
    GreetFile,
    GreetLedger,
    GreetMark,
    PeerKey,
    Persisted,
    merged,
    verdict,
)
from task_ingress.runtime.nats.identity import generate_key, load_private_key, raw_public_key
from task_ingress.runtime.nats.replay import (
    OVERFLOWED,
    JudgedWindow,
    OverflowFilter,
    Verdict,
    earlier_verdicts,
)

from tests.conftest import FakeClock

NOW = 1_775_606_400


# ---- budget ---------------------------------------------------------------------------
def test_the_unproven_budget_spends_its_burst_then_refills_at_its_rate(
        clock: FakeClock) -> None:
    budget = UnprovenBudget(rate=2.0, burst=3.0, clock=clock)
    assert [budget.take() for _ in range(4)] == [True, True, True, False]
    clock.advance(0.5)
    assert [budget.take() for _ in range(2)] == [True, False]
    clock.advance(100.0)
    assert sum(budget.take() for _ in range(10)) == 3  # never more than the burst


def test_the_drop_tally_counts_by_subject_and_folds_an_unbounded_number_of_channels() -> None:
    tally = DropTally()
    for n in range(MAX_TALLY_KEYS + 50):
        tally.add(DropKey("unproven", "ws", f"ch{n}", "v0", "peer"), 10)
    tally.add(DropKey("unproven", "ws", "ch0", "v0", "peer"), 5)
    assert len(tally) == MAX_TALLY_KEYS + 51
    dropped = tally.take_all()
    assert len(dropped) == MAX_TALLY_KEYS + 1  # the rest under channel '*'
    folded = [d for d in dropped if d.key.channel == "*"]
    assert [(d.count, d.size) for d in folded] == [(50, 500)]
    assert DropKey("unproven", "ws", "ops", "v1", "peer").request_id(7) == (
        "dropped:unproven:v1.peer:7")
    assert tally.take_all() == [] and len(tally) == 0


# ---- judged-id window -----------------------------------------------------------------
def _key(n: int, peer: str = "p") -> tuple[str, str, str, str]:
    return ("ws", "ops", peer, f"r-{n}")


def test_the_judged_window_remembers_each_id_for_its_lifetime_and_never_forgets_early(
        clock: FakeClock) -> None:
    window = JudgedWindow(300.0, capacity=3, per_peer=2, clock=clock)
    refused = Verdict(False, Reason.PEER_NOT_FOUND)
    for n, lifetime in enumerate((10.0, 600.0)):
        assert window.admit(_key(n))
        window.start(_key(n), "pending", lifetime)
        window.finish(_key(n), refused)
    assert not window.admit(_key(2))  # per peer: 2
    assert window.admit(_key(0, "q"))
    window.start(_key(0, "q"), "pending", 10.0)
    assert not window.admit(_key(1, "q"))  # in all: 3, and nothing was evicted for it
    assert window.lookup(_key(0)) == refused and window.lookup(_key(1)) == refused
    assert window.lookup(_key(2)) == OVERFLOWED == window.lookup(_key(1, "q"))
    clock.advance(11.0)
    assert window.lookup(_key(0)) is None and window.lookup(_key(1)) == refused
    assert len(window) == 1 and window.admit(_key(3))  # room again, per peer as well
    window.discard(_key(1))
    assert window.lookup(_key(1)) is None and len(window) == 0


def _record(request_id: str, *, at: float = NOW, peer: str = "p", trust: str = "verified",
            action: Action = Action.CREATE, outcome: str = "rejected",
            reason: Reason | None = Reason.PEER_NOT_FOUND, replay: bool = False
            ) -> AuditRecord:
    return AuditRecord(seq=1, at=at, workspace="ws", channel="c", peer_id=peer,
                       actor=f"peer:{peer}/channel:c", request_id=request_id, action=action,
                       outcome=outcome, reason=reason, task_id=None, run_id=None,
                       payload_size=0, replay=replay, trust=trust, prev_hash="", hash="")


def test_an_earlier_runs_verdicts_are_the_task_requests_the_window_would_have_held() -> None:
    records = [
        _record("r-1"),                                               # a refusal: kept
        _record("r-1", outcome="accepted", reason=None),              # not its first record
        _record("r-2", outcome="accepted", reason=None, trust="unverified"),
        _record("r-2", outcome="accepted", reason=None, replay=True),
        _record("forged", trust="rejected"),                           # never in a window
        _record("old", at=NOW - 603),                                   # no longer fresh
        _record("dropped:unproven:v1.peer:9", peer="", action=Action.UNKNOWN,
                reason=Reason.OVERLOADED),
        _record("", action=Action.GREET, reason=Reason.OVERLOADED),
        _record("embedded", trust="embedded"),
        _record("garbled", trust="unverified", action=Action.UNKNOWN),
    ]
    found = list(earlier_verdicts(records, 602.0, NOW + 2))
    assert found == [(("ws", "c", "p", "r-1"), Verdict(False, Reason.PEER_NOT_FOUND), 600.0),
                     (("ws", "c", "p", "r-2"), Verdict(True, None), 600.0)]


def test_a_seeded_verdict_is_final_for_its_lifetime_and_a_full_window_refuses_the_rest(
        clock: FakeClock) -> None:
    window = JudgedWindow(602.0, capacity=1, per_peer=1, clock=clock)
    refused = Verdict(False, Reason.PEER_NOT_FOUND)
    window.seed(_key(0), refused, 30.0)
    window.seed(_key(0), Verdict(True, None), 30.0)   # the first verdict stays
    window.seed(_key(1), refused, 30.0)               # full: refused, never judged
    window.seed(_key(2), refused, 0.0)                # expired: nothing to remember
    assert window.lookup(_key(0)) == refused and window.lookup(_key(1)) == OVERFLOWED
    assert window.lookup(_key(2)) is None
    clock.advance(31.0)
    assert window.lookup(_key(0)) is None


def test_the_overflow_filter_finds_what_was_added_for_at_least_one_window(
        clock: FakeClock) -> None:
    flt = OverflowFilter(300.0, clock, bits=1 << 16)
    assert b"a" not in flt
    flt.add(b"a")
    clock.advance(299.0)
    flt.add(b"b")
    clock.advance(2.0)  # a new generation: both still found
    assert b"a" in flt and b"b" in flt
    clock.advance(300.0)
    assert b"a" not in flt and b"b" not in flt  # two generations later: forgotten
    clock.advance(600.0)
    assert b"b" not in flt and flt.added == 0  # long idle: emptied at once
    for n in range(1000):
        flt.add(b"x%d" % n)
    assert all(b"x%d" % n in flt for n in range(1000))  # never a false negative


# ---- greet ledger ---------------------------------------------------------------------
def test_a_greet_applies_only_when_newer_than_the_last_applied_one() -> None:
    mark = GreetMark(ts=100, ids=["g-1"])
    assert verdict(None, 5, "g-0") is None
    assert verdict(mark, 101, "g-2") is None
    assert verdict(mark, 99, "g-0") == "stale"
    assert verdict(mark, 100, "g-1") == "duplicate"
    assert verdict(mark, 100, "g-2") is None  # two greets in one second
    assert verdict(GreetMark(ts=100, ids=[f"g{i}" for i in range(MAX_IDS_PER_TS)]), 100,
                   "g-x") == "full"


def _file_ledger(path: str, clock: FakeClock, wall: list[float]) -> GreetLedger:
    ledger = GreetLedger(GreetFile(path, wall=lambda: wall[0]), greet_interval=30.0,
                         clock=clock, wall=lambda: wall[0])
    ledger.load()
    return ledger


def test_a_persisted_mark_keeps_the_newest_ts_and_the_ids_applied_at_it() -> None:
    assert merged(None, 100, "g-1") == (100, ["g-1"])
    assert merged((100, ["g-1"]), 100, "g-2") == (100, ["g-1", "g-2"])
    assert merged((100, ["g-1"]), 100, "g-1") == (100, ["g-1"])  # a racing second writer
    assert merged((100, ["g-1"]), 99, "g-0") == (100, ["g-1"])  # an older ts never wins
    assert merged((100, ["g-1", "g-2"]), 101, "g-3") == (101, ["g-3"])
    full = (100, [f"g{i}" for i in range(MAX_IDS_PER_TS)])
    assert merged(full, 100, "g-x") == (100, [*full[1][1:], "g-x"])


class _Remembered:
    """A GreetStore kept in a dict: what the ledger hands a store, and takes from it."""

    def __init__(self, marks: dict[PeerKey, Persisted]) -> None:
        self.marks = marks
        self.closed = False

    def load(self) -> dict[PeerKey, Persisted]:
        return dict(self.marks)

    def persist(self, key: PeerKey, ts: int, env_id: str, card: str) -> None:
        self.marks[key] = merged(self.marks.get(key), ts, env_id)

    def close(self) -> None:
        self.closed = True


def test_a_greet_ledger_judges_a_stores_marks_as_greets_applied_before(
        clock: FakeClock) -> None:
    key = ("ws", "ops", "alice")
    store = _Remembered({key: (NOW - 10, ["g-2"])})
    ledger = GreetLedger(store, greet_interval=30.0, clock=clock, wall=lambda: float(NOW))
    assert ledger.judge(key, NOW - 20, "g-1") is None  # nothing loaded yet
    assert ledger.load() == 1
    assert ledger.judge(key, NOW - 20, "g-1") == "stale"
    assert ledger.judge(key, NOW - 10, "g-2") == "duplicate"
    mark = ledger.get(key)
    assert mark is not None and not mark.granted  # its presence did not survive
    assert ledger.judge(key, NOW - 5, "g-3") is None
    ledger.note(key, NOW - 5, "g-3")
    ledger.persist(key, NOW - 5, "g-3", "card")
    assert store.marks[key] == (NOW - 5, ["g-3"])
    ledger.close()
    assert store.closed


def test_the_greet_ledger_survives_a_restart_and_a_torn_last_line(tmp_path: Path,
                                                                   clock: FakeClock) -> None:
    path = str(tmp_path / "store.db.greets")
    wall = [float(NOW)]
    ledger = _file_ledger(path, clock, wall)
    key = ("ws", "ops", "alice")
    assert ledger.judge(key, NOW - 20, "g-1") is None
    mark = ledger.note(key, NOW - 20, "g-1")
    ledger.persist(key, NOW - 20, "g-1", "card-a")
    ledger.applied(key, mark, granted=True, fingerprint="f" * 32)
    assert ledger.get(key) is mark and mark.granted
    newer = ledger.note(key, NOW - 10, "g-2")
    assert newer.granted  # the applied card decides until the newer one is applied
    ledger.persist(key, NOW - 10, "g-2", "card-b")
    ledger.close()
    with open(path, "a", encoding="utf-8") as fh:
        fh.write('{"k": ["ws", "ops", "alice"], "ts": ')  # a crash mid-line
    again = _file_ledger(path, clock, wall)
    assert again.judge(key, NOW - 20, "g-1") == "stale"
    assert again.judge(key, NOW - 10, "g-2") == "duplicate"
    assert again.judge(key, NOW - 10, "g-3") is None
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with open(path, encoding="utf-8") as fh:
        assert [json.loads(line)["ts"] for line in fh] == [NOW - 10]  # compacted
    wall[0] += 400.0  # past every ts window: nothing left to remember
    assert len(_file_ledger(path, clock, wall)) == 0


def test_a_full_greet_ledger_refuses_new_peers_and_keeps_its_marks(clock: FakeClock) -> None:
    wall = [float(NOW)]
    ledger = GreetLedger(None, greet_interval=30.0, capacity=2, clock=clock,
                         wall=lambda: wall[0])
    for peer in ("a", "b"):
        mark = ledger.note(("ws", "ops", peer), NOW, "g")
        ledger.applied(("ws", "ops", peer), mark, granted=False, fingerprint="")
    assert ledger.judge(("ws", "ops", "c"), NOW, "g") == "full"
    assert ledger.judge(("ws", "ops", "a"), NOW + 1, "g2") is None  # known peers go on
    wall[0] += 302.0
    clock.advance(61.0)  # past the ts window and the presence horizon
    assert ledger.judge(("ws", "ops", "c"), NOW + 302, "g") is None


# ---- strict JSON ----------------------------------------------------------------------
def test_nesting_is_counted_without_recursion_and_bounded_at_decoding() -> None:
    assert wire.nesting_depth({"a": [1, {"b": []}]}, 32) == 4
    assert wire.nesting_depth(json.loads("[" * 500 + "]" * 500), 32) == 33  # stops early
    ok = b'{"a":' + b"[" * 31 + b"]" * 31 + b"}"
    assert wire.decode_json_object(ok)["a"] == json.loads(b"[" * 31 + b"]" * 31)
    with pytest.raises(wire.EnvelopeError, match="deeper than 32"):
        wire.decode_json_object(b'{"a":' + b"[" * 32 + b"]" * 32 + b"}")
    with pytest.raises(wire.EnvelopeError, match="not JSON"):
        wire.decode_json_object(b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                                max_bytes=1 << 20)


def test_a_repeated_key_anywhere_is_refused() -> None:
    for data in (b'{"from": "a", "from": "b"}', b'{"body": {"x": 1, "x": 1}}'):
        with pytest.raises(wire.EnvelopeError, match="repeats a key"):
            wire.decode_json_object(data)


def test_identifiers_lose_only_ascii_whitespace() -> None:
    assert wire.ascii_strip(" \tpeer-b\r\n") == "peer-b"
    assert wire.ascii_strip("peer-b\u00a0") == "peer-b\u00a0"
    assert wire.ascii_strip("\u2003peer-b") == "\u2003peer-b"


@pytest.mark.parametrize(("ts", "expires_at", "fresh"), [
    (NOW - 30 * 86400, NOW + 86400, False),  # expires_at used to lift the window
    (NOW - 299, NOW + 10, True),
    (NOW - 10, NOW - 1, False),  # expires_at shortens it
    (NOW - 10, None, True),
    (NOW + 301, None, False),
])
def test_expires_at_may_only_shorten_the_ts_window(ts: int, expires_at: int | None,
                                                   fresh: bool) -> None:
    fields = {"protocol": "agh-network/v0", "id": "g", "workspace_id": "ws", "kind": "greet",
              "channel": "ops", "from": "peer-a", "ts": ts, "body": {"peer_card": {
                  "peer_id": "peer-a", "profiles_supported": [], "capabilities": [],
                  "artifacts_supported": [], "trust_modes_supported": []}}}
    if expires_at is not None:
        fields["expires_at"] = expires_at
    if fresh:
        assert wire.validate_object(fields, now=NOW).ts == ts
    else:
        with pytest.raises(wire.EnvelopeError) as err:
            wire.validate_object(fields, now=NOW)
        assert err.value.code == "expired"


# ---- signed compact replies and the daemon's key --------------------------------------
def test_a_signed_compact_reply_opens_only_for_its_request_and_its_daemon() -> None:
    key, other = generate_key(), generate_key()
    reply = sign_reply(b"spec7 reply", b"request bytes", key)
    assert open_reply(reply, request=b"request bytes",
                      public_key=raw_public_key(key)) == b"spec7 reply"
    for request, public_key in ((b"another request", raw_public_key(key)),
                                (b"request bytes", raw_public_key(other))):
        with pytest.raises(CompactError):
            open_reply(reply, request=request, public_key=public_key)
    with pytest.raises(CompactError):  # SPEC 7's unsigned reply, as anyone can send it
        open_reply(b"\x81\xa1v\x01", request=b"request bytes", public_key=raw_public_key(key))


def test_the_daemon_key_must_not_be_readable_by_others(tmp_path: Path) -> None:
    from task_ingress.runtime.nats.identity import load_or_create_key

    path = str(tmp_path / "daemon.key")
    first = load_or_create_key(path)
    assert raw_public_key(load_or_create_key(path)) == raw_public_key(first)
    os.chmod(path, 0o640)
    with pytest.raises(ValueError, match="chmod 600"):
        load_private_key(path)
