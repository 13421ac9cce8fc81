"""Verification of a store file: keyed chain, checkpoint, anchors, and store-vs-audit
agreement.

Pure checks over a read-only snapshot (`audit.read`), returning a structured `VerifyResult`
that the `task-ingress audit verify` command prints and that other code (the swarm's
invariants, crash tests) can assert on. Nothing here writes.

What is checked (SPEC §6), nothing of it excused by anything stored in the database:
- key: the audit key is at hand (--key, $TASK_INGRESS_AUDIT_KEY or `<store>.key`);
  without it nothing can be authenticated, which fails;
- chain: records are numbered 1..N without gaps, the first `prev_hash` is the store's
  genesis hash (from its store id), each later one its predecessor's hash, and each
  `hash` is the HMAC of the record's contents under the key (an edited, deleted or
  re-chained record fails);
- checkpoint (`<store>.checkpoint`, written when the store is created and at least every
  1,000 records / second after): it exists, its MAC holds, it names this store, the record
  at its seq exists and has its hash (a deleted tail, a deleted, copied or forged
  checkpoint fails). Records after it are covered by the keyed chain;
- anchor (`--expect-seq`, `--expect-head`): the log still reaches what the operator saw;
- store: every accepted record's write is in the store (create -> task, enqueue -> run,
  every acceptance -> its accepted-request row) and every task, run and accepted-request
  row is vouched for by an accepted record or by a pending outbox row (an accepted write
  whose record Audit chains on its next start: reported, not an error).

A legacy store (schema 3 or older: no store id, an unkeyed sha256 chain) fails as such
unless `allow_legacy`, which checks it by the old rules (chain, legacy checkpoint).
"""

from __future__ import annotations

import os
import sqlite3
from collections import Counter
from dataclasses import asdict, dataclass, replace
from typing import Any, NamedTuple

from task_ingress.actors.rules.chain import (
    ChainKey,
    ChainWalk,
    Seal,
    genesis_hash,
    legacy_checkpoint_ok,
    record_hash,
)
from task_ingress.actors.rules.gate import safe_field
from task_ingress.actors.storage.auditlog import (
    AUDIT_NAMES,
    KEY_ENV,
    Checkpoint,
    checkpoint_path,
    key_path,
    read_checkpoint,
)
from task_ingress.messages.audit import GENESIS_HASH
from task_ingress.messages.reasons import Action
from task_ingress.runtime.audit.anchor import Anchor
from task_ingress.runtime.audit.read import (
    OutboxEntry,
    StoreSnapshot,
    StoreUnreadable,
    load_key,
    open_readonly,
    snapshot,
    store_file_problem,
)

MAX_PROBLEMS = 100


@dataclass(frozen=True)
class Problem:
    """One disagreement; `seq` names the audit record concerned, when there is one."""

    kind: str
    """'key', 'chain', 'checkpoint', 'anchor', 'legacy', 'roster' or 'store'."""
    seq: int | None
    detail: str

    def __str__(self) -> str:
        where = f"record seq {self.seq}" if self.seq is not None else "store"
        return f"{self.kind}: {where}: {self.detail}"


class ProblemList:
    """What a verification result with a `problems` tuple answers (a store's, a shard's)."""

    problems: tuple[Problem, ...]

    @property
    def ok(self) -> bool:
        """True when nothing disagrees."""
        return not self.problems

    @property
    def first_problem(self) -> Problem | None:
        """The problem at the lowest record seq (problems of no record come last)."""
        if not self.problems:
            return None
        return min(self.problems, key=lambda p: (p.seq is None, p.seq or 0))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for `audit verify --json` and reports)."""
        data: dict[str, Any] = asdict(self)  # type: ignore[call-overload]
        data["ok"] = self.ok
        first = self.first_problem
        data["first_problem"] = None if first is None else asdict(first)
        return data


@dataclass(frozen=True)
class VerifyResult(ProblemList):
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
    store_id: str | None = None
    """The store's id (None: a legacy store, or none could be read)."""
    legacy: bool = False
    """A legacy store (schema 3 or older): unkeyed chain, checked by the old rules (only
    with allow_legacy)."""



def verify_store(
    store_path: str,
    key: str | None = None,
    anchor: Anchor | None = None,
    allow_legacy: bool = False,
) -> VerifyResult:
    """Verify a store file read-only. Raises StoreUnreadable when it cannot be read at all
    and nothing says it should exist, BadKey when `key` (or the environment's) is not hex.

    The checkpoint is read before the database so that a live writer's newer checkpoint
    never vouches for records the snapshot cannot see yet.
    """
    cp, cp_error = read_checkpoint(store_path)
    key_bytes, key_error = load_key(store_path, key)
    missing = store_file_problem(store_path)
    if missing is not None and not os.path.isdir(store_path) and (cp or anchor):
        # The checkpoint (or the operator's anchor) says a log was here: it is gone.
        if cp is not None:
            what = f"its checkpoint vouches for seq {cp.seq}"
        else:
            what = f"the {anchor.describe() if anchor else 'anchor'} says it existed"
        return _gone(cp, f"{missing}, yet {what}: the store was deleted or emptied")
    with open_readonly(store_path) as conn, snapshot(conn) as snap:
        try:
            result = verify_snapshot(snap, cp, cp_error, key_bytes, key_error, anchor,
                                     allow_legacy, checkpoint_path(store_path))
        except sqlite3.Error as exc:
            raise StoreUnreadable(f"reading the audit failed: {exc}") from exc
    if key_bytes is not None and key is None and not os.environ.get(KEY_ENV, "").strip():
        # Whoever can replace that file can re-sign the whole log under a key of their own.
        note = (f"the key was read from {key_path(store_path)} beside the store: whoever can "
                "replace that file can re-sign the log; keep the key elsewhere (--key, "
                f"${KEY_ENV}) or check against an anchor (--expect-head)")
        result = replace(result, notes=(*result.notes, note))
    return result


def _gone(cp: Checkpoint | None, why: str) -> VerifyResult:
    return VerifyResult(records=0, head_seq=0, head_hash="", checkpoint=cp, pending_outbox=0,
                        tasks=0, runs=0, problems=(Problem("store", None, why),), notes=(),
                        store_id=cp.store_id if cp else None)


def verify_snapshot(
    snap: StoreSnapshot,
    checkpoint: Checkpoint | None,
    checkpoint_error: str | None,
    key: bytes | None,
    key_error: str | None = None,
    anchor: Anchor | None = None,
    allow_legacy: bool = False,
    checkpoint_file: str = "<store>.checkpoint",
) -> VerifyResult:
    """Check chain, checkpoint, anchor and store against each other (no I/O but the row
    stream)."""
    store_id = snap.meta.get("store_id")
    legacy = store_id is None
    chain_key = ChainKey(key) if key else None
    problems: list[Problem] = []
    notes: list[str] = []
    if legacy:
        chain = _ChainPass(record_hash, GENESIS_HASH, checkpoint, anchor)
        if not allow_legacy:
            problems.append(Problem("legacy", None, _LEGACY))
    else:
        assert store_id is not None
        if key_error is not None or chain_key is None:
            problems.append(Problem("key", None, key_error or _NO_KEY))
        seal = chain_key.seal if chain_key else None
        chain = _ChainPass(seal, genesis_hash(store_id), checkpoint, anchor)
    for row in snap.audit_rows:
        chain.feed(row)
    if chain.problem is not None:
        problems.append(chain.problem)
    if legacy:
        if allow_legacy:
            problems += _check_legacy_checkpoint(chain, checkpoint, checkpoint_error, key,
                                                 key_error, checkpoint_file)
            notes.append("legacy unkeyed chain (schema 3 or older), checked by the old "
                         "rules: whoever can write the store could have rewritten it")
    elif chain_key is not None:
        assert store_id is not None
        problems += _check_checkpoint(chain, checkpoint, checkpoint_error, chain_key,
                                      store_id, checkpoint_file, notes)
        if anchor is not None:
            problems += _check_anchor(chain, anchor, chain_key, store_id)
        if "legacy_records" in snap.meta:
            notes.append(_legacy_note(snap.meta))
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
        store_id=store_id, legacy=legacy,
    )


_LEGACY = ("legacy unkeyed chain (schema 3 or older, no store id): a rewrite by whoever can "
           "write the store is not detectable. Start the runtime once to re-chain it under "
           "the key, or pass --allow-legacy to check it by the old rules")
_NO_KEY = (f"no audit key, so neither the chain nor the checkpoint can be authenticated (pass "
           f"--key, set ${KEY_ENV}, or restore the <store>.key file)")


def _legacy_note(meta: dict[str, str]) -> str:
    n = meta.get("legacy_records", "?")
    vouched = meta.get("legacy_checkpoint", "none")
    return (f"records 1-{n} were written as an unkeyed (schema 3 or older) chain and "
            f"re-chained under the key when the store was migrated (the legacy checkpoint "
            f"vouched for {vouched}); before that they were protected by the unkeyed chain "
            "only")


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
    keeping only what the checkpoint, anchor and store checks need, so memory stays small.
    `seal` None (no key): rows are counted and read, nothing is authenticated."""

    def __init__(self, seal: Seal | None, genesis: str, checkpoint: Checkpoint | None,
                 anchor: Anchor | None) -> None:
        self.genesis = genesis
        self.checkpoint_seq = checkpoint.seq if checkpoint else None
        self.anchor_seq = anchor.seq if anchor else None
        self.anchor_head = anchor.head if anchor else None
        self.count = 0
        self.head_seq = 0
        self.head_hash = ""
        self.walk = ChainWalk(seal, genesis) if seal is not None else None
        self.problem: Problem | None = None
        self.hash_at_checkpoint: str | None = None
        self.hash_at_anchor: str | None = None
        self.anchor_head_seq: int | None = None
        self.accepted: list[Accepted] = []

    def feed(self, row: tuple[Any, ...]) -> None:
        """Check one row (rows arrive in seq order)."""
        self.count += 1
        try:
            fields = dict(zip(AUDIT_NAMES, row, strict=True))
            fields["replay"] = bool(fields["replay"])
            seq = int(fields["seq"])
            why = self.walk.step(fields) if self.walk is not None else None
        except (TypeError, ValueError) as exc:
            self._fail(_int_or_none(row[0]), f"record does not parse: {exc}")
            return
        if why is not None:
            self._fail(seq, why)
        stored = str(fields["hash"])
        self.head_seq, self.head_hash = seq, stored
        if seq == self.checkpoint_seq:
            self.hash_at_checkpoint = stored
        if seq == self.anchor_seq:
            self.hash_at_anchor = stored
        if stored == self.anchor_head and self.anchor_head_seq is None:
            self.anchor_head_seq = seq
        if fields["outcome"] == "accepted":
            self.accepted.append(Accepted(
                seq, fields["workspace"], fields["channel"], fields["peer_id"],
                fields["request_id"], fields["action"], fields["task_id"], fields["run_id"],
                fields["replay"]))

    def hash_at(self, seq: int, seen: str | None) -> str | None:
        """The hash the chain holds at `seq` (seq 0: the genesis hash)."""
        return self.genesis if seq == 0 else seen

    def _fail(self, seq: int | None, why: str) -> None:
        if self.problem is None:  # later breaks follow from the first one
            self.problem = Problem("chain", seq, why)


def _check_checkpoint(
    chain: _ChainPass,
    cp: Checkpoint | None,
    cp_error: str | None,
    key: ChainKey,
    store_id: str,
    checkpoint_file: str,
    notes: list[str],
) -> list[Problem]:
    if cp_error is not None:
        return [Problem("checkpoint", None, cp_error)]
    head_seq = chain.head_seq
    if cp is None:
        return [Problem("checkpoint", None,
                        f"checkpoint file {checkpoint_file} is missing: every store has one "
                        "from its creation (deleted?)")]
    if cp.store_id is None:
        return [Problem("checkpoint", None, "the checkpoint is in the legacy format, but the "
                        "store's chain is keyed (an old checkpoint put back?)")]
    if not cp.verifies(key):
        return [Problem("checkpoint", None,
                        "checkpoint MAC does not verify (forged checkpoint or wrong key)")]
    if cp.store_id != store_id:
        return [Problem("checkpoint", None,
                        f"the checkpoint belongs to store {cp.store_id}, this database is "
                        f"store {store_id} (copied from another store?)")]
    if cp.seq > head_seq:
        return [Problem("checkpoint", head_seq + 1,
                        f"tail deleted: the checkpoint vouches for records up to seq {cp.seq} "
                        f"but the audit ends at seq {head_seq}")]
    at_cp = chain.hash_at(cp.seq, chain.hash_at_checkpoint)
    if at_cp is None:
        return [Problem("checkpoint", cp.seq, "the checkpointed record is missing")]
    if at_cp != cp.hash:
        return [Problem("checkpoint", cp.seq or None,
                        "record hash differs from the checkpoint: the chain up to this record "
                        "was rewritten")]
    if cp.seq < head_seq:
        notes.append(f"{head_seq - cp.seq} record(s) after the last checkpoint (seq {cp.seq}) "
                     "are covered by the keyed chain; only an anchor (--expect-seq) would "
                     "notice them deleted")
    return []


def _check_anchor(chain: _ChainPass, anchor: Anchor, key: ChainKey, store_id: str
                  ) -> list[Problem]:
    """The operator's outside knowledge against the log."""
    what = anchor.describe()
    if anchor.mac is not None and not anchor.mac_ok(key):
        return [Problem("anchor", None, f"the head line's MAC does not verify under this key "
                        f"(altered, or made with another key): {what}")]
    if anchor.store_id is not None and anchor.store_id != store_id:
        return [Problem("anchor", None, f"this is store {store_id}, not the anchored store "
                        f"{anchor.store_id}: the store was replaced")]
    if anchor.seq is not None:
        if anchor.seq > chain.head_seq:
            return [Problem("anchor", chain.head_seq + 1,
                            f"tail deleted: the audit ends at seq {chain.head_seq} but the "
                            f"anchor saw it reach seq {anchor.seq}")]
        if anchor.head is not None and \
                chain.hash_at(anchor.seq, chain.hash_at_anchor) != anchor.head:
            return [Problem("anchor", anchor.seq or None,
                            f"the record at seq {anchor.seq} does not have the anchored hash: "
                            "the log up to it was rewritten, or rolled back and regrown")]
    elif anchor.head is not None and chain.anchor_head_seq is None \
            and anchor.head != chain.genesis:
        return [Problem("anchor", None, f"no record has the anchored hash {anchor.head}: the "
                        "log was truncated before it, rewritten, or replaced")]
    return []


def _check_legacy_checkpoint(
    chain: _ChainPass,
    cp: Checkpoint | None,
    cp_error: str | None,
    key: bytes | None,
    key_error: str | None,
    checkpoint_file: str,
) -> list[Problem]:
    """The legacy rules, for --allow-legacy: the legacy checkpoint must exist and vouch
    for the chain (no 'young chain' excuse: nothing in the database is trusted for that)."""
    if cp_error is not None:
        return [Problem("checkpoint", None, cp_error)]
    if cp is None:
        return [Problem("checkpoint", None, f"checkpoint file {checkpoint_file} is missing")]
    if key_error is not None or key is None:
        return [Problem("key", None, key_error or _NO_KEY)]
    if cp.store_id is not None or not legacy_checkpoint_ok(key, cp.seq, cp.hash, cp.mac):
        return [Problem("checkpoint", None,
                        "checkpoint MAC does not verify (forged checkpoint or wrong key)")]
    if cp.seq > chain.head_seq:
        return [Problem("checkpoint", chain.head_seq + 1,
                        f"tail deleted: the checkpoint vouches for records up to seq {cp.seq} "
                        f"but the audit ends at seq {chain.head_seq}")]
    if chain.hash_at_checkpoint != cp.hash:
        return [Problem("checkpoint", cp.seq, "record hash differs from the checkpoint: the "
                        "chain up to this record was rewritten")]
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
