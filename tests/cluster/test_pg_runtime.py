"""An embedded runtime on PostgreSQL (`database_url` + `fence`): the same answers and audit
as the SQLite runtime, every write and audit append fenced by the shard's lease."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from task_ingress.actors.rules.chain import ChainKey, ChainWalk, genesis_hash
from task_ingress.actors.rules.shards import Fence, shard_of
from task_ingress.actors.storage import pg_auditlog
from task_ingress.actors.storage.auditlog import SINCE_CLOCK_SLACK
from task_ingress.messages import (
    CancelTask,
    CreateTask,
    EnqueueRun,
    IngressContext,
    Outcome,
    PeerCard,
    Reason,
    UpdateTask,
)
from task_ingress.runtime import IngressRuntime, RuntimeConfig
from task_ingress.runtime.cluster import pg_leases
from task_ingress.runtime.cluster.history import fencing_violations
from task_ingress.runtime.errors import RuntimeStartError
from task_ingress.testing import (
    CRASH_EXIT,
    PG_EXIT_AFTER_OUTBOX_COMMIT,
    PG_EXIT_AFTER_STORE_COMMIT,
    PG_OUTBOX_STORE,
)

from tests.conftest import FakeClock, ctx, writer_card

SHARDS = 4
WS = "ws"
SHARD = shard_of(WS, SHARDS)
OTHER_WS = next(f"ws-{i}" for i in range(100) if shard_of(f"ws-{i}", SHARDS) != SHARD)
KEY = secrets.token_hex(32)


def _setup(url: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(url, autocommit=True)
    pg_leases.ensure_schema(conn, SHARDS)
    return conn


def _fence(conn: psycopg.Connection[Any], owner: str, shard: int = SHARD,
           ttl: float = 60.0) -> Fence:
    lease = pg_leases.acquire(conn, shard, owner, ttl, time.monotonic())
    assert lease is not None
    return lease.fence


def _take_over(conn: psycopg.Connection[Any], shard: int, owner: str) -> Fence:
    """Expire the shard's lease at once (as if its holder had stopped renewing) and take it."""
    conn.execute("UPDATE shard_leases SET expires_at = now() - interval '1 second' "
                 "WHERE shard = %s", (shard,))
    return _fence(conn, owner, shard)


@pytest.fixture
def pg_runtime(make_runtime: Callable[..., IngressRuntime], database: str
               ) -> Iterator[Callable[..., IngressRuntime]]:
    """Factory for runtimes on the test database under a fence (closed at teardown)."""
    def factory(fence: Fence, **overrides: Any) -> IngressRuntime:
        overrides.setdefault("audit_key", KEY)
        return make_runtime(database_url=database, fence=fence, **overrides)

    yield factory


Step = Callable[[IngressRuntime, list[str]], Outcome]


def _table() -> list[tuple[str, Step]]:
    """A table of requests covering acceptance, replay and every store- and gate-side
    rejection a single writer can reach; `ids` collects created task IDs by order."""
    def create(rid: str, **kw: Any) -> Step:
        def step(rt: IngressRuntime, ids: list[str]) -> Outcome:
            out = rt.submit(ctx(rid, workspace=WS), CreateTask(title="t " + rid, **kw))
            if out.accepted and not out.replay:
                ids.append(str(out.task_id))
            return out
        return step

    def on(index: int, rid: str, make: Callable[[str], Any], peer: str = "peer-a") -> Step:
        def step(rt: IngressRuntime, ids: list[str]) -> Outcome:
            return rt.submit(ctx(rid, peer=peer, workspace=WS), make(ids[index]))
        return step

    def raw(context: IngressContext, request: Any) -> Step:
        return lambda rt, ids: rt.submit(context, request)

    return [
        ("create", create("r1", network_channel="ops")),
        ("create again (replay)", create("r1", network_channel="ops")),
        ("update", on(0, "r2", lambda t: UpdateTask(task_id=t, title="new",
                                                    expected_version=1))),
        ("stale version", on(0, "r3", lambda t: UpdateTask(task_id=t, title="x",
                                                          expected_version=1))),
        ("enqueue", on(0, "r4", lambda t: EnqueueRun(task_id=t, idempotency_key="k"))),
        ("enqueue same key", on(0, "r5", lambda t: EnqueueRun(task_id=t, idempotency_key="k"))),
        ("unknown task", raw(ctx("r6", workspace=WS), UpdateTask(task_id="task_nope",
                                                                 title="x"))),
        ("reader writes", on(0, "r7", lambda t: UpdateTask(task_id=t, title="y"),
                             peer="peer-r")),
        ("unknown peer", raw(ctx("r8", peer="ghost", workspace=WS), CreateTask(title="g"))),
        ("malformed context", raw(IngressContext(workspace=WS, peer_id="", channel="ops",
                                                 request_id="r9"), CreateTask(title="m"))),
        ("empty title", raw(ctx("r10", workspace=WS), CreateTask(title=" "))),
        ("cancel", on(0, "r11", lambda t: CancelTask(task_id=t, reason="done"))),
        ("update canceled", on(0, "r12", lambda t: UpdateTask(task_id=t, title="z"))),
    ]


def _run_table(rt: IngressRuntime) -> list[tuple[str, bool, Reason | None, bool]]:
    rt.greet(WS, "ops", writer_card("peer-a"))
    rt.greet(WS, "ops", PeerCard(peer_id="peer-r", capabilities=["task.read"], proof="s"))
    ids: list[str] = []
    answers = []
    for name, step in _table():
        out = step(rt, ids)
        answers.append((name, out.accepted, out.reason, out.replay))
    return answers


def _audit_shape(rt: IngressRuntime) -> list[tuple[str, str, str, str | None, bool]]:
    return [(r.request_id, r.action, r.outcome, r.reason, r.replay) for r in rt.audit()]


@pytest.mark.parametrize("mode", ["inprocess", "pipeline"])
def test_a_runtime_on_postgresql_answers_and_audits_a_table_of_requests_as_sqlite_does(
    make_runtime: Callable[..., IngressRuntime], pg_runtime: Callable[..., IngressRuntime],
    database: str, clock: FakeClock, mode: str,
) -> None:
    sqlite_rt = make_runtime(process_mode=mode)
    expected = _run_table(sqlite_rt)
    with _setup(database) as conn:
        rt = pg_runtime(_fence(conn, "node-a"), process_mode=mode)
        assert _run_table(rt) == expected
        assert _audit_shape(rt) == _audit_shape(sqlite_rt)
        # rejections too: every reason the table reaches is in both
        assert {r for _, ok, r, _ in expected if not ok} >= {
            Reason.VALIDATION_FAILED, Reason.TASK_NOT_FOUND, Reason.PERMISSION_DENIED,
            Reason.PEER_NOT_FOUND, Reason.INVALID_REQUEST}
        tasks = conn.execute("SELECT count(*) FROM tasks").fetchone()
        assert tasks == (1,)
        assert conn.execute("SELECT count(*) FROM outbox").fetchone() == (0,)
        assert fencing_violations(conn, SHARDS) == []
        _assert_chain_verifies(conn, SHARD, len(_audit_shape(rt)))


def _assert_chain_verifies(conn: psycopg.Connection[Any], shard: int, records: int) -> None:
    head = pg_auditlog.read_head_row(conn, shard)
    assert head is not None and head.verifies(ChainKey.from_hex(KEY))
    walk = ChainWalk(ChainKey.from_hex(KEY).seal, genesis_hash(head.chain_id))
    rows = list(pg_auditlog.shard_rows(conn, shard))
    assert [walk.step(r) for r in rows] == [None] * records
    assert (head.seq, head.hash) == (records, rows[-1]["hash"])


@pytest.mark.parametrize("mode", ["inprocess", "pipeline"])
def test_a_runtime_whose_lease_was_taken_over_answers_unavailable_and_appends_nothing(
    pg_runtime: Callable[..., IngressRuntime], database: str, mode: str,
) -> None:
    with _setup(database) as conn:
        old = pg_runtime(_fence(conn, "node-a"), process_mode=mode)
        old.greet(WS, "ops", writer_card("peer-a"))
        first = old.submit(ctx("a-1", workspace=WS), CreateTask(title="before"))
        assert first.accepted
        new_fence = _take_over(conn, SHARD, "node-b")
        new = pg_runtime(new_fence)
        new.greet(WS, "ops", writer_card("peer-a"))
        assert new.submit(ctx("b-1", workspace=WS), CreateTask(title="by b")).accepted
        head_before = pg_auditlog.current_head(conn, SHARD)
        late = [old.submit(ctx(f"a-{i}", workspace=WS), CreateTask(title="late"))
                for i in range(2, 5)]
        assert [(o.accepted, o.reason) for o in late] == [
            (False, Reason.TASK_INGRESS_UNAVAILABLE)] * 3
        # a rejection the old holder decides by itself is not appended either
        ghost = old.submit(ctx("a-9", peer="ghost", workspace=WS), CreateTask(title="g"))
        assert ghost.reason is Reason.TASK_INGRESS_UNAVAILABLE
        assert pg_auditlog.current_head(conn, SHARD) == head_before
        titles = {r[0] for r in conn.execute("SELECT title FROM tasks").fetchall()}
        assert titles == {"before", "by b"}
        assert [r.request_id for r in new.audit()] == ["a-1", "b-1"]
        assert fencing_violations(conn, SHARDS) == []
        _assert_chain_verifies(conn, SHARD, 2)


def test_a_workspace_of_another_shard_is_refused_unavailable_before_any_other_gate_rule(
    pg_runtime: Callable[..., IngressRuntime], database: str,
) -> None:
    with _setup(database) as conn:
        rt = pg_runtime(_fence(conn, "node-a"))
        rt.greet(OTHER_WS, "ops", writer_card("peer-a"))
        out = rt.submit(ctx("x-1", workspace=OTHER_WS), CreateTask(title="elsewhere"))
        assert not out.accepted and out.reason is Reason.TASK_INGRESS_UNAVAILABLE
        # rule 2 (SPEC 4): before presence, so not peer_not_found for a stranger either
        stranger = rt.submit(ctx("x-2", peer="ghost", workspace=f" {OTHER_WS} "),
                             CreateTask(title="elsewhere"))
        assert stranger.reason is Reason.TASK_INGRESS_UNAVAILABLE
        malformed = rt.submit(ctx("", workspace=OTHER_WS), CreateTask(title="elsewhere"))
        assert malformed.reason is Reason.INVALID_REQUEST     # rule 1 still comes first
        assert conn.execute("SELECT count(*) FROM tasks").fetchone() == (0,)
        assert [(r.request_id, r.reason) for r in rt.audit()] == [
            ("x-1", "task_ingress_unavailable"), ("x-2", "task_ingress_unavailable"),
            ("", "invalid_request")]


def test_two_shards_keep_two_chains_that_verify_independently(
    pg_runtime: Callable[..., IngressRuntime], database: str,
) -> None:
    other_shard = shard_of(OTHER_WS, SHARDS)
    with _setup(database) as conn:
        a = pg_runtime(_fence(conn, "node-a"))
        b = pg_runtime(_fence(conn, "node-b", shard=other_shard))
        for rt, ws in ((a, WS), (b, OTHER_WS)):
            rt.greet(ws, "ops", writer_card("peer-a"))
        for i in range(3):
            assert a.submit(ctx(f"a-{i}", workspace=WS), CreateTask(title="a")).accepted
        assert b.submit(ctx("b-0", workspace=OTHER_WS), CreateTask(title="b")).accepted
        _assert_chain_verifies(conn, SHARD, 3)
        _assert_chain_verifies(conn, other_shard, 1)
        ids = {s: pg_auditlog.read_head_row(conn, s) for s in (SHARD, other_shard)}
        assert ids[SHARD] and ids[other_shard]
        assert ids[SHARD].chain_id != ids[other_shard].chain_id


def test_a_runtime_without_an_audit_key_or_with_a_stale_fence_does_not_start(
    pg_runtime: Callable[..., IngressRuntime], database: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TASK_INGRESS_AUDIT_KEY", raising=False)
    with _setup(database) as conn:
        fence = _fence(conn, "node-a")
        with pytest.raises(RuntimeStartError, match="audit key"):
            pg_runtime(fence, audit_key=None)
        _take_over(conn, SHARD, "node-b")
        with pytest.raises(RuntimeStartError, match="not by node-a"):
            pg_runtime(fence)
    with pytest.raises(ValueError, match="go together"):
        RuntimeConfig(database_url="postgresql://x/y")


@pytest.mark.parametrize("store", [PG_EXIT_AFTER_STORE_COMMIT, PG_EXIT_AFTER_OUTBOX_COMMIT],
                         ids=["chained", "outbox"])
def test_a_write_whose_holder_died_before_its_audit_is_chained_by_the_next_holder(
    pg_runtime: Callable[..., IngressRuntime], database: str, store: str,
) -> None:
    with _setup(database) as conn:
        fence = _fence(conn, "node-a")
        done = subprocess.run(
            [sys.executable, str(Path(__file__).with_name("pg_crash_writer.py")), database,
             str(fence.shard), fence.owner, str(fence.epoch), KEY, WS, store],
            capture_output=True, text=True, timeout=120)
        assert done.returncode == CRASH_EXIT, done.stderr[-2000:]
        answers = [json.loads(line) for line in done.stdout.splitlines()]
        assert answers == [{"request_id": "r-1", "accepted": True}]   # the marked one: none
        titles = {r[0] for r in conn.execute("SELECT title FROM tasks").fetchall()}
        assert titles == {"r-1", "crash-1"}
        chained = [r["request_id"] for r in pg_auditlog.shard_rows(conn, SHARD)]
        if store == PG_EXIT_AFTER_STORE_COMMIT:
            # The write and its record committed together under the lease: no outbox row.
            assert conn.execute("SELECT count(*) FROM outbox").fetchone() == (0,)
            assert chained == ["r-1", "crash-1"]
        else:
            # The write and its outbox row committed together; its record is not chained yet.
            assert conn.execute("SELECT count(*) FROM outbox").fetchone() == (1,)
            assert chained == ["r-1"]
        rt = pg_runtime(_take_over(conn, SHARD, "node-b"))
        records = rt.audit()
        assert [(r.request_id, r.outcome) for r in records] == [
            ("r-1", "accepted"), ("crash-1", "accepted")]
        assert conn.execute("SELECT count(*) FROM outbox").fetchone() == (0,)
        _assert_chain_verifies(conn, SHARD, 2)


def _end_sessions(conn: psycopg.Connection[Any]) -> int:
    """End every other session of the test database (as a server restart or a network cut
    would); how many were ended."""
    row = conn.execute(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = "
        "current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
    ).fetchone()
    return int(row[0]) if row else 0


def test_a_write_on_a_lost_connection_is_unavailable_and_the_next_one_reconnects(
    pg_runtime: Callable[..., IngressRuntime], database: str,
) -> None:
    with _setup(database) as conn:
        rt = pg_runtime(_fence(conn, "node-a"))
        rt.greet(WS, "ops", writer_card("peer-a"))
        assert rt.submit(ctx("r-1", workspace=WS), CreateTask(title="one")).accepted
        assert _end_sessions(conn) == 2                        # the store's and the audit's
        lost = rt.submit(ctx("r-2", workspace=WS), CreateTask(title="two"))
        assert not lost.accepted and lost.reason is Reason.TASK_INGRESS_UNAVAILABLE
        again = rt.submit(ctx("r-2", workspace=WS), CreateTask(title="two"))
        assert again.accepted and not again.replay             # r-2 never committed
        assert [r.request_id for r in rt.audit()] == ["r-1", "r-2"]
        _assert_chain_verifies(conn, SHARD, 2)


@pytest.mark.parametrize("store", [None, PG_OUTBOX_STORE], ids=["chained", "outbox"])
def test_an_accepted_write_whose_audit_connection_was_lost_is_chained_on_reconnect(
    pg_runtime: Callable[..., IngressRuntime], database: str, store: str | None,
) -> None:
    # Chained, the store writes the record itself and PgAudit's next read reconnects;
    # through the outbox, PgAudit's append is retried on a new connection.
    with _setup(database) as conn:
        rt = pg_runtime(_fence(conn, "node-a"),
                        **({} if store is None else {"store_actor_class": store}))
        rt.greet(WS, "ops", writer_card("peer-a"))
        assert rt.submit(ctx("r-1", workspace=WS), CreateTask(title="one")).accepted
        audit_pid = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND "
            "pid <> pg_backend_pid() AND backend_type = 'client backend' "
            "ORDER BY backend_start DESC LIMIT 1").fetchone()
        assert audit_pid is not None                           # Audit connects last
        conn.execute("SELECT pg_terminate_backend(%s)", (audit_pid[0],))
        out = rt.submit(ctx("r-2", workspace=WS), CreateTask(title="two"))
        assert out.accepted                                    # retried on a new connection
        assert [r.request_id for r in rt.audit()] == ["r-1", "r-2"]
        assert conn.execute("SELECT count(*) FROM outbox").fetchone() == (0,)
        _assert_chain_verifies(conn, SHARD, 2)


def test_a_runtime_on_postgresql_reads_back_its_tasks_and_runs(
    pg_runtime: Callable[..., IngressRuntime], database: str,
) -> None:
    with _setup(database) as conn:
        rt = pg_runtime(_fence(conn, "node-a"))
        rt.greet(WS, "ops", writer_card("peer-a"))
        created = rt.submit(ctx("g-1", workspace=WS), CreateTask(title="read me"))
        assert created.accepted and created.task_id is not None
        queued = rt.submit(ctx("g-2", workspace=WS),
                           EnqueueRun(task_id=created.task_id, idempotency_key="k"))
        assert queued.accepted and queued.run_id is not None
        task = rt.get_task(WS, created.task_id)
        assert task is not None and task.title == "read me"
        run = rt.get_run(WS, queued.run_id)
        assert run is not None and run.task_id == created.task_id
        assert rt.get_task(WS, "no-such-task") is None
        assert rt.get_task(OTHER_WS, created.task_id) is None


def test_a_new_holder_reads_the_records_its_predecessor_wrote_since_a_time(
    pg_runtime: Callable[..., IngressRuntime], database: str,
) -> None:
    """What `serve --cluster` reads when it takes a shard, so that a refusal judged by the
    former holder stays final for a replay sent to the new one."""
    conn = _setup(database)
    first = pg_runtime(_fence(conn, "node-a"))
    first.submit(ctx("before", workspace=WS), CreateTask(title="t"))   # peer_not_found
    time.sleep(0.01)
    since = time.time()
    first.submit(ctx("refused", workspace=WS), CreateTask(title="t"))
    first.close()
    second = pg_runtime(_take_over(conn, SHARD, "node-b"))
    assert [r.request_id for r in second.audit(since)] == ["refused"]
    assert [r.request_id for r in second.audit()] == ["before", "refused"]
    conn.close()


def test_a_since_read_starts_from_the_tail_of_the_shards_chain(
    pg_runtime: Callable[..., IngressRuntime], database: str,
) -> None:
    """As on SQLite (tests/actors/test_audit_since.py): the read starts after the newest
    record older than `since` - SINCE_CLOCK_SLACK, so a takeover reads the last minutes of
    the chain, not all of it. What tells the two reads apart: a record dated recently
    *before* such an old one (a clock that jumped back further than the slack) is not read;
    a scan of the whole chain by `at` returned it."""
    conn = _setup(database)
    rt = pg_runtime(_fence(conn, "node-a"))
    for rid in ("early", "old", "recent"):
        rt.submit(ctx(rid, workspace=WS), CreateTask(title="t"))
    rt.close()
    now = time.time()
    # Only the middle record is redated: the chain's last record must still match its head
    # row for the next holder to start (the redated one no longer verifies; nothing here
    # verifies the chain).
    conn.execute("UPDATE audit SET at = %s WHERE shard = %s AND request_id = 'old'",
                 (now - 2 * SINCE_CLOCK_SLACK, SHARD))
    conn.commit()
    second = pg_runtime(_take_over(conn, SHARD, "node-b"))
    assert [r.request_id for r in second.audit(now - 60)] == ["recent"]
    assert [r.request_id for r in second.audit()] == ["early", "old", "recent"]
    conn.close()
