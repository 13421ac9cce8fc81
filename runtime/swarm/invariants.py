"""The checks run after every swarm: each returns a `Check` (held or not, and why).

Inputs are the store file (read-only, through runtime.audit), the swarm's journal and
its presence history. Each check is a pure function over those, so tests can corrupt a
row or fabricate a history and watch the check fail.

Checks (names are the JSON report's `invariants` keys):
- `one_audit_record_per_request`: the records appended during the run match the
  answered requests one to one, identity and outcome included (reason, task, run);
- `audit_chain_verifies`: the keyed chain holds over the whole audit read from the file,
  every row parses, and the HMAC checkpoint vouches for it (runtime.audit.verify);
- `writes_by_visible_capable_peers`: every accepted record of the run is justified by
  the swarm's presence history (rule in runtime.swarm.history);
- `store_matches_audit`: every accepted create has its task, every accepted enqueue its
  run, and nothing is in the store without an accepted record (runtime.audit.verify);
- `bound_tasks_mutated_only_from_their_channel`: replaying the run's accepted records in
  commit order, with the bindings the swarm asked for, no mutation of a task bound to a
  channel came from another channel, and the stored bindings equal the replay's;
- `bad_requests_rejected`: no deliberately bad request was accepted;
- `every_request_answered`: every request got a reply (no transport error or timeout).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from task_ingress.actors.rules.gate import safe_field
from task_ingress.actors.storage.auditlog import read_checkpoint, record_from_row
from task_ingress.messages.audit import AuditRecord
from task_ingress.messages.reasons import Action, Reason
from task_ingress.runtime.audit.read import load_key, open_readonly, read_snapshot
from task_ingress.runtime.audit.verify import VerifyResult, verify_snapshot
from task_ingress.runtime.swarm.history import PresenceHistory
from task_ingress.runtime.swarm.journal import Sent

MAX_EXAMPLES = 5
RequestKey = tuple[str, str, str, str]
"""(workspace, channel, peer_id, request_id) in the audit's safe form."""


@dataclass(frozen=True)
class Check:
    """One invariant's verdict."""

    name: str
    ok: bool
    detail: str
    examples: tuple[str, ...] = ()


@dataclass
class RunEvidence:
    """Everything the checks read, gathered once after the run."""

    records: list[AuditRecord]
    """Every audit record in the store, in seq order."""
    start_seq: int
    """Records with seq > start_seq were appended during this run."""
    sent: list[Sent]
    verify: VerifyResult
    bindings: dict[str, str]
    """task_id -> stored network_channel."""
    history: PresenceHistory
    unparsed: list[str] = field(default_factory=list)
    refused_greets: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    """Greets the transport reported as not applied, per (workspace, channel, peer)."""
    unavailable_unacknowledged: bool = False
    """A `task_ingress_unavailable` answer acknowledges nothing: the transport may have
    made it up after a timeout (a daemon killed mid-request), or a deposed cluster daemon
    may have given it unaudited. Such a request may have one record, of any outcome, or
    none (a cluster's evidence sets this; a single daemon audits every answer it gives)."""

    @property
    def run_records(self) -> list[AuditRecord]:
        """The records this run appended."""
        return [r for r in self.records if r.seq > self.start_seq]


def request_key(ws: str, ch: str, peer: str, rid: str) -> RequestKey:
    """The identity of a request as the audit stores it."""
    return (safe_field(ws), safe_field(ch), safe_field(peer), safe_field(rid))


def gather(store_path: str, start_seq: int, sent: list[Sent], history: PresenceHistory,
           key: str | None = None,
           refused_greets: Counter[tuple[str, str, str]] | None = None) -> RunEvidence:
    """Read the store read-only (audit, tasks, checkpoint) and verify it."""
    checkpoint, cp_error = read_checkpoint(store_path)
    key_bytes, key_error = load_key(store_path, key)
    with open_readonly(store_path) as conn:
        snap = read_snapshot(conn)
        bindings = dict(conn.execute("SELECT task_id, network_channel FROM tasks").fetchall())
    result = verify_snapshot(snap, checkpoint, cp_error, key_bytes, key_error)
    records: list[AuditRecord] = []
    unparsed: list[str] = []
    for row in snap.audit_rows:
        try:
            records.append(record_from_row(row))
        except (ValueError, TypeError) as exc:
            unparsed.append(f"seq {row[0]}: {exc!s:.120}")
    return RunEvidence(records, start_seq, sent, result, bindings, history, unparsed,
                       Counter(refused_greets or {}))


def check_all(ev: RunEvidence) -> list[Check]:
    """Every invariant, in report order."""
    run = ev.run_records
    return [
        one_audit_record_per_request(ev.sent, run, ev.refused_greets,
                                     ev.unavailable_unacknowledged),
        audit_chain_verifies(ev.records, ev.verify, ev.unparsed),
        writes_by_visible_capable_peers(run, ev.sent, ev.history),
        store_matches_audit(ev.verify),
        bound_tasks_mutated_only_from_their_channel(run, ev.sent, ev.bindings),
        bad_requests_rejected(ev.sent),
        every_request_answered(ev.sent),
    ]


def _examples(items: Iterable[str]) -> tuple[str, ...]:
    out = []
    for item in items:
        out.append(item)
        if len(out) >= MAX_EXAMPLES:
            break
    return tuple(out)


def one_audit_record_per_request(
    sent: list[Sent], run: list[AuditRecord],
    refused_greets: Counter[tuple[str, str, str]] | None = None,
    unavailable_unacknowledged: bool = False,
) -> Check:
    """Answered requests and the run's audit records correspond one to one.

    A greet the transport reports as refused may be audited by a daemon as a rejection
    (action `unknown`) of that peer: up to one such record per refused greet is excused.
    With `unavailable_unacknowledged`, a `task_ingress_unavailable` answer counts as no
    answer: the request may have one record of any outcome, or none.
    """
    def outcome_key(key: RequestKey, accepted: bool, reason: str | None, task: str | None,
                    run_id: str | None) -> tuple[object, ...]:
        return (*key, accepted, reason, task, run_id)

    expected: Counter[tuple[object, ...]] = Counter()
    unanswered: Counter[RequestKey] = Counter()
    unacknowledged = 0
    for s in sent:
        key = request_key(s.workspace, s.channel, s.peer_id, s.request_id)
        if s.accepted is None:
            unanswered[key] += 1
        elif (unavailable_unacknowledged and not s.accepted
              and s.reason == Reason.TASK_INGRESS_UNAVAILABLE.value):
            unacknowledged += 1
            unanswered[key] += 1
        else:
            expected[outcome_key(key, s.accepted, s.reason, s.task_id, s.run_id)] += 1
    found: Counter[tuple[object, ...]] = Counter()
    for r in run:
        found[outcome_key((r.workspace, r.channel, r.peer_id, r.request_id),
                          r.outcome == "accepted", r.reason.value if r.reason else None,
                          r.task_id, r.run_id)] += 1
    missing = expected - found
    extra = found - expected
    # A request whose reply was lost may still have been audited: excuse one record each.
    for k in list(extra):
        excuse = min(extra[k], unanswered[k[:4]])  # type: ignore[index]
        if excuse:
            extra[k] -= excuse
            unanswered[k[:4]] -= excuse  # type: ignore[index]
    refused = Counter(refused_greets or {})
    excused = 0
    for k in list(extra):
        who = (str(k[0]), str(k[1]), str(k[2]))
        if k[4] is False and k[5] == "invalid_request" and refused[who] > 0:
            n = min(extra[k], refused[who])
            extra[k] -= n
            refused[who] -= n
            excused += n
    extra = +extra
    ok = not missing and not extra
    detail = (f"{sum(expected.values())} answered requests, {len(run)} records appended; "
              f"{sum(missing.values())} without a record, {sum(extra.values())} records "
              "without a request"
              + (f" ({excused} audited refusals of greets excused)" if excused else "")
              + (f"; {unacknowledged} answered task_ingress_unavailable (acknowledging "
                 "nothing: a record optional)" if unacknowledged else ""))
    return Check("one_audit_record_per_request", ok, detail,
                 _examples([f"no record for {k}" for k in missing]
                           + [f"unexpected record {k}" for k in extra]))


def audit_chain_verifies(records: list[AuditRecord], verify: VerifyResult,
                         unparsed: list[str] | None = None) -> Check:
    """The keyed chain holds over the whole audit, and the checkpoint vouches for it."""
    problems = [p for p in verify.problems if p.kind != "store"]
    issues = [str(p) for p in problems] + list(unparsed or [])
    ok = not issues
    detail = (f"{len(records)} records chained" if ok
              else f"chain broken: {issues[0]}")
    return Check("audit_chain_verifies", ok, detail, _examples(issues))


def writes_by_visible_capable_peers(run: list[AuditRecord], sent: list[Sent],
                                    history: PresenceHistory) -> Check:
    """Each accepted record is attributable to a greet granting task.write (history rule)."""
    timing: dict[RequestKey, tuple[float, float]] = {}
    for s in sent:
        timing[request_key(s.workspace, s.channel, s.peer_id, s.request_id)] = (s.sent,
                                                                                  s.returned)
    bad: list[str] = []
    checked = 0
    for r in run:
        if r.outcome != "accepted":
            continue
        checked += 1
        window = timing.get((r.workspace, r.channel, r.peer_id, r.request_id))
        if window is None:
            bad.append(f"seq {r.seq}: accepted {r.request_id} of {r.peer_id} was never sent")
            continue
        if not history.justified((r.workspace, r.channel, r.peer_id), *window):
            bad.append(f"seq {r.seq}: {r.peer_id} in {r.workspace}/{r.channel} was not "
                       f"visible with task.write when {r.request_id} was sent")
    ok = not bad
    detail = (f"{checked} accepted writes, each attributable to a greet granting task.write"
              if ok else f"{len(bad)} of {checked} accepted writes not attributable")
    return Check("writes_by_visible_capable_peers", ok, detail, _examples(bad))


def store_matches_audit(verify: VerifyResult) -> Check:
    """Tasks, runs and accepted-request rows agree with the accepted records, both ways."""
    problems = [str(p) for p in verify.problems if p.kind == "store"]
    ok = not problems
    detail = (f"{verify.tasks} tasks and {verify.runs} runs, each vouched for by an "
              "accepted record" if ok else f"{len(problems)} disagreement(s)")
    return Check("store_matches_audit", ok, detail, _examples(problems))


def bound_tasks_mutated_only_from_their_channel(
    run: list[AuditRecord], sent: list[Sent], stored: dict[str, str]
) -> Check:
    """Replay bindings in commit order: no cross-channel mutation of a bound task."""
    # What each request asked for, answered or not: a write committed whose answer was lost
    # (its daemon SIGKILLed in between) is in the audit, and binds as it asked.
    binds = {request_key(s.workspace, s.channel, s.peer_id, s.request_id): s.bind
             for s in sent}
    binding: dict[str, str] = {}
    bad: list[str] = []
    mutations = 0
    for r in run:
        if r.outcome != "accepted" or r.replay or r.task_id is None:
            continue
        wanted = binds.get((r.workspace, r.channel, r.peer_id, r.request_id))
        if r.action is Action.CREATE:
            binding[r.task_id] = r.channel if wanted else ""
            continue
        if r.task_id not in binding:
            continue  # a task of an earlier run: its binding history is not ours to replay
        mutations += 1
        current = binding[r.task_id]
        if current not in ("", r.channel):
            bad.append(f"seq {r.seq}: {r.action.value} of task {r.task_id} bound to "
                       f"{current!r} came from channel {r.channel!r}")
        if r.action is Action.UPDATE and wanted is not None:
            binding[r.task_id] = r.channel if wanted else ""
    for task_id, channel in binding.items():
        if stored.get(task_id, channel) != channel:
            bad.append(f"task {task_id}: stored binding {stored[task_id]!r}, replay says "
                       f"{channel!r}")
    ok = not bad
    detail = (f"{mutations} mutations of {len(binding)} tasks created this run, each from "
              "an allowed channel" if ok else f"{len(bad)} violation(s)")
    return Check("bound_tasks_mutated_only_from_their_channel", ok, detail, _examples(bad))


def bad_requests_rejected(sent: list[Sent]) -> Check:
    """No deliberately bad request was accepted."""
    bad = [s for s in sent if s.bad]
    accepted = [f"{s.bad}: {s.peer_id} {s.request_id!r} accepted" for s in bad if s.accepted]
    ok = not accepted
    detail = f"{len(bad)} bad requests, {len(accepted)} accepted"
    return Check("bad_requests_rejected", ok, detail, _examples(accepted))


def every_request_answered(sent: list[Sent]) -> Check:
    """Every request sent got a reply."""
    lost = [f"{s.peer_id} {s.request_id!r}" for s in sent if s.accepted is None]
    ok = not lost
    detail = f"{len(sent)} requests, {len(lost)} without a reply"
    return Check("every_request_answered", ok, detail, _examples(lost))
