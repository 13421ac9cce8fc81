"""Each invariant is shown able to fail: corrupt a store/audit row or fabricate evidence."""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from task_ingress.messages.reasons import Action, Reason
from task_ingress.runtime.swarm.history import PresenceEvent, PresenceHistory, write_justified
from task_ingress.runtime.swarm.invariants import (
    Check,
    audit_chain_verifies,
    bad_requests_rejected,
    bound_tasks_mutated_only_from_their_channel,
    check_all,
    every_request_answered,
    one_audit_record_per_request,
    store_matches_audit,
    writes_by_visible_capable_peers,
)

from tests.swarm.swarm_support import KeptRun, run_kept


@pytest.fixture(scope="module")
def kept(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeptRun]:
    """One small swarm (its runtime already shut down); tests corrupt copies of its store."""
    yield run_kept(str(tmp_path_factory.mktemp("swarm")))


def _copy(kept: KeptRun, tmp_path: Path) -> str:
    dest = str(tmp_path / "copy.db")
    for suffix in ("", ".checkpoint", ".key"):
        with contextlib.suppress(FileNotFoundError):
            shutil.copy(kept.store + suffix, dest + suffix)
    return dest


def _execute(store: str, sql: str, *args: object) -> None:
    conn = sqlite3.connect(store)
    try:
        conn.execute(sql, args)
        conn.commit()
    finally:
        conn.close()


def _by_name(checks: list[Check], name: str) -> Check:
    return next(c for c in checks if c.name == name)


def test_uncorrupted_copy_holds_every_invariant(kept: KeptRun, tmp_path: Path) -> None:
    checks = check_all(kept.evidence(_copy(kept, tmp_path)))
    assert all(c.ok for c in checks), [c for c in checks if not c.ok]


def test_deleted_audit_row_breaks_one_record_per_request(kept: KeptRun, tmp_path: Path
                                                          ) -> None:
    store = _copy(kept, tmp_path)
    _execute(store, "DELETE FROM audit WHERE seq = (SELECT MAX(seq) FROM audit)")
    ev = kept.evidence(store)
    check = one_audit_record_per_request(ev.sent, ev.run_records)
    assert not check.ok and "1 without a record" in check.detail


def test_edited_audit_row_breaks_the_chain(kept: KeptRun, tmp_path: Path) -> None:
    store = _copy(kept, tmp_path)
    _execute(store, "UPDATE audit SET reason = 'overloaded' WHERE seq = 5")
    ev = kept.evidence(store)
    check = audit_chain_verifies(ev.records, ev.verify, ev.unparsed)
    assert not check.ok and "seq 5" in check.detail


def test_deleted_run_row_breaks_store_matches_audit(kept: KeptRun, tmp_path: Path) -> None:
    store = _copy(kept, tmp_path)
    _execute(store, "DELETE FROM runs WHERE run_id = (SELECT MIN(run_id) FROM runs)")
    check = store_matches_audit(kept.evidence(store).verify)
    assert not check.ok and "is not in the store" in " ".join(check.examples)


def test_task_without_accepted_record_breaks_store_matches_audit(kept: KeptRun,
                                                                 tmp_path: Path) -> None:
    store = _copy(kept, tmp_path)
    _execute(store, "INSERT INTO tasks (task_id, workspace, title, description, created_at, "
             "updated_at) VALUES ('task_smuggled', 'ws-0', 't', '', 0, 0)")
    check = store_matches_audit(kept.evidence(store).verify)
    assert not check.ok and "task_smuggled" in " ".join(check.examples)


def test_rebound_task_in_store_breaks_bound_task_check(kept: KeptRun, tmp_path: Path) -> None:
    store = _copy(kept, tmp_path)
    _execute(store, "UPDATE tasks SET network_channel = 'ch-elsewhere' WHERE task_id = "
             "(SELECT MIN(task_id) FROM tasks WHERE network_channel != '')")
    ev = kept.evidence(store)
    check = bound_tasks_mutated_only_from_their_channel(ev.run_records, ev.sent, ev.bindings)
    assert not check.ok and "ch-elsewhere" in " ".join(check.examples)


def test_mutation_from_another_channel_breaks_bound_task_check(kept: KeptRun) -> None:
    ev = kept.evidence()
    run = ev.run_records
    # Fabricate: an accepted update of a task bound at its creation, moved to another channel.
    bound = {s.task_id for s in ev.sent
             if s.accepted and s.kind == Action.CREATE.value and s.bind}
    victim = next(r for r in run if r.outcome == "accepted" and r.action is Action.UPDATE
                  and r.task_id in bound)
    forged = victim.model_copy(update={"channel": "ch-intruder"})
    run = [forged if r.seq == victim.seq else r for r in run]
    check = bound_tasks_mutated_only_from_their_channel(run, ev.sent, ev.bindings)
    assert not check.ok and "ch-intruder" in " ".join(check.examples)


def test_a_bound_create_committed_but_never_answered_still_replays_as_bound(
        kept: KeptRun) -> None:
    """A daemon killed between a create's commit and its answer: the swarm saw no reply,
    yet the task is stored with the binding the request asked for (cluster swarm test)."""
    ev = kept.evidence()
    lost = next(s for s in ev.sent if s.accepted and s.kind == Action.CREATE.value and s.bind)
    sent = [dataclasses.replace(s, accepted=None, reason=None, task_id=None, run_id=None)
            if s is lost else s for s in ev.sent]
    check = bound_tasks_mutated_only_from_their_channel(ev.run_records, sent, ev.bindings)
    assert check.ok, check


def test_write_without_covering_greet_breaks_presence_check(kept: KeptRun) -> None:
    ev = kept.evidence()
    accepted = next(r for r in ev.run_records if r.outcome == "accepted")
    key = (accepted.workspace, accepted.channel, accepted.peer_id)
    history = PresenceHistory(expiry=ev.history.expiry)
    for k, events in ev.history.events.items():
        if k != key:
            for e in events:
                history.record(k, e)
    # The peer's greets are gone from the history: its accepted writes are unattributable.
    check = writes_by_visible_capable_peers(ev.run_records, ev.sent, history)
    assert not check.ok and accepted.peer_id in " ".join(check.examples)


def test_accepted_bad_request_breaks_bad_requests_rejected(kept: KeptRun) -> None:
    sent = list(kept.sent)
    i = next(i for i, s in enumerate(sent) if s.bad == "garbage")
    sent[i] = dataclasses.replace(sent[i], accepted=True)
    assert not bad_requests_rejected(sent).ok
    assert bad_requests_rejected(kept.sent).ok


def test_request_without_reply_breaks_every_request_answered(kept: KeptRun) -> None:
    sent = list(kept.sent)
    sent[0] = dataclasses.replace(sent[0], accepted=None)
    assert not every_request_answered(sent).ok


# ---- the attribution rule (runtime.swarm.history), as a table -------------------------

G = PresenceEvent("greet", True, 10.0, 11.0)
EXPIRY = 5.0


@pytest.mark.parametrize(("events", "sent", "returned", "justified"), [
    ([G], 12.0, 13.0, True),                                        # plain
    ([], 12.0, 13.0, False),                                        # never greeted
    ([G], 16.0, 17.0, False),                                       # sent after expiry
    ([G], 15.9, 17.0, True),                                        # not surely expired
    ([G, PresenceEvent("leave", False, 12.0, 12.5)], 13.0, 14.0, False),   # after leave
    ([G, PresenceEvent("leave", False, 12.0, 14.5)], 13.0, 14.0, True),    # overlapping leave
    ([G, PresenceEvent("greet", False, 12.0, 12.5)], 13.0, 14.0, False),   # card lost write
    ([PresenceEvent("greet", False, 10.0, 11.0)], 12.0, 13.0, False),      # never a writer
    ([PresenceEvent("greet", True, 12.5, 14.0)], 12.0, 13.0, True),        # concurrent greet
    ([PresenceEvent("greet", True, 13.5, 14.0)], 12.0, 13.0, False),       # greet after reply
])
def test_attribution_rule_cases(events: list[PresenceEvent], sent: float, returned: float,
                                justified: bool) -> None:
    assert write_justified(events, sent, returned, EXPIRY) is justified


def test_silent_leave_expires_from_its_return_when_leaves_do_not_revoke() -> None:
    events = [G, PresenceEvent("leave", False, 20.0, 20.5)]
    # The transport heartbeats until the leave: visible long after the greet itself...
    assert write_justified(events, 18.0, 19.0, EXPIRY, leave_revokes=False)
    assert write_justified(events, 25.0, 26.0, EXPIRY, leave_revokes=False)
    # ...and expired 2 x greet_interval after the leave returned.
    assert not write_justified(events, 25.5, 26.0, EXPIRY, leave_revokes=False)


def test_audited_refusal_of_a_greet_is_excused_only_when_the_greet_was_refused() -> None:
    from collections import Counter

    from task_ingress.messages.audit import AuditRecord

    rec = AuditRecord(seq=1, at=0.0, workspace="ws", channel="ch", peer_id="p", actor="",
                      request_id="msg_1", action=Action.UNKNOWN, outcome="rejected",
                      reason=Reason.INVALID_REQUEST, task_id=None, run_id=None,
                      payload_size=0, prev_hash="0" * 64, hash="x")
    assert not one_audit_record_per_request([], [rec]).ok
    assert one_audit_record_per_request([], [rec], Counter({("ws", "ch", "p"): 1})).ok
    assert not one_audit_record_per_request([], [rec, rec.model_copy(update={"seq": 2})],
                                            Counter({("ws", "ch", "p"): 1})).ok
