"""The audit log as stored (SPEC §6): the `audit` table's rows, the store's `meta` rows,
the checkpoint file beside the store, and where the audit key is found.

One description shared by the Audit actor (the only writer of the log), the benchmark's
baseline, and the read-only tools (`task-ingress audit`, the swarm's invariants), which
read the log without importing any actor.
"""

from __future__ import annotations

import json
import operator
import os
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from task_ingress.actors.rules import gate
from task_ingress.actors.rules.chain import ChainKey
from task_ingress.actors.storage.files import replace_private_file
from task_ingress.messages.audit import AuditRecord
from task_ingress.messages.outcomes import Outcome
from task_ingress.messages.protocol import InFlight
from task_ingress.messages.requests import IngressContext

AUDIT_COLUMNS = (
    "seq, at, workspace, channel, peer_id, actor, request_id, action, outcome, reason, "
    "task_id, run_id, payload_size, replay, prev_hash, hash, trust"
)
AUDIT_NAMES = tuple(c.strip() for c in AUDIT_COLUMNS.split(","))
_ADDED_COLUMNS = ("trust",)  # by a migration (schema 3); NULL in rows from before it
INSERT_AUDIT = (
    f"INSERT INTO audit ({AUDIT_COLUMNS}) VALUES "
    + "(" + ", ".join(f":{name}" for name in AUDIT_NAMES) + ")"
)
"""Inserts one record given as a dict of every column: the form that names its parameters
(the benchmark's lock baseline inserts so). The runtime's own writers use INSERT_AUDIT_ROW."""
INSERT_AUDIT_ROW = (
    f"INSERT INTO audit ({AUDIT_COLUMNS}) VALUES (" + ", ".join("?" * len(AUDIT_NAMES)) + ")"
)
"""Inserts one record given as `audit_row(record)` (executemany for a batch). Positional:
sqlite3 binds a named parameter by a dict lookup per column per row, ~1.7 µs a record more
at seventeen columns, on the hot path of every chained batch."""
_ROW = operator.itemgetter(*AUDIT_NAMES)


def audit_row(record: dict[str, Any]) -> tuple[Any, ...]:
    """A record's values in AUDIT_NAMES order: the parameters of INSERT_AUDIT_ROW."""
    row: tuple[Any, ...] = _ROW(record)
    return row

KEY_ENV = "TASK_INGRESS_AUDIT_KEY"


def _who(flight: InFlight) -> tuple[str, str, str, str, str]:
    """(workspace, channel, peer_id, actor, request_id) of its record, in safe form: a
    rejected request may carry anything."""
    ctx = flight.context
    if flight.checked:
        # The router found every identifier grammatical: channel and peer ID are ASCII, their
        # own safe form; a workspace or request ID may still hold non-printable (format)
        # characters (SPEC 2 allows them, as AGH does).
        return (gate.safe_field(ctx.workspace), ctx.channel, ctx.peer_id,
                gate.derived_actor(ctx), gate.safe_field(ctx.request_id))
    valid = gate.check_context(ctx) is None
    return (gate.safe_field(ctx.workspace), gate.safe_field(ctx.channel),
            gate.safe_field(ctx.peer_id),
            gate.safe_field(gate.derived_actor(ctx) if valid else "", 300),
            gate.safe_field(ctx.request_id))


def audit_fields(flight: InFlight, outcome: Outcome) -> dict[str, Any]:
    """The unchained part of a record: who, where, what, and how it was judged.

    Identifiers are stored in safe form: a rejected request may carry anything.
    """
    workspace, channel, peer_id, actor, request_id = _who(flight)
    return {
        "workspace": workspace,
        "channel": channel,
        "peer_id": peer_id,
        "actor": actor,
        "request_id": request_id,
        # str() of a StrEnum member is its code as a plain str (tests pin it), as `.value`
        # is, without Enum's Python-level descriptor (~0.1 us a read on every record).
        "action": str(outcome.action),
        "outcome": "accepted" if outcome.accepted else "rejected",
        "reason": str(outcome.reason) if outcome.reason else None,
        "task_id": outcome.task_id,
        "run_id": outcome.run_id,
        "payload_size": flight.submission.payload_size,
        "replay": outcome.replay,
        "trust": flight.context.trust,
    }


def chained_row(key: ChainKey, flight: InFlight, outcome: Outcome, seq: int, prev_hash: str,
                at: float) -> tuple[tuple[Any, ...], str]:
    """`audit_row(key.link(audit_fields(flight, outcome), seq, prev_hash, at))` and the
    record's hash: what TaskStore inserts for each request of a batch it chains.

    The same record built in one go, not as a dict of fields, a sealed copy and a row
    taken from that (~1.2 us a record less); tests pin it to that composition, checked
    and unchecked contexts, so the three stay one record."""
    workspace, channel, peer_id, actor, request_id = _who(flight)
    action = str(outcome.action)
    verdict = "accepted" if outcome.accepted else "rejected"
    reason = str(outcome.reason) if outcome.reason else None
    task_id, run_id, replay = outcome.task_id, outcome.run_id, outcome.replay
    payload_size, trust = flight.submission.payload_size, flight.context.trust
    digest = key.seal_ordered({
        "action": action, "actor": actor, "at": at, "channel": channel, "outcome": verdict,
        "payload_size": payload_size, "peer_id": peer_id, "prev_hash": prev_hash,
        "reason": reason, "replay": replay, "request_id": request_id, "run_id": run_id,
        "seq": seq, "task_id": task_id, "trust": trust, "workspace": workspace,
    })
    return (seq, at, workspace, channel, peer_id, actor, request_id, action, verdict, reason,
            task_id, run_id, payload_size, replay, prev_hash, digest, trust), digest


def record_key(ctx: IngressContext) -> tuple[str, str, str, str]:
    """Who sent which request, as its record names it (`audit_fields` keeps every identifier
    in safe form, and an admitted ID may hold characters that form escapes): what a
    recovered outcome (`Drained.key`) is matched against."""
    return (gate.safe_field(ctx.workspace), gate.safe_field(ctx.channel),
            gate.safe_field(ctx.peer_id), gate.safe_field(ctx.request_id))


def readable_columns(conn: sqlite3.Connection) -> str:
    """`AUDIT_COLUMNS` as this store can answer them, for readers that never migrate (the
    read-only tools): a store no runtime has opened since before schema 3 has no `trust`
    column, which reads as NULL, as it does in the rows written before it."""
    present = {str(row[1]) for row in conn.execute("PRAGMA table_info(audit)")}
    return ", ".join(name if name in present or name not in _ADDED_COLUMNS
                     else f"NULL AS {name}" for name in AUDIT_NAMES)


def record_from_row(row: tuple[Any, ...]) -> AuditRecord:
    """Build an AuditRecord from an `AUDIT_COLUMNS` row."""
    values = dict(zip(AUDIT_NAMES, row, strict=True))
    values["replay"] = bool(values["replay"])
    return AuditRecord.model_validate(values, strict=False)


SINCE_CLOCK_SLACK = 3600.0
"""How far back `at` may step between records (a wall clock set back) and a `since` read
still find every record written at or after `since`."""


def read_records(conn: sqlite3.Connection, since: float = 0.0) -> list[AuditRecord]:
    """Every committed record (written at or after `since`, unix seconds) in commit order.

    With `since`, the read starts after the newest record older than `since` minus
    SINCE_CLOCK_SLACK, found from the tail (seq is the rowid), not by scanning a whole
    log for a few minutes' records at a daemon's start (there is no index on `at`, which
    would cost every write)."""
    first = 0
    if since > 0:
        row = conn.execute("SELECT seq FROM audit WHERE at < ? ORDER BY seq DESC LIMIT 1",
                           (since - SINCE_CLOCK_SLACK,)).fetchone()
        first = int(row[0]) if row else 0
    rows = conn.execute(f"SELECT {AUDIT_COLUMNS} FROM audit WHERE seq > ? AND at >= ? "
                        "ORDER BY seq", (first, since)).fetchall()
    return [record_from_row(r) for r in rows]


def read_head(conn: sqlite3.Connection, genesis: str) -> tuple[int, str]:
    """(seq, hash) of the newest record; (0, genesis) for an empty log."""
    row = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    return (int(row[0]), str(row[1])) if row else (0, genesis)


def checkpoint_path(store_path: str) -> str:
    """Where checkpoints of a store file live: beside it, outside the database."""
    return store_path + ".checkpoint"


@dataclass(frozen=True)
class Checkpoint:
    """The checkpoint file's content: the store it belongs to, its latest seq and hash
    (seq 0 and the genesis hash for a store without records), when it was written, and the
    HMAC over all of them. `store_id` None: a legacy (schema 3 or older) checkpoint, whose
    MAC covers only seq and hash."""

    seq: int
    hash: str
    mac: str
    at: float
    store_id: str | None = None

    def verifies(self, key: ChainKey) -> bool:
        """True when the MAC holds under `key` (a legacy checkpoint never does)."""
        return self.store_id is not None and key.checkpoint_ok(
            self.store_id, self.seq, self.hash, self.at, self.mac)

    def to_json(self) -> str:
        """The file's text."""
        return json.dumps({"format": CHECKPOINT_FORMAT, "store_id": self.store_id,
                           "seq": self.seq, "hash": self.hash, "at": self.at, "mac": self.mac})


CHECKPOINT_FORMAT = 2


def make_checkpoint(key: ChainKey, store_id: str, seq: int, head: str,
                    at: float | None = None) -> Checkpoint:
    """A checkpoint of (seq, head) of store `store_id`, authenticated under `key`."""
    when = time.time() if at is None else at
    return Checkpoint(seq=seq, hash=head, mac=key.checkpoint_mac(store_id, seq, head, when),
                      at=when, store_id=store_id)


def write_checkpoint(store_path: str, key: ChainKey, store_id: str, seq: int, head: str
                     ) -> Checkpoint:
    """Authenticate (store_id, seq, head, now) under `key` and replace the checkpoint file
    atomically; returns what was written."""
    cp = make_checkpoint(key, store_id, seq, head)
    replace_private_file(checkpoint_path(store_path), cp.to_json())
    return cp



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
                        at=float(data.get("at", 0.0)), store_id=data.get("store_id"))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        return None, f"checkpoint file {path} is malformed: {exc!r}"
    if not (type(cp.seq) is int and cp.seq >= 0 and isinstance(cp.hash, str)
            and isinstance(cp.mac, str) and isinstance(cp.store_id, str | None)):
        return None, f"checkpoint file {path} has fields of the wrong type"
    return cp, None


def read_meta(conn: sqlite3.Connection) -> dict[str, str]:
    """The store's `meta` rows (store id, legacy migration facts); {} before schema 4."""
    try:
        return {str(k): str(v) for k, v in conn.execute("SELECT key, value FROM meta")}
    except sqlite3.OperationalError:  # no meta table: a schema 1-3 store
        return {}


def key_path(store_path: str) -> str:
    """Default location of the audit key of a store file."""
    return store_path + ".key"


def given_key(explicit: str | None = None) -> tuple[str, str] | None:
    """The audit key given outright and where it came from: `explicit`, else env
    TASK_INGRESS_AUDIT_KEY; None when neither. A database has no key file beside it, so
    this is its whole lookup. The text is not checked to be hex."""
    text = (explicit or os.environ.get(KEY_ENV, "")).strip()
    if text:
        return text, "the given key" if explicit else f"${KEY_ENV}"
    return None


def find_key(store_path: str, explicit: str | None = None) -> tuple[str, str] | None:
    """The audit key's text and where it came from, looked up in order: `explicit`,
    env TASK_INGRESS_AUDIT_KEY, the key file `<store>.key`. None when there is none;
    OSError when the key file exists but cannot be read. The text is not checked to be hex.
    """
    given = given_key(explicit)
    if given is not None:
        return given
    path = key_path(store_path)
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read().strip(), path
    except FileNotFoundError:
        return None
