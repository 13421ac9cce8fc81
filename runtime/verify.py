"""Verification of a store file: hash chain, checkpoint, and store-vs-audit agreement.

Pure functions over a read-only snapshot, returning a structured `VerifyResult` that the
`task-ingress audit verify` command prints and that other code (the swarm's invariants,
crash tests) can assert on. Nothing here writes: the store is opened with a read-only URI.

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

import json
import os
import sqlite3
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from task_ingress.actors.audit import AUDIT_COLUMNS, checkpoint_path
from task_ingress.actors.chain import checkpoint_ok, record_hash
from task_ingress.actors.gate import safe_field
from task_ingress.actors.schema import decode_outbox
from task_ingress.messages.audit import GENESIS_HASH
from task_ingress.messages.reasons import Action

AUDIT_NAMES = tuple(c.strip() for c in AUDIT_COLUMNS.split(","))

KEY_ENV = "TASK_INGRESS_AUDIT_KEY"
CHECKPOINT_EVERY = 1000
"""Audit writes a checkpoint at least every this many records (Settings.checkpoint_every)."""
CHECKPOINT_SECONDS = 1.0
"""... and at least this often while records arrive (Settings.checkpoint_seconds)."""
CRASH_GRACE = 0.5
"""Seconds between a commit and its checkpoint that a crash may interrupt."""
MAX_PROBLEMS = 100


class StoreUnreadable(Exception):
    """The store file is missing or is not a task-ingress store (not: it fails verification)."""


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
class Checkpoint:
    """The checkpoint file's content: latest seq and hash, their HMAC, and when written."""

    seq: int
    hash: str
    mac: str
    at: float


@dataclass(frozen=True)
class OutboxEntry:
    """A pending outbox row: an accepted write whose audit record is not chained yet."""

    id: int
    fields: dict[str, Any]


@dataclass(frozen=True)
class StoreSnapshot:
    """Everything verification reads from the store, taken in one read transaction."""

    audit_rows: Iterable[tuple[Any, ...]]
    """`AUDIT_COLUMNS` rows in seq order; consumed once, so a large audit is streamed."""
    tasks: dict[str, str]
    """task_id -> workspace."""
    runs: dict[str, tuple[str, str]]
    """run_id -> (task_id, workspace)."""
    accepted: list[tuple[str, str, str, str, str, str | None, str | None]]
    """(workspace, channel, peer_id, request_id, action, task_id, run_id) rows."""
    outbox: list[OutboxEntry]
    bad_outbox: list[int] = field(default_factory=list)
    """IDs of outbox rows whose record does not parse."""


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


# ---- reading (read-only) -------------------------------------------------------------


def readonly_uri(path: str) -> str:
    """A `file:` URI that opens the store read-only.

    With no `-wal` file beside it the store is fully checkpointed and no writer has it
    open, so `immutable=1` reads it without creating `-wal`/`-shm` files; otherwise the
    WAL must be read (a SIGKILLed writer leaves committed pages there) with `mode=ro`.
    """
    uri = Path(path).absolute().as_uri() + "?mode=ro"
    if not os.path.exists(path + "-wal"):
        uri += "&immutable=1"
    return uri


@contextmanager
def open_readonly(path: str) -> Iterator[sqlite3.Connection]:
    """A read-only connection to the store file; raises StoreUnreadable when it is absent."""
    if not os.path.isfile(path):
        raise StoreUnreadable(f"no store file at {path}")
    try:
        conn = sqlite3.connect(readonly_uri(path), uri=True, timeout=30.0)
    except sqlite3.Error as exc:
        raise StoreUnreadable(f"cannot open {path} read-only: {exc}") from exc
    try:
        yield conn
    finally:
        conn.close()


@contextmanager
def snapshot(conn: sqlite3.Connection) -> Iterator[StoreSnapshot]:
    """The store as of one read transaction; the audit rows stream from a cursor."""
    try:
        conn.execute("BEGIN")
    except sqlite3.Error as exc:
        raise StoreUnreadable(f"not a readable task-ingress store: {exc}") from exc
    try:
        try:
            # Workspaces as the audit stores them (safe form: SPEC 2 allows format chars).
            tasks = {r[0]: safe_field(r[1]) for r in conn.execute(
                "SELECT task_id, workspace FROM tasks").fetchall()}
            runs = {r[0]: (r[1], safe_field(r[2])) for r in conn.execute(
                "SELECT run_id, task_id, workspace FROM runs").fetchall()}
            accepted = [(safe_field(r[0]), *r[1:]) for r in conn.execute(
                "SELECT workspace, channel, peer_id, request_id, action, task_id, run_id "
                "FROM accepted_requests").fetchall()]
            outbox_rows = conn.execute("SELECT id, record FROM outbox ORDER BY id").fetchall()
            audit_rows = conn.execute(f"SELECT {AUDIT_COLUMNS} FROM audit ORDER BY seq")
        except sqlite3.Error as exc:
            raise StoreUnreadable(f"not a readable task-ingress store: {exc}") from exc
        outbox, bad_outbox = _parse_outbox(outbox_rows)
        yield StoreSnapshot(audit_rows, tasks, runs, accepted, outbox, bad_outbox)
    finally:
        conn.execute("COMMIT")


def read_snapshot(conn: sqlite3.Connection) -> StoreSnapshot:
    """Like `snapshot`, with the audit rows read into a list (callers may iterate twice)."""
    with snapshot(conn) as snap:
        rows = list(snap.audit_rows)
    return StoreSnapshot(rows, snap.tasks, snap.runs, snap.accepted, snap.outbox,
                         snap.bad_outbox)


def _parse_outbox(rows: list[tuple[Any, Any]]) -> tuple[list[OutboxEntry], list[int]]:
    outbox: list[OutboxEntry] = []
    bad: list[int] = []
    for outbox_id, blob in rows:
        fields = decode_outbox(blob)
        if fields is not None:
            outbox.append(OutboxEntry(int(outbox_id), fields))
        else:
            bad.append(int(outbox_id))
    return outbox, bad


def read_checkpoint(store_path: str) -> tuple[Checkpoint | None, str | None]:
    """(checkpoint, None), (None, None) when there is no file, or (None, why it is bad)."""
    path = checkpoint_path(store_path)
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as exc:
        return None, f"checkpoint file {path} is unreadable: {exc}"
    try:
        cp = Checkpoint(seq=data["seq"], hash=data["hash"], mac=data["mac"],
                        at=float(data.get("at", 0.0)))
    except (KeyError, TypeError, ValueError) as exc:
        return None, f"checkpoint file {path} is malformed: {exc!r}"
    if not (type(cp.seq) is int and isinstance(cp.hash, str) and isinstance(cp.mac, str)):
        return None, f"checkpoint file {path} has fields of the wrong type"
    return cp, None


def load_key(store_path: str, explicit: str | None = None) -> tuple[bytes | None, str | None]:
    """The checkpoint key as the runtime finds it: `explicit`, env TASK_INGRESS_AUDIT_KEY,
    else the key file `<store>.key`. Returns (key, None), (None, None) or (None, error)."""
    text = (explicit or os.environ.get(KEY_ENV, "")).strip()
    source = "the given key" if explicit else f"${KEY_ENV}"
    if not text:
        path = store_path + ".key"
        source = path
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read().strip()
        except FileNotFoundError:
            return None, None
        except OSError as exc:
            return None, f"key file {path} is unreadable: {exc}"
    try:
        return bytes.fromhex(text), None
    except ValueError:
        return None, f"the checkpoint key from {source} is not hex"


# ---- verification (pure) -------------------------------------------------------------


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
    """One pass over the audit rows: the chain rule of `actors.chain.first_bad_record`
    (contiguous seq from 1, prev_hash links, `record_hash` of the contents) on raw rows,
    keeping only what the checkpoint and store checks need, so memory stays small."""

    def __init__(self, checkpoint_seq: int | None) -> None:
        self.checkpoint_seq = checkpoint_seq
        self.count = 0
        self.head_seq = 0
        self.head_hash = ""
        self.prev = GENESIS_HASH
        self.expected = 1
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
            seq, at, digest = int(fields["seq"]), float(fields["at"]), record_hash(fields)
        except (TypeError, ValueError) as exc:
            self._fail(_int_or_none(row[0]), f"record does not parse: {exc}")
            return
        stored = fields["hash"]
        if seq != self.expected:
            missing = f"record {self.expected} is" if seq == self.expected + 1 else \
                f"records {self.expected}-{seq - 1} are"
            self._fail(seq, f"sequence gap: expected {self.expected} ({missing} missing)")
        elif fields["prev_hash"] != self.prev:
            self._fail(seq, "prev_hash does not match the previous record")
        elif digest != stored:
            self._fail(seq, "hash does not match the record's contents")
        self.prev, self.expected = stored, self.expected + 1
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
        problems.append(Problem("store", None, f"outbox row {outbox_id} is not a JSON record"))
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
