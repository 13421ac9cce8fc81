"""Shared pieces of the hostile-input tests: a runtime with known tasks, and a tap that
reads the audit records each input produced (straight from the store, read-only)."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
from task_ingress.actors.rules.gate import safe_field
from task_ingress.actors.storage.auditlog import AUDIT_COLUMNS, record_from_row
from task_ingress.messages import AuditRecord, CreateTask, IngressContext, Outcome, PeerCard
from task_ingress.messages.reasons import Reason
from task_ingress.runtime import IngressRuntime, RuntimeConfig
from task_ingress.runtime.audit.read import readonly_uri

SLOW = os.environ.get("TASK_INGRESS_SLOW") == "1"
REPLY_KEYS = {"v", "request_id", "accepted", "reason", "task_id", "run_id"}
REASONS = {r.value for r in Reason}
ID_FIELDS = ("workspace", "channel", "peer_id", "request_id")


@dataclass(frozen=True)
class FuzzTarget:
    """A running runtime with peer-a (writer) and peer-r (reader) in ws/ops and tasks of
    every binding kind."""

    rt: IngressRuntime
    tap: AuditTap
    bound_ops: str
    unbound: str
    bound_dev: str

    @property
    def task_ids(self) -> list[str]:
        """Every pre-made task ID."""
        return [self.bound_ops, self.unbound, self.bound_dev]


class AuditTap:
    """Reads records committed since the last call; one read-only connection, reused."""

    def __init__(self, store_path: str) -> None:
        self.conn = sqlite3.connect(readonly_uri(store_path), uri=True)
        self.last = int(self.conn.execute("SELECT COALESCE(MAX(seq), 0) FROM audit")
                        .fetchone()[0])

    def new_records(self) -> list[AuditRecord]:
        """Records with a seq above the last one seen."""
        rows = self.conn.execute(
            f"SELECT {AUDIT_COLUMNS} FROM audit WHERE seq > ? ORDER BY seq", (self.last,)
        ).fetchall()
        records = [record_from_row(r) for r in rows]
        if records:
            self.last = records[-1].seq
        return records

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()


@contextmanager
def fuzz_target(tmp: Path) -> Iterator[FuzzTarget]:
    """Start a runtime on a throwaway file store (no fsync: speed, not durability, here)."""
    # A clock that stands still: the greeted peers never expire however long the run is.
    config = RuntimeConfig(store_path=str(tmp / "fuzz.db"), durable=False, peer_rate=0.0,
                           clock=lambda: 1000.0)
    with IngressRuntime(config) as rt:
        rt.greet("ws", "ops", PeerCard(peer_id="peer-a", capabilities=["task.write"],
                                       proof="p"))
        rt.greet("ws", "ops", PeerCard(peer_id="peer-r", capabilities=["task.read"]))
        rt.greet("ws", "dev", PeerCard(peer_id="peer-a", capabilities=["task.write"],
                                       proof="p"))
        def make(channel: str, bind: str, rid: str) -> str:
            ctx = IngressContext(workspace="ws", peer_id="peer-a", channel=channel,
                                 request_id=rid)
            out = rt.submit(ctx, CreateTask(title="fuzz target", network_channel=bind))
            assert out.accepted and out.task_id
            return out.task_id

        bound_ops = make("ops", "ops", "seed-1")
        unbound = make("ops", "", "seed-2")
        bound_dev = make("dev", "dev", "seed-3")
        tap = AuditTap(rt.store_path)
        try:
            yield FuzzTarget(rt, tap, bound_ops, unbound, bound_dev)
        finally:
            tap.close()


def check_wire_reply(raw: bytes) -> dict[str, Any]:
    """A reply is a msgpack map with exactly the SPEC §7 keys and consistent values."""
    reply = msgpack.unpackb(raw, raw=False)
    assert isinstance(reply, dict) and set(reply) == REPLY_KEYS, reply
    assert reply["v"] == 1 and isinstance(reply["accepted"], bool)
    assert isinstance(reply["request_id"], str)
    check_verdict(reply["accepted"], reply["reason"], reply["task_id"], reply["run_id"])
    return reply


def check_outcome(out: Outcome) -> None:
    """A submit Outcome is internally consistent."""
    assert isinstance(out, Outcome)
    check_verdict(out.accepted, out.reason.value if out.reason else None, out.task_id,
                  out.run_id)


def check_verdict(accepted: bool, reason: str | None, task_id: Any, run_id: Any) -> None:
    """Accepted: no reason and a task ID; rejected: a reason from the closed set, no IDs."""
    if accepted:
        assert reason is None and isinstance(task_id, str) and task_id
        assert run_id is None or isinstance(run_id, str)
    else:
        assert reason in REASONS and task_id is None and run_id is None


def check_one_record(tap: AuditTap, accepted: bool, reason: str | None, request_id: str
                     ) -> AuditRecord:
    """Exactly one new audit record, matching the verdict, stored in safe form."""
    records = tap.new_records()
    assert len(records) == 1, records
    rec = records[0]
    assert rec.outcome == ("accepted" if accepted else "rejected")
    assert (rec.reason.value if rec.reason else None) == reason
    assert rec.request_id in (request_id, safe_field(request_id))
    for name in ID_FIELDS:
        value = getattr(rec, name)
        assert value.isprintable() and len(value) <= 128, (name, value)
    assert rec.actor.isprintable() and len(rec.actor) <= 300
    return rec
