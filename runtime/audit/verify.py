"""Verification of a store file: hash chain, checkpoint, and store-vs-audit agreement.

Pure checks over a read-only snapshot (`audit.read`), returning a structured `VerifyResult`
that the `task-ingress audit verify` command prints and that other code (the swarm's
invariants, crash tests) can assert on. Nothing here writes.

What is checked (SPEC §6):
- chain: records are numbered 1..N without gaps, each `prev_hash` is its predecessor's
  hash, each `hash` matches the record's contents (an edited or deleted record fails);
- checkpoint (`<store>.checkpoint`, HMAC-SHA256 with the operator key): its MAC holds, its
  seq exists in the audit and the record there has its hash (a deleted tail or a rewritten
  chain fails). Records after an older checkpoint are fine when the chain holds;
- store: every accepted record's write is in the store (create -> task, enqueue -> run,
  every acceptance -> its accepted-request row) and every task, run and accepted-request
  row is vouched for by an accepted record or by a pending outbox row (an accepted write
  whose record Audit chains on its next start: reported, not an error).
"""

from __future__ import annotations

import sqlite3
from array import array
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

from task_ingress.actors.rules.chain import ChainWalk, checkpoint_ok
from task_ingress.actors.rules.gate import safe_field
from task_ingress.actors.storage.auditlog import (
    AUDIT_NAMES,
    KEY_ENV,
    Checkpoint,
    read_checkpoint,
)
from task_ingress.messages.audit import CHECKPOINT_EVERY, CHECKPOINT_SECONDS
from task_ingress.messages.reasons import Action
from task_ingress.runtime.audit.read import (
    OutboxEntry,
    StoreSnapshot,
    StoreUnreadable,
    load_key,
    open_readonly,
    snapshot,
)

CRASH_GRACE = 0.5
"""Seconds between a commit and its checkpoint that a crash may interrupt."""
MAX_PROBLEMS = 100


@dataclass(frozen=True)
class Problem:
    """One disagreement; `seq` names the audit record concerned, when there is one."""

    kind: str
    """'chain', 'checkpoint' or 'store'."""
    seq: int | None
    detail: str

    def __str__(self) -> str:
        where = f"record seq {self.seq}" if self.seq is not None else "store"
        return f"{self.kind}: {where}: {self.detail}"


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of verifying one store; `ok` when chain, checkpoint and store agree."""

    records: int
    head_seq: int
    head_hash: str
    checkpoint: Checkpoint | None
    pending_outbox: int
    tasks: int
    runs: int
    problems: tuple[Problem, ...]
    notes: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """True when nothing disagrees."""
        return not self.problems

    @property
    def first_problem(self) -> Problem | None:
        """The problem at the lowest record seq (store-only problems come last)."""
        if not self.problems:
            return None
        return min(self.problems, key=lambda p: (p.seq is None, p.seq or 0))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for `audit verify --json` and reports)."""
        data = asdict(self)
        data["ok"] = self.ok
        first = self.first_problem
        data["first_problem"] = None if first is None else asdict(first)
        return data


def verify_store(
    store_path: str,
    key: str | None = None,
    checkpoint_every: int = CHECKPOINT_EVERY,
    checkpoint_seconds: float = CHECKPOINT_SECONDS,
) -> VerifyResult:
    """Verify a store file read-only. Raises StoreUnreadable when it cannot be read at all.

    The checkpoint is read before the database so that a live writer's newer checkpoint
    never vouches for records the snapshot cannot see yet.
    """
    cp, cp_error = read_checkpoint(store_path)
    key_bytes, key_error = load_key(store_path, key)
    with open_readonly(store_path) as conn, snapshot(conn) as snap:
        try:
            return verify_snapshot(snap, cp, cp_error, key_bytes, key_error,
                                   checkpoint_every, checkpoint_seconds)
        except sqlite3.Error as exc:
            raise StoreUnreadable(f"reading the audit failed: {exc}") from exc


def verify_snapshot(
    snap: StoreSnapshot,
    checkpoint: Checkpoint | None,
    checkpoint_error: str | None,
    key: bytes | None,
    key_error: str | None = None,
    checkpoint_every: int = CHECKPOINT_EVERY,
    checkpoint_seconds: float = CHECKPOINT_SECONDS,
) -> VerifyResult:
    """Check chain, checkpoint and store against each other (no I/O but the row stream)."""
    problems: list[Problem] = []
    notes: list[str] = []
    chain = _ChainPass(checkpoint.seq if checkpoint else None)
    for row in snap.audit_rows:
        chain.feed(row)
    if chain.problem is not None:
        problems.append(chain.problem)
    problems += _check_checkpoint(chain, checkpoint, checkpoint_error, key, key_error,
                                  checkpoint_every, checkpoint_seconds, notes)
    problems += _check_store(chain.accepted, snap)
    if snap.outbox:
        notes.append(f"{len(snap.outbox)} pending outbox row(s): accepted writes whose audit "
                     "records the runtime chains on its next start")
    if len(problems) > MAX_PROBLEMS:
        notes.append(f"{len(problems) - MAX_PROBLEMS} further problem(s) not listed")
        problems = sorted(problems, key=lambda p: (p.seq is None, p.seq or 0))[:MAX_PROBLEMS]
    return VerifyResult(
        records=chain.count, head_seq=chain.head_seq, head_hash=chain.head_hash,
        checkpoint=checkpoint, pending_outbox=len(snap.outbox), tasks=len(snap.tasks),
        runs=len(snap.runs), problems=tuple(problems), notes=tuple(notes),
    )


class Accepted(NamedTuple):
    """What the store check needs of an accepted record."""

    seq: int
    workspace: str
    channel: str
    peer_id: str
    request_id: str
    action: str
    task_id: str | None
    run_id: str | None
    replay: bool


class _ChainPass:
    """One pass over the audit rows: the chain rule (`chain.ChainWalk`) on raw rows,
    keeping only what the checkpoint and store checks need, so memory stays small."""

    def __init__(self, checkpoint_seq: int | None) -> None:
        self.checkpoint_seq = checkpoint_seq
        self.count = 0
        self.head_seq = 0
        self.head_hash = ""
        self.walk = ChainWalk()
        self.problem: Problem | None = None
        self.times = array("d")
        self.hash_at_checkpoint: str | None = None
        self.accepted: list[Accepted] = []

    def feed(self, row: tuple[Any, ...]) -> None:
        """Check one row (rows arrive in seq order)."""
        self.count += 1
        try:
            fields = dict(zip(AUDIT_NAMES, row, strict=True))
            fields["replay"] = bool(fields["replay"])
            seq, at = int(fields["seq"]), float(fields["at"])
            why = self.walk.step(fields)
        except (TypeError, ValueError) as exc:
            self._fail(_int_or_none(row[0]), f"record does not parse: {exc}")
            return
        if why is not None:
            self._fail(seq, why)
        stored = fields["hash"]
        self.head_seq, self.head_hash = seq, str(stored)
        self.times.append(at)
        if seq == self.checkpoint_seq:
            self.hash_at_checkpoint = str(stored)
        if fields["outcome"] == "accepted":
            self.accepted.append(Accepted(
                seq, fields["workspace"], fields["channel"], fields["peer_id"],
                fields["request_id"], fields["action"], fields["task_id"], fields["run_id"],
                fields["replay"]))

    def _fail(self, seq: int | None, why: str) -> None:
        if self.problem is None:  # later breaks follow from the first one
            self.problem = Problem("chain", seq, why)


def _check_checkpoint(
    chain: _ChainPass,
    cp: Checkpoint | None,
    cp_error: str | None,
    key: bytes | None,
    key_error: str | None,
    checkpoint_every: int,
    checkpoint_seconds: float,
    notes: list[str],
) -> list[Problem]:
    if cp_error is not None:
        return [Problem("checkpoint", None, cp_error)]
    head_seq = chain.head_seq
    if cp is None:
        times = chain.times
        if not times:
            return []
        # Audit checkpoints every N records / T seconds while records arrive, so a chain
        # past either threshold without one has lost its checkpoint file. Records of the
        # last CRASH_GRACE seconds are excused: a crash may land between a commit and the
        # checkpoint that follows it.
        first_at, last_at = times[0], times[-1]
        settled = [t for t in times if t <= last_at - CRASH_GRACE]
        span = max(settled) - first_at if settled else 0.0
        if len(settled) >= checkpoint_every or span >= checkpoint_seconds:
            return [Problem("checkpoint", None,
                            f"checkpoint file missing, yet {len(times)} records spanning "
                            f"{last_at - first_at:.1f}s must have produced one (deleted?)")]
        notes.append("no checkpoint yet (young chain): a deleted tail cannot be detected")
        return []
    if key_error is not None:
        return [Problem("checkpoint", cp.seq, key_error)]
    if key is None:
        return [Problem("checkpoint", cp.seq, "no key to authenticate the checkpoint "
                        f"(set ${KEY_ENV} or restore the <store>.key file)")]
    if not checkpoint_ok(key, cp.seq, cp.hash, cp.mac):
        return [Problem("checkpoint", cp.seq,
                        "checkpoint MAC does not verify (forged checkpoint or wrong key)")]
    if cp.seq > head_seq:
        return [Problem("checkpoint", head_seq + 1,
                        f"tail deleted: the checkpoint vouches for records up to seq {cp.seq} "
                        f"but the audit ends at seq {head_seq}")]
    if chain.hash_at_checkpoint is None:
        return [Problem("checkpoint", cp.seq, "the checkpointed record is missing")]
    if chain.hash_at_checkpoint != cp.hash:
        return [Problem("checkpoint", cp.seq,
                        "record hash differs from the checkpoint: the chain up to this record "
                        "was rewritten")]
    if cp.seq < head_seq:
        notes.append(f"{head_seq - cp.seq} record(s) after the last checkpoint (seq {cp.seq}) "
                     "are covered by the chain only")
    return []


def _check_store(records: list[Accepted], snap: StoreSnapshot) -> list[Problem]:
    """Accepted records against tasks, runs and accepted-request rows, both ways."""
    problems: list[Problem] = []
    for outbox_id in snap.bad_outbox:
        problems.append(Problem("store", None, f"outbox row {outbox_id} does not decode "
                                "(neither a msgpack nor a JSON record)"))
    rows_by_key: dict[tuple[str, str, str, str], list[tuple[str, str | None, str | None]]] = {}
    for ws, ch, peer, rid, action, task_id, run_id in snap.accepted:
        key = (ws, ch, peer, safe_field(rid))
        rows_by_key.setdefault(key, []).append((action, task_id, run_id))
    vouched: Counter[tuple[str, str, str, str, str, str | None, str | None]] = Counter()
    created: dict[str, int] = {}
    enqueued: set[str] = set()
    for rec in records:
        problems += _check_accepted(rec, snap, rows_by_key)
        if rec.replay:
            continue
        vouched[(rec.workspace, rec.channel, rec.peer_id, rec.request_id, rec.action,
                 rec.task_id, rec.run_id)] += 1
        if rec.action == Action.CREATE.value and rec.task_id is not None:
            if rec.task_id in created:
                problems.append(Problem("store", rec.seq, f"task {rec.task_id} created twice "
                                        f"(first at seq {created[rec.task_id]})"))
            created.setdefault(rec.task_id, rec.seq)
        if rec.action == Action.ENQUEUE.value and rec.run_id is not None:
            enqueued.add(rec.run_id)
    for entry in snap.outbox:
        f = entry.fields
        vouched[(str(f.get("workspace")), str(f.get("channel")), str(f.get("peer_id")),
                 str(f.get("request_id")), str(f.get("action")), f.get("task_id"),
                 f.get("run_id"))] += 1
        if f.get("action") == Action.CREATE.value and isinstance(f.get("task_id"), str):
            created.setdefault(f["task_id"], 0)
        if f.get("action") == Action.ENQUEUE.value and isinstance(f.get("run_id"), str):
            enqueued.add(f["run_id"])
        problems += _check_outbox_entry(entry, snap)
    for ws, ch, peer, rid, action, task_id, run_id in snap.accepted:
        key7 = (ws, ch, peer, safe_field(rid), action, task_id, run_id)
        if vouched[key7] > 0:
            vouched[key7] -= 1
        else:
            problems.append(Problem("store", None, f"accepted request {ws}/{ch}/{peer}/"
                                    f"{safe_field(rid)} ({action}) has no accepted record"))
    for task_id in sorted(set(snap.tasks) - set(created)):
        problems.append(Problem("store", None,
                                f"task {safe_field(task_id)} has no accepted task.create record"))
    for run_id in sorted(set(snap.runs) - enqueued):
        problems.append(Problem("store", None,
                                f"run {safe_field(run_id)} has no accepted enqueue record"))
    return problems


def _check_accepted(
    rec: Accepted,
    snap: StoreSnapshot,
    rows_by_key: dict[tuple[str, str, str, str], list[tuple[str, str | None, str | None]]],
) -> list[Problem]:
    """An accepted record's write must be in the store."""
    out: list[Problem] = []
    if rec.task_id is None or snap.tasks.get(rec.task_id) != rec.workspace:
        out.append(Problem("store", rec.seq, f"accepted {rec.action}: task "
                           f"{rec.task_id} is not in the store (workspace {rec.workspace})"))
    if rec.action == Action.ENQUEUE.value:
        run = snap.runs.get(rec.run_id or "")
        if run is None or run != (rec.task_id, rec.workspace):
            out.append(Problem("store", rec.seq, f"accepted enqueue: run {rec.run_id} of "
                               f"task {rec.task_id} is not in the store"))
    key = (rec.workspace, rec.channel, rec.peer_id, rec.request_id)
    if (rec.action, rec.task_id, rec.run_id) not in rows_by_key.get(key, []):
        out.append(Problem("store", rec.seq, f"accepted request {rec.request_id} has no "
                           "matching accepted-request row in the store"))
    return out


def _check_outbox_entry(entry: OutboxEntry, snap: StoreSnapshot) -> list[Problem]:
    """A pending outbox row stands for a committed write: the write must be there."""
    f = entry.fields
    task_id, run_id = f.get("task_id"), f.get("run_id")
    if f.get("outcome") != "accepted" or not isinstance(task_id, str) \
            or task_id not in snap.tasks:
        return [Problem("store", None, f"outbox row {entry.id} is not an accepted write "
                        "present in the store")]
    if f.get("action") == Action.ENQUEUE.value and (not isinstance(run_id, str)
                                                    or run_id not in snap.runs):
        return [Problem("store", None, f"outbox row {entry.id}: run {run_id} is not in the "
                        "store")]
    return []


def _int_or_none(value: Any) -> int | None:
    return value if type(value) is int else None
