"""The audit log as stored (SPEC §6): the `audit` table's rows, the checkpoint file beside
the store, and where the checkpoint key is found.

One description shared by the Audit actor (the only writer of the log), the benchmark's
baseline, and the read-only tools (`task-ingress audit`, the swarm's invariants), which
read the log without importing any actor.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from task_ingress.actors.rules import gate
from task_ingress.actors.rules.chain import checkpoint_mac
from task_ingress.messages.audit import GENESIS_HASH, AuditRecord
from task_ingress.messages.outcomes import Outcome
from task_ingress.messages.protocol import InFlight

AUDIT_COLUMNS = (
    "seq, at, workspace, channel, peer_id, actor, request_id, action, outcome, reason, "
    "task_id, run_id, payload_size, replay, prev_hash, hash, trust"
)
AUDIT_NAMES = tuple(c.strip() for c in AUDIT_COLUMNS.split(","))
INSERT_AUDIT = (
    f"INSERT INTO audit ({AUDIT_COLUMNS}) VALUES "
    + "(" + ", ".join(f":{name}" for name in AUDIT_NAMES) + ")"
)
"""Inserts one record given as a dict of every column (executemany for a batch)."""

KEY_ENV = "TASK_INGRESS_AUDIT_KEY"


def audit_fields(flight: InFlight, outcome: Outcome) -> dict[str, Any]:
    """The unchained part of a record: who, where, what, and how it was judged.

    Identifiers are stored in safe form: a rejected request may carry anything.
    """
    ctx = flight.context
    if flight.checked:
        # The router found every identifier grammatical: channel and peer ID are ASCII, their
        # own safe form; a workspace or request ID may still hold non-printable (format)
        # characters (SPEC 2 allows them, as AGH does).
        workspace, channel, peer_id = gate.safe_field(ctx.workspace), ctx.channel, ctx.peer_id
        actor = gate.derived_actor(ctx)
    else:
        workspace, channel, peer_id = (gate.safe_field(ctx.workspace),
                                       gate.safe_field(ctx.channel), gate.safe_field(ctx.peer_id))
        valid = gate.check_context(ctx) is None
        actor = gate.safe_field(gate.derived_actor(ctx) if valid else "", 300)
    return {
        "workspace": workspace,
        "channel": channel,
        "peer_id": peer_id,
        "actor": actor,
        "request_id": gate.safe_field(ctx.request_id),
        "action": outcome.action.value,
        "outcome": "accepted" if outcome.accepted else "rejected",
        "reason": outcome.reason.value if outcome.reason else None,
        "task_id": outcome.task_id,
        "run_id": outcome.run_id,
        "payload_size": flight.submission.payload_size,
        "replay": outcome.replay,
        "trust": ctx.trust,
    }


def record_from_row(row: tuple[Any, ...]) -> AuditRecord:
    """Build an AuditRecord from an `AUDIT_COLUMNS` row."""
    values = dict(zip(AUDIT_NAMES, row, strict=True))
    values["replay"] = bool(values["replay"])
    return AuditRecord.model_validate(values, strict=False)


def read_records(conn: sqlite3.Connection) -> list[AuditRecord]:
    """Every committed record in commit order."""
    rows = conn.execute(f"SELECT {AUDIT_COLUMNS} FROM audit ORDER BY seq").fetchall()
    return [record_from_row(r) for r in rows]


def read_head(conn: sqlite3.Connection) -> tuple[int, str]:
    """(seq, hash) of the newest record; (0, GENESIS_HASH) for an empty log."""
    row = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    return (int(row[0]), str(row[1])) if row else (0, GENESIS_HASH)


def checkpoint_path(store_path: str) -> str:
    """Where checkpoints of a store file live: beside it, outside the database."""
    return store_path + ".checkpoint"


@dataclass(frozen=True)
class Checkpoint:
    """The checkpoint file's content: latest seq and hash, their HMAC, and when written."""

    seq: int
    hash: str
    mac: str
    at: float


def write_checkpoint(store_path: str, key: bytes, seq: int, head: str) -> None:
    """Authenticate (seq, head) under `key` and replace the checkpoint file atomically."""
    path = checkpoint_path(store_path)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump({"seq": seq, "hash": head, "mac": checkpoint_mac(key, seq, head),
                   "at": time.time()}, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


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



def key_path(store_path: str) -> str:
    """Default location of the checkpoint key of a store file."""
    return store_path + ".key"


def find_key(store_path: str, explicit: str | None = None) -> tuple[str, str] | None:
    """The checkpoint key's text and where it came from, looked up in order: `explicit`,
    env TASK_INGRESS_AUDIT_KEY, the key file `<store>.key`. None when there is none;
    OSError when the key file exists but cannot be read. The text is not checked to be hex.
    """
    text = (explicit or os.environ.get(KEY_ENV, "")).strip()
    if text:
        return text, "the given key" if explicit else f"${KEY_ENV}"
    path = key_path(store_path)
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read().strip(), path
    except FileNotFoundError:
        return None
