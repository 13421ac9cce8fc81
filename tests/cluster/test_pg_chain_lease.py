"""The PostgreSQL store chains its batch under PgAudit's lease: its writes and the records
of every outcome in ONE fenced transaction (pg_auditlog.write_chained), fenced by the lease
row and by the shard's head row; a store that dies (or loses its connection) after its
commit is settled from the database, each request answered as recorded, recorded once."""

from __future__ import annotations

import secrets
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.pq import TransactionStatus
from task_ingress.actors import pg_task_store
from task_ingress.actors.base import rejected_verdict
from task_ingress.actors.pg_audit import PgAudit
from task_ingress.actors.pg_task_store import PgTaskStore
from task_ingress.actors.rules.chain import ChainKey
from task_ingress.actors.rules.shards import Fence, shard_of
from task_ingress.actors.storage import pg_auditlog, pg_store
from task_ingress.actors.storage.auditlog import AUDIT_NAMES
from task_ingress.actors.storage.pg_roster import rostered_chain_id
from task_ingress.actors.storage.pg_schema import ensure_store_schema
from task_ingress.actors.storage.store_batch import StoreBatch
from task_ingress.messages import CreateTask, IngressContext, Outcome, Reason
from task_ingress.messages.limits import SPEC_LIMITS
from task_ingress.messages.protocol import (
    ChainLease,
    Flush,
    InFlight,
    LeaseWanted,
    Probe,
    ProbeDone,
    Rewire,
    Settings,
    Started,
    Submission,
    Verdict,
    Verdicts,
    Wiring,
)
from task_ingress.messages.reasons import Action
from task_ingress.runtime import IngressRuntime
from task_ingress.runtime.audit.pg_verify import verify_shard
from task_ingress.runtime.cluster import pg_leases
from task_ingress.runtime.cluster.history import fencing_violations
from thespian.actors import ActorExitRequest

from tests.actors.test_chain_lease import Wire
from tests.actors.test_supervision import submit_as_one_batch
from tests.conftest import ctx, writer_card

SHARDS = 4
WS = "ws-a"
SHARD = shard_of(WS, SHARDS)


def _setup(url: str) -> tuple[psycopg.Connection[Any], Fence]:
    conn = psycopg.connect(url, autocommit=True)
    pg_leases.ensure_schema(conn, SHARDS)
    ensure_store_schema(conn)
    lease = pg_leases.acquire(conn, SHARD, "a", 60, time.monotonic())
    assert lease is not None
    return conn, lease.fence


def _head(conn: psycopg.Connection[Any], fence: Fence, key: ChainKey) -> tuple[int, str]:
    with conn.transaction():
        pg_store.lock_fence(conn, fence)
        chain = pg_auditlog.open_shard_chain(conn, SHARD, key,
                                             rostered_chain_id(conn, key, SHARD))
    return chain.seq, chain.head


def _chained_creates(conn: psycopg.Connection[Any], fence: Fence, key: ChainKey,
                     at: tuple[int, str], titles: list[str]) -> pg_auditlog.ShardChain:
    """A store batch of creates chained after `at`, as PgTaskStore writes it under a lease."""
    items = [(IngressContext(workspace=WS, peer_id="peer-a", channel="ops",
                             request_id=f"r-{title}"), CreateTask(title=title))
             for title in titles]

    def work(qmark: sqlite3.Connection) -> tuple[None, list[dict[str, Any]]]:
        batch = StoreBatch.load(qmark, items, next_outbox=0)
        fields = []
        for context, request in items:
            outcome, change = batch.judge(context, request, SPEC_LIMITS, time.time())
            assert change is not None and batch.apply(change, None) is None
            fields.append({"workspace": WS, "channel": "ops", "peer_id": "peer-a",
                           "actor": "a", "request_id": context.request_id,
                           "action": outcome.action.value, "outcome": "accepted",
                           "reason": None, "task_id": outcome.task_id, "run_id": None,
                           "payload_size": 1, "replay": False, "trust": None})
        batch.write(qmark)
        return None, fields

    _, chain = pg_auditlog.write_chained(conn, fence, key, *at, work)
    return chain


def _titles(conn: psycopg.Connection[Any]) -> list[str]:
    return [r[0] for r in conn.execute("SELECT title FROM tasks ORDER BY title").fetchall()]


def _audit_count(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT count(*) FROM audit").fetchone()
    return int(row[0]) if row else -1


def test_a_chained_batch_commits_its_writes_with_their_records_and_no_outbox_row(
    database: str,
) -> None:
    conn, fence = _setup(database)
    key = ChainKey(secrets.token_bytes(32))
    with conn:
        at = _head(conn, fence, key)
        chain = _chained_creates(conn, fence, key, at, ["a", "b", "c"])
        assert (chain.seq, pg_auditlog.current_head(conn, SHARD)) == (3, (3, chain.head))
        assert _titles(conn) == ["a", "b", "c"]
        assert conn.execute("SELECT count(*) FROM outbox").fetchone() == (0,)
        verdict = verify_shard(conn, key, SHARD)
        assert verdict.ok and verdict.records == 3, verdict.problems
        assert fencing_violations(conn, SHARDS) == []


def test_a_chained_batch_whose_record_cannot_be_inserted_leaves_none_of_its_writes(
    database: str,
) -> None:
    conn, fence = _setup(database)
    key = ChainKey(secrets.token_bytes(32))
    with conn:
        at = _head(conn, fence, key)
        # seq 1 taken behind the head row's back: the batch's record INSERT, sent with its
        # COMMIT, fails, and its task must not stay behind (one transaction).
        conn.execute(f"INSERT INTO audit (shard, {', '.join(AUDIT_NAMES)}) VALUES (%s, "
                     + ", ".join(["%s"] * len(AUDIT_NAMES)) + ")",
                     (SHARD, 1, 0.0, WS, "ops", "x", "x", "x", "create_task", "accepted",
                      None, None, None, 1, False, at[1], "h", None))
        with pytest.raises(psycopg.errors.UniqueViolation):
            _chained_creates(conn, fence, key, at, ["a"])
        assert conn.info.transaction_status == TransactionStatus.IDLE
        assert _titles(conn) == []
        assert pg_auditlog.current_head(conn, SHARD) == at


def test_a_store_whose_lease_row_moved_writes_neither_its_writes_nor_their_records(
    database: str,
) -> None:
    conn, fence = _setup(database)
    key = ChainKey(secrets.token_bytes(32))
    with conn:
        at = _head(conn, fence, key)
        conn.execute("UPDATE shard_leases SET owner = 'b', epoch = epoch + 1 WHERE shard = %s",
                     (SHARD,))
        with pytest.raises(pg_store.Fenced):
            _chained_creates(conn, fence, key, at, ["a"])
        assert conn.info.transaction_status == TransactionStatus.IDLE
        assert (_titles(conn), _audit_count(conn)) == ([], 0)
        assert pg_auditlog.current_head(conn, SHARD) == at


def test_a_head_row_moved_by_someone_else_refuses_the_batch_before_judging_it(
    database: str,
) -> None:
    conn, fence = _setup(database)
    key = ChainKey(secrets.token_bytes(32))
    with conn:
        at = _head(conn, fence, key)
        conn.execute("UPDATE audit_chains SET seq = 1, hash = 'elsewhere' WHERE shard = %s",
                     (SHARD,))
        with pytest.raises(pg_auditlog.ChainMoved):
            _chained_creates(conn, fence, key, at, ["a"])
        assert conn.info.transaction_status == TransactionStatus.IDLE
        assert (_titles(conn), _audit_count(conn)) == ([], 0)
        assert pg_auditlog.current_head(conn, SHARD) == (1, "elsewhere")


# --- a runtime on PostgreSQL ----------------------------------------------------------

AUDIT_KEY = secrets.token_hex(32)


def _runtime(make_runtime: Callable[..., IngressRuntime], database: str, fence: Fence,
             **overrides: Any) -> IngressRuntime:
    rt = make_runtime(database_url=database, fence=fence, audit_key=AUDIT_KEY, **overrides)
    for channel in ("ops", "dev"):
        for peer in ("peer-a", "peer-b"):
            rt.greet(WS, channel, writer_card(peer))
    return rt


def _batch() -> list[tuple[IngressContext, Any]]:
    return [(ctx(f"{p}-{c}", peer=p, channel=c, workspace=WS), CreateTask(title=f"{p}-{c}"))
            for p in ("peer-a", "peer-b") for c in ("ops", "dev")]


def _verified(conn: psycopg.Connection[Any]) -> int:
    verdict = verify_shard(conn, ChainKey.from_hex(AUDIT_KEY), SHARD)
    assert verdict.ok, verdict.problems
    return verdict.records


def test_a_chaining_runtime_writes_no_outbox_row(
    make_runtime: Callable[..., IngressRuntime], database: str,
) -> None:
    conn, fence = _setup(database)
    with conn:
        # Any outbox row would fail its batch whole: the runtime must not write one.
        conn.execute("CREATE FUNCTION no_outbox() RETURNS trigger LANGUAGE plpgsql AS "
                     "$$ BEGIN RAISE EXCEPTION 'an outbox row was written'; END $$")
        conn.execute("CREATE TRIGGER no_outbox BEFORE INSERT ON outbox "
                     "FOR EACH ROW EXECUTE FUNCTION no_outbox()")
        rt = _runtime(make_runtime, database, fence)
        outcomes = submit_as_one_batch(rt, _batch())
        assert all(o.accepted for o in outcomes), outcomes
        assert sorted(r.request_id for r in rt.audit()) == sorted(o.request_id
                                                                 for o in outcomes)
        assert _verified(conn) == 4


def test_a_runtime_whose_head_row_moved_answers_unavailable_and_writes_nothing(
    make_runtime: Callable[..., IngressRuntime], database: str,
) -> None:
    conn, fence = _setup(database)
    with conn:
        rt = _runtime(make_runtime, database, fence)
        assert rt.submit(ctx("r-1", workspace=WS), CreateTask(title="one")).accepted
        conn.execute("UPDATE audit_chains SET seq = seq + 1, hash = 'elsewhere' "
                     "WHERE shard = %s", (SHARD,))
        out = rt.submit(ctx("r-2", workspace=WS), CreateTask(title="two"))
        assert (out.accepted, out.reason) == (False, Reason.TASK_INGRESS_UNAVAILABLE)
        assert _titles(conn) == ["one"]
        assert _audit_count(conn) == 1
        assert pg_auditlog.current_head(conn, SHARD) == (2, "elsewhere")


def _die_after_commit(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """The store dies (as a killed process would) right after committing its first batch
    under the lease: its writes and records committed, its verdicts never sent."""
    crashed: list[bool] = []
    original = PgTaskStore.receiveMsg_ChainLease

    def commit_then_die(self: PgTaskStore, msg: Any, sender: Any) -> None:
        if crashed:
            original(self, msg, sender)
            return
        crashed.append(True)
        self.lease = msg
        self._apply_batch(self.pending)
        assert self.lease is not msg, "the batch did not commit"
        self.pending = []
        self.send(self.myAddress, ActorExitRequest())

    def die(self: PgTaskStore, msg: Any, sender: Any) -> None:
        if self.pg is not None:
            self.pg.close()
            self.pg = None

    monkeypatch.setattr(PgTaskStore, "receiveMsg_ChainLease", commit_then_die)
    monkeypatch.setattr(PgTaskStore, "receiveMsg_ActorExitRequest", die)
    return crashed


def test_a_store_dying_after_its_commit_is_taken_back_and_each_request_answered_as_recorded(
    make_runtime: Callable[..., IngressRuntime], database: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    conn, fence = _setup(database)
    with conn:
        rt = _runtime(make_runtime, database, fence)
        crashed = _die_after_commit(monkeypatch)
        outcomes = submit_as_one_batch(rt, _batch())
        monkeypatch.undo()
        assert crashed and all(o.accepted and o.task_id for o in outcomes), outcomes
        records = rt.audit()
        assert sorted(r.request_id for r in records) == sorted(o.request_id for o in outcomes)
        for o in outcomes:
            task = rt.get_task(WS, o.task_id or "")
            assert task is not None and task.metadata["ingress.request_id"] == o.request_id
        assert rt.submit(ctx("later", workspace=WS), CreateTask(title="t")).accepted
        assert _verified(conn) == 5


def test_a_store_losing_its_connection_after_its_commit_landed_is_answered_as_recorded(
    make_runtime: Callable[..., IngressRuntime], database: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    conn, fence = _setup(database)
    original = pg_auditlog.write_chained
    cut: list[bool] = []

    def commit_then_cut(pg: psycopg.Connection[Any], *args: Any) -> Any:
        result = original(pg, *args)
        if not cut:
            cut.append(True)
            pg.close()  # the COMMIT landed; its answer is lost with the connection
            raise psycopg.OperationalError("connection lost after COMMIT")
        return result

    monkeypatch.setattr(pg_task_store.pg_auditlog, "write_chained", commit_then_cut)
    with conn:
        rt = _runtime(make_runtime, database, fence)
        outcomes = submit_as_one_batch(rt, _batch())
        assert cut and all(o.accepted and not o.replay for o in outcomes), outcomes
        assert sorted(r.request_id for r in rt.audit()) == sorted(o.request_id
                                                                 for o in outcomes)
        assert rt.submit(ctx("later", workspace=WS), CreateTask(title="t")).accepted
        assert _verified(conn) == 5


def test_a_store_dying_while_its_records_cannot_be_read_back_is_answered_as_recorded_later(
    make_runtime: Callable[..., IngressRuntime], database: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    conn, fence = _setup(database)
    original = pg_auditlog.records_after
    failures: list[bool] = []

    def unreadable_twice(*args: Any) -> Any:
        if len(failures) < 2:  # the take-back's read, then its first retry
            failures.append(True)
            raise psycopg.OperationalError("the database cannot be read now")
        return original(*args)

    with conn:
        rt = _runtime(make_runtime, database, fence)
        crashed = _die_after_commit(monkeypatch)
        monkeypatch.setattr(pg_auditlog, "records_after", unreadable_twice)
        outcomes = submit_as_one_batch(rt, _batch())
        monkeypatch.undo()
        # The router waited for the read instead of answering the dead store's requests
        # failed (and recording them a second time, against what the store committed).
        assert crashed and len(failures) == 2
        assert all(o.accepted and o.task_id for o in outcomes), outcomes
        assert sorted(r.request_id for r in rt.audit()) == sorted(o.request_id
                                                                 for o in outcomes)
        assert rt.submit(ctx("later", workspace=WS), CreateTask(title="t")).accepted
        assert _verified(conn) == 5


# --- PgAudit message by message (tests/actors/test_chain_lease.py's Wire) ---------------

def _wired_audit(wire: Wire, database: str, fence: Fence, store_path: str) -> PgAudit:
    audit = wire.add("audit", PgAudit())
    settings = Settings(store_path=store_path, durable=False, local_peer_id="local",
                        greet_interval=30.0, tasks_enabled=True, audit_key=AUDIT_KEY,
                        database_url=database, fence=(fence.shard, fence.owner, fence.epoch))
    audit.receiveMessage(Wiring(ticket=1, settings=settings, audit="audit"), "runtime")
    started = wire.queue.pop()[2]
    assert isinstance(started, Started) and not started.error, started
    return audit


def _rejected(request_id: str) -> Verdict:
    context = ctx(request_id, peer="peer-b", workspace=WS)
    sub = Submission(ticket=9, context=context, request=CreateTask(title="t"),
                     action=Action.CREATE, payload_size=1, now=0.0)
    return rejected_verdict(InFlight(submission=sub, context=context, reply_to="caller"),
                            Reason.PEER_NOT_FOUND)


def test_a_dead_stores_records_read_back_by_an_append_still_go_to_the_router(
    database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    conn, fence = _setup(database)
    wire = Wire()
    audit = _wired_audit(wire, database, fence, str(tmp_path / "unused.db"))
    try:
        failures = _store_dies_unreadable_once(wire, audit, conn, fence, monkeypatch)
        audit.receiveMessage(Rewire(store="store-2"), "router")  # the read fails: retried
        # A gate's rejection commits before the retry: its append reads the records first.
        audit.receiveMessage(Verdicts(items=(_rejected("r-x"),)), "router")
        to, sender, flush = wire.queue.pop()
        assert (to, type(flush)) == ("audit", Flush)
        audit.receiveMessage(flush, sender)
        audit.receiveMessage(Probe(probe_id=4, reply_to="router"), "store-2")
        wire.settle()
        done = [m for _, m in wire.outside if isinstance(m, ProbeDone)]
        # The router answers the dead store's requests as recorded, not failed (which
        # would record them a second time).
        assert failures and len(done) == 1
        assert sorted(d.request_id for d in done[0].drained) == ["r-a", "r-b"]
        assert wire.replied() == ["r-x"] and _verified(conn) == 3
    finally:
        if audit.pg is not None:
            audit.pg.close()
        conn.close()


def test_a_probe_held_for_a_read_back_is_reported_before_the_chain_is_lent_again(
    database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    conn, fence = _setup(database)
    key = ChainKey.from_hex(AUDIT_KEY)
    wire = Wire()
    audit = _wired_audit(wire, database, fence, str(tmp_path / "unused.db"))
    try:
        failures = _store_dies_unreadable_once(wire, audit, conn, fence, monkeypatch)
        audit.receiveMessage(Rewire(store="store-2"), "router")  # the read fails: retried
        # The new store passes a probe on, then asks for the chain; now it reads.
        audit.receiveMessage(Probe(probe_id=4, reply_to="router"), "store-2")
        audit.receiveMessage(LeaseWanted(lease_id=1), "store-2")
        wire.settle()  # the retry, had it been left the probe, would find the chain lent
        done = [m for _, m in wire.outside if isinstance(m, ProbeDone)]
        assert failures and len(done) == 1
        assert sorted(d.request_id for d in done[0].drained) == ["r-a", "r-b"]
        [lent] = [m for to, m in wire.outside if to == "store-2" and isinstance(m, ChainLease)]
        assert lent.seq == 2
        # The new store's batch, chained under its lease, is answered when it comes back.
        chain = _chained_creates(conn, fence, key, (lent.seq, lent.head), ["c"])
        context = ctx("r-c", workspace=WS)
        sub = Submission(ticket=3, context=context, request=CreateTask(title="c"),
                         action=Action.CREATE, payload_size=1, now=0.0)
        written = Verdict(flight=InFlight(submission=sub, context=context, reply_to="caller"),
                          outcome=Outcome(request_id="r-c", action=Action.CREATE,
                                          accepted=True, task_id="t-c"))
        audit.receiveMessage(Verdicts(items=(written,), lease=ChainLease(
            lease_id=1, seq=chain.seq, head=chain.head), chained=True), "store-2")
        wire.settle()
        assert wire.replied() == ["r-c"] and audit.lent is None and _verified(conn) == 3
    finally:
        if audit.pg is not None:
            audit.pg.close()
        conn.close()


def _store_dies_unreadable_once(wire: Wire, audit: Any, conn: psycopg.Connection[Any],
                                fence: Fence, monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """The chain lent to "store", which commits two creates under it ("r-a", "r-b") and dies
    before reporting them; PgAudit's first read of them back fails. Returns the failures."""
    audit.receiveMessage(LeaseWanted(lease_id=1), "store")
    lease = wire.queue.pop()[2]
    assert isinstance(lease, ChainLease)
    _chained_creates(conn, fence, ChainKey.from_hex(AUDIT_KEY), (lease.seq, lease.head),
                     ["a", "b"])
    original = pg_auditlog.records_after
    failures: list[bool] = []

    def unreadable_once(*args: Any) -> Any:
        if not failures:
            failures.append(True)
            raise psycopg.OperationalError("the database cannot be read now")
        return original(*args)

    monkeypatch.setattr(pg_auditlog, "records_after", unreadable_once)
    return failures
