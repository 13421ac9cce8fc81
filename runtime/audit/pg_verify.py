"""Verification of a cluster database: every shard's keyed chain, its head row, and the
store against the audit (`task-ingress audit verify --database URL`).

Per shard, nothing excused by anything stored in the database:
- chain: records numbered 1..N without gaps, the first `prev_hash` the shard chain's
  genesis (from its chain id), each later one its predecessor's hash, each `hash` the HMAC
  of the record under the key (an edited, deleted or re-chained record fails);
- head row (`audit_chains`, rewritten in every append's transaction): its MAC holds and it
  names the chain's last record exactly (a deleted tail, records added past it, or a
  deleted head row with records left fail);
- store: every accepted request of the shard (`accepted_requests`) has its accepted record
  in the shard's chain, or a pending outbox row (a write whose record the shard's next
  holder chains: reported, not an error); every accepted, non-replay record names a
  request the store accepted.
Read-only: one REPEATABLE READ transaction, so a live cluster's appends do not tear it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

import psycopg
from task_ingress.actors.rules.chain import ChainKey, ChainWalk, genesis_hash
from task_ingress.actors.rules.gate import safe_field
from task_ingress.actors.storage import pg_auditlog
from task_ingress.actors.storage.schema import decode_outbox
from task_ingress.runtime.audit.verify import MAX_PROBLEMS, Problem

RequestKey = tuple[str, str, str, str]
"""(workspace, channel, peer_id, request_id)."""


@dataclass(frozen=True)
class ShardVerdict:
    """One shard's chain as verified; `ok` when chain, head row and store agree."""

    shard: int
    records: int
    head_seq: int
    head_hash: str
    chain_id: str | None
    pending_outbox: int
    accepted_requests: int
    problems: tuple[Problem, ...]

    @property
    def ok(self) -> bool:
        """True when nothing disagrees."""
        return not self.problems

    @property
    def first_problem(self) -> Problem | None:
        """The problem at the lowest record seq (shard-wide problems come last)."""
        if not self.problems:
            return None
        return min(self.problems, key=lambda p: (p.seq is None, p.seq or 0))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        data = asdict(self)
        data["ok"] = self.ok
        first = self.first_problem
        data["first_problem"] = None if first is None else asdict(first)
        return data


def shards_to_check(conn: psycopg.Connection[Any]) -> list[int]:
    """Every shard the cluster has, has a chain, or has records or accepted requests of."""
    found: set[int] = set()
    row = conn.execute("SELECT value FROM cluster_config WHERE key = 'shards'").fetchone()
    if row is not None:
        found |= set(range(int(row[0])))
    for table in ("audit_chains", "audit", "accepted_requests", "outbox"):
        found |= {int(r[0]) for r in conn.execute(f"SELECT DISTINCT shard FROM {table}")}
    return sorted(found)


def verify_database(conn: psycopg.Connection[Any], key: bytes) -> list[ShardVerdict]:
    """Verify every shard's chain; raises psycopg.Error when the database cannot be read
    (for instance when it is no cluster database)."""
    chain_key = ChainKey(key)
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        return [verify_shard(conn, chain_key, shard) for shard in shards_to_check(conn)]


def verify_shard(conn: psycopg.Connection[Any], key: ChainKey, shard: int) -> ShardVerdict:
    """One shard's chain, head row and store agreement."""
    problems: list[Problem] = []

    def fail(kind: str, seq: int | None, detail: str) -> None:
        if len(problems) < MAX_PROBLEMS:
            problems.append(Problem(kind, seq, detail))

    head = pg_auditlog.read_head_row(conn, shard)
    chain_id = head.chain_id if head is not None else None
    walk = ChainWalk(key.seal, genesis_hash(chain_id) if chain_id else "")
    records, last_seq, last_hash = 0, 0, ""
    audited: Counter[RequestKey] = Counter()
    for fields in pg_auditlog.shard_rows(conn, shard):
        records += 1
        last_seq, last_hash = int(fields["seq"]), str(fields["hash"])
        if chain_id is not None:
            try:
                why = walk.step(fields)
            except (TypeError, ValueError) as exc:
                why = f"record does not parse: {exc}"
            if why is not None:
                fail("chain", last_seq, why)
        if fields["outcome"] == "accepted" and not fields["replay"]:
            audited[(fields["workspace"], fields["channel"], fields["peer_id"],
                     fields["request_id"])] += 1
    if head is None:
        if records:
            fail("checkpoint", None, f"{records} records but no head row (deleted?): "
                 "nothing vouches for them")
    else:
        if not head.verifies(key):
            fail("checkpoint", None, "the head row's MAC does not verify under this key "
                 "(wrong key, or forged)")
        if (head.seq, head.hash) != ((last_seq, last_hash) if records
                                     else (0, genesis_hash(head.chain_id))):
            fail("checkpoint", None, f"the head row names seq {head.seq}, the chain ends at "
                 f"seq {last_seq}: tail deleted, or records added past the head")
    pending = _pending_outbox(conn, shard, fail)
    accepted = _check_store(conn, shard, audited, pending, fail)
    return ShardVerdict(shard=shard, records=records, head_seq=last_seq, head_hash=last_hash,
                        chain_id=chain_id, pending_outbox=len(pending),
                        accepted_requests=accepted, problems=tuple(problems))


def _pending_outbox(conn: psycopg.Connection[Any], shard: int, fail: Any) -> set[RequestKey]:
    pending: set[RequestKey] = set()
    for row_id, blob in conn.execute("SELECT id, record FROM outbox WHERE shard = %s "
                                     "ORDER BY id", (shard,)):
        fields = decode_outbox(bytes(blob))
        try:
            assert fields is not None
            pending.add((fields["workspace"], fields["channel"], fields["peer_id"],
                         fields["request_id"]))
        except (AssertionError, KeyError, TypeError):
            fail("store", None, f"outbox row {row_id} is unreadable")
    return pending


def _check_store(conn: psycopg.Connection[Any], shard: int, audited: Counter[RequestKey],
                 pending: set[RequestKey], fail: Any) -> int:
    """Accepted requests against accepted records; returns how many accepted requests."""
    rows = conn.execute("SELECT workspace, channel, peer_id, request_id FROM "
                        "accepted_requests WHERE shard = %s", (shard,)).fetchall()
    # As the records hold them: identifiers in safe form (a workspace may hold format
    # characters the gate allows).
    stored = {(safe_field(w), safe_field(c), safe_field(p), safe_field(r))
              for w, c, p, r in rows}
    for key in sorted(stored):
        if audited[key] == 0 and key not in pending:
            fail("store", None, f"accepted request {key[3]!r} of peer {key[2]!r} in "
                 f"{key[0]}/{key[1]} has no accepted audit record")
    for key, count in sorted(audited.items()):
        if key not in stored:
            fail("store", None, f"accepted record of request {key[3]!r} names no accepted "
                 "request in the store")
        elif count > 1:
            fail("store", None, f"request {key[3]!r} has {count} accepted (not replay) records")
    return len(stored)
