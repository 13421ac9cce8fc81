"""Verification of a cluster database: every shard's keyed chain, its head row, and the
store against the audit (`task-ingress audit verify --database URL`).

Per shard, nothing excused by anything stored in the database:
- chain: records numbered 1..N without gaps, the first `prev_hash` the shard chain's
  genesis (from its chain id), each later one its predecessor's hash, each `hash` the HMAC
  of the record under the key (an edited, deleted or re-chained record fails);
- head row (`audit_chains`, rewritten in every append's transaction): its MAC holds and it
  names the chain's last record exactly (a deleted tail, records added past it, or a
  deleted head row with records left fail);
- roster (written once with the key when the chains were set up: every shard's chain id):
  it verifies under the key and names the cluster's shard count, and every shard has a
  head row of the chain it names (a shard emptied whole, head row and all, fails; so does
  a chain replaced by a fresh one);
- anchors (head lines `audit head --database` printed, kept outside the database): each
  names a shard chain that still exists, still reaches its seq with its hash there;
- store: every accepted request of the shard (`accepted_requests`) has its accepted record
  in the shard's chain, or a pending outbox row (a write whose record the shard's next
  holder chains: reported, not an error); every accepted, non-replay record names a
  request the store accepted; every task and run row of the shard's workspaces is vouched
  for by an accepted create or enqueue record (or a pending outbox row).
Read-only: one REPEATABLE READ transaction, so a live cluster's appends do not tear it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import psycopg
from task_ingress.actors.rules.chain import ChainKey, ChainWalk, genesis_hash
from task_ingress.actors.rules.gate import safe_field
from task_ingress.actors.rules.shards import shard_of
from task_ingress.actors.storage import pg_auditlog, pg_roster
from task_ingress.actors.storage.pg_schema import configured_shards
from task_ingress.actors.storage.schema import decode_outbox
from task_ingress.messages.reasons import Action
from task_ingress.runtime.audit.anchor import Anchor
from task_ingress.runtime.audit.verify import MAX_PROBLEMS, Problem, ProblemList

RequestKey = tuple[str, str, str, str]
"""(workspace, channel, peer_id, request_id)."""


@dataclass(frozen=True)
class ShardVerdict(ProblemList):
    """One shard's chain as verified; `ok` when chain, head row and store agree."""

    shard: int
    records: int
    head_seq: int
    head_hash: str
    chain_id: str | None
    pending_outbox: int
    accepted_requests: int
    problems: tuple[Problem, ...]



def shards_to_check(conn: psycopg.Connection[Any]) -> list[int]:
    """Every shard the cluster has, the roster names, has a chain, or has records or
    accepted requests of."""
    roster = pg_roster.read_roster(conn)
    found: set[int] = set(range(roster.shards)) if roster is not None else set()
    row = conn.execute("SELECT value FROM cluster_config WHERE key = 'shards'").fetchone()
    if row is not None:
        found |= set(range(int(row[0])))
    for table in ("audit_chains", "audit", "accepted_requests", "outbox"):
        found |= {int(r[0]) for r in conn.execute(f"SELECT DISTINCT shard FROM {table}")}
    return sorted(found)


@dataclass(frozen=True)
class DatabaseVerdict:
    """Every shard's verdict, and problems of no shard (an anchor of a chain that is gone)."""

    shards: tuple[ShardVerdict, ...]
    problems: tuple[Problem, ...] = ()

    @property
    def ok(self) -> bool:
        """True when every shard verifies and every anchor names a chain that exists."""
        return not self.problems and all(v.ok for v in self.shards)


def verify_database(conn: psycopg.Connection[Any], key: bytes,
                    anchors: Sequence[Anchor] = ()) -> DatabaseVerdict:
    """Verify every shard's chain, and each anchor (a head line `audit head --database`
    printed) against the chain it names; raises psycopg.Error when the database cannot be
    read (for instance when it is no cluster database)."""
    chain_key = ChainKey(key)
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        rows = store_rows(conn)
        shards = shards_to_check(conn)
        missed = roster_problems(conn, chain_key, shards)
        verdicts = tuple(verify_shard(conn, chain_key, shard, anchors, rows)
                         for shard in shards)
        verdicts = tuple(replace(v, problems=missed.get(v.shard, ()) + v.problems)
                         for v in verdicts)
    chains = {v.chain_id for v in verdicts}
    orphans = tuple(Problem("anchor", None, f"no shard has the anchored chain "
                            f"{a.store_id}: its audit chain was deleted or replaced")
                    for a in anchors if a.store_id not in chains)
    # A cluster is set up with its shard count: no shard at all means its rows were
    # deleted, and an empty verdict must not read as "every shard verifies".
    gone = () if verdicts else (Problem("checkpoint", None, "no shards: the cluster's "
                                        "configuration and every shard's rows are gone "
                                        "(emptied?); nothing vouches for this database"),)
    return DatabaseVerdict(shards=verdicts, problems=gone + orphans)


def roster_problems(conn: psycopg.Connection[Any], key: ChainKey, shards: Sequence[int]
                    ) -> dict[int, tuple[Problem, ...]]:
    """Each shard's disagreement with the chain roster (actors/storage/pg_roster.py): a
    shard whose chain is gone whole (no head row) or was replaced (another chain id), a
    shard the roster does not name; every shard's, when the roster is missing, does not
    verify under the key, or names another shard count than the cluster's (nothing then
    vouches that each shard's chain is the one set up)."""
    roster = pg_roster.read_roster(conn)
    configured = configured_shards(conn)
    everywhere: str | None = None
    if roster is None:
        everywhere = ("no chain roster (deleted, or the database predates it; once the rest "
                      "verifies, `task-ingress cluster adopt-roster --database URL` pins the "
                      "chains there): nothing vouches that every shard's chain is still here")
    elif not roster.verifies(key):
        everywhere = ("the chain roster's MAC does not verify under this key (wrong key, or "
                      "forged)")
    elif configured is not None and roster.shards != configured:
        everywhere = (f"the chain roster names {roster.shards} shards, the cluster is set up "
                      f"for {configured} (shard count changed?)")
    if everywhere is not None:
        return {shard: (Problem("roster", None, everywhere),) for shard in shards}
    assert roster is not None  # `everywhere` is set when it is None
    out: dict[int, tuple[Problem, ...]] = {}
    for shard in shards:
        head = pg_auditlog.read_head_row(conn, shard)
        if shard >= roster.shards:
            why = "the chain roster names no such shard"
        elif head is None:
            why = (f"the roster names chain {roster.chain_ids[shard]} but the shard has no "
                   "head row: its audit chain was deleted whole (emptied)")
        elif head.chain_id != roster.chain_ids[shard]:
            why = (f"the head row names chain {head.chain_id}, the roster "
                   f"{roster.chain_ids[shard]}: the shard's audit chain was replaced")
        else:
            continue
        out[shard] = (Problem("roster", None, why),)
    return out


def verify_shard(conn: psycopg.Connection[Any], key: ChainKey, shard: int,
                 anchors: Sequence[Anchor] = (),
                 rows: dict[int, set[tuple[str, str]]] | None = None) -> ShardVerdict:
    """One shard's chain, head row and store agreement, and the anchors of its chain.
    `rows`: ("task" | "run", ID) of every task and run row, by shard (`store_rows`)."""
    problems: list[Problem] = []

    def fail(kind: str, seq: int | None, detail: str) -> None:
        if len(problems) < MAX_PROBLEMS:
            problems.append(Problem(kind, seq, detail))

    head = pg_auditlog.read_head_row(conn, shard)
    chain_id = head.chain_id if head is not None else None
    walk = ChainWalk(key.seal, genesis_hash(chain_id) if chain_id else "")
    records, last_seq, last_hash = 0, 0, ""
    audited: Counter[RequestKey] = Counter()
    made: set[str] = set()  # task IDs of accepted creates, run IDs of accepted enqueues
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
            _note_made(fields, made)
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
    for anchor in anchors:
        if chain_id is not None and anchor.store_id == chain_id:
            for problem in _check_anchor(conn, shard, key, anchor, last_seq):
                fail(problem.kind, problem.seq, problem.detail)
    pending = _pending_outbox(conn, shard, fail, made)
    accepted = _check_store(conn, shard, audited, pending, fail)
    for kind, ident in sorted((rows or {}).get(shard, set())):
        if ident not in made:
            what = "task.create" if kind == "task" else "enqueue"
            fail("store", None, f"{kind} {safe_field(ident)} has no accepted {what} record")
    return ShardVerdict(shard=shard, records=records, head_seq=last_seq, head_hash=last_hash,
                        chain_id=chain_id, pending_outbox=len(pending),
                        accepted_requests=accepted, problems=tuple(problems))


def store_rows(conn: psycopg.Connection[Any]) -> dict[int, set[tuple[str, str]]]:
    """("task", ID) of every task and ("run", ID) of every run, by their workspace's shard
    (one pass over each table, not one per shard)."""
    row = conn.execute("SELECT value FROM cluster_config WHERE key = 'shards'").fetchone()
    if row is None:
        return {}
    shards = int(row[0])
    out: dict[int, set[tuple[str, str]]] = {}
    for kind, table, column in (("task", "tasks", "task_id"), ("run", "runs", "run_id")):
        for ident, workspace in conn.execute(f"SELECT {column}, workspace FROM {table}"):
            out.setdefault(shard_of(str(workspace), shards), set()).add((kind, str(ident)))
    return out


def _note_made(fields: dict[str, Any], made: set[str]) -> None:
    if fields.get("action") == Action.CREATE.value and isinstance(fields.get("task_id"), str):
        made.add(fields["task_id"])
    if fields.get("action") == Action.ENQUEUE.value and isinstance(fields.get("run_id"), str):
        made.add(fields["run_id"])


def _check_anchor(conn: psycopg.Connection[Any], shard: int, key: ChainKey, anchor: Anchor,
                  last_seq: int) -> list[Problem]:
    """What the operator saw of this shard's chain (a head line) against the chain now."""
    what = anchor.describe()
    if not anchor.mac_ok(key):
        return [Problem("anchor", None, f"the head line's MAC does not verify under this "
                        f"key (altered, or made with another key): {what}")]
    assert anchor.seq is not None
    if anchor.seq > last_seq:
        return [Problem("anchor", last_seq + 1, f"tail deleted: the chain ends at seq "
                        f"{last_seq} but the anchor saw it reach seq {anchor.seq}")]
    if anchor.seq:
        row = conn.execute("SELECT hash FROM audit WHERE shard = %s AND seq = %s",
                           (shard, anchor.seq)).fetchone()
        if row is None or row[0] != anchor.head:
            return [Problem("anchor", anchor.seq, f"the record at seq {anchor.seq} does not "
                            "have the anchored hash: the chain up to it was rewritten, or "
                            "rolled back and regrown")]
    return []


def _pending_outbox(conn: psycopg.Connection[Any], shard: int, fail: Any, made: set[str]
                    ) -> set[RequestKey]:
    pending: set[RequestKey] = set()
    for row_id, blob in conn.execute("SELECT id, record FROM outbox WHERE shard = %s "
                                     "ORDER BY id", (shard,)):
        fields = decode_outbox(bytes(blob))
        try:
            assert fields is not None
            pending.add((fields["workspace"], fields["channel"], fields["peer_id"],
                         fields["request_id"]))
            _note_made(fields, made)
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
