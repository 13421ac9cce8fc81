"""The fenced write against a real PostgreSQL: a write commits only under the current epoch,
checked in the write's own transaction; the store rules are the embedded store's."""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from task_ingress.actors.rules.shards import shard_of
from task_ingress.actors.storage import pg_auditlog, pg_store
from task_ingress.actors.storage.auditlog import AUDIT_NAMES
from task_ingress.actors.storage.pg_schema import ensure_store_schema
from task_ingress.messages import CreateTask, EnqueueRun, IngressContext, Reason, UpdateTask
from task_ingress.messages.limits import SPEC_LIMITS
from task_ingress.runtime.cluster import pg_leases
from task_ingress.runtime.cluster.history import fencing_violations
from task_ingress.runtime.cluster.lease import Lease

from tests.cluster.cluster_support import TcpProxy
from tests.cluster.pg_support import PostgresServer

SHARDS = 4
WS = "ws-a"
SHARD = shard_of(WS, SHARDS)


def _ctx(request_id: str, workspace: str = WS) -> IngressContext:
    return IngressContext(workspace=workspace, peer_id="peer-a", channel="ops",
                          request_id=request_id)


def _setup(url: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(url, autocommit=True)
    pg_leases.ensure_schema(conn, SHARDS)
    ensure_store_schema(conn)
    return conn


def _acquire(conn: psycopg.Connection[Any], owner: str, ttl: float) -> Lease:
    lease = pg_leases.acquire(conn, SHARD, owner, ttl, time.monotonic())
    assert lease is not None
    return lease


def _wait_expired(conn: psycopg.Connection[Any]) -> None:
    for _ in range(400):
        if pg_leases.status(conn)[SHARD].owner is None:
            return
        time.sleep(0.05)
    raise AssertionError("lease never expired")


def _write(conn: psycopg.Connection[Any], lease: Lease, request_id: str,
           workspace: str = WS) -> Any:
    return pg_store.apply_fenced(conn, lease.fence, SHARDS, _ctx(request_id, workspace),
                                 CreateTask(title=request_id), SPEC_LIMITS, time.time())


def test_the_holder_writes_under_the_store_rules_and_each_write_names_its_epoch(
    database: str,
) -> None:
    with _setup(database) as conn:
        lease = _acquire(conn, "a", ttl=30)
        created = _write(conn, lease, "r-1")
        assert created.accepted and created.task_id
        replay = _write(conn, lease, "r-1")
        assert replay.accepted and replay.replay and replay.task_id == created.task_id
        run = pg_store.apply_fenced(
            conn, lease.fence, SHARDS, _ctx("r-2"),
            EnqueueRun(task_id=created.task_id, idempotency_key="k"), SPEC_LIMITS, time.time())
        assert run.accepted and run.run_id
        stale = pg_store.apply_fenced(
            conn, lease.fence, SHARDS, _ctx("r-3"),
            UpdateTask(task_id=created.task_id, title="x", expected_version=7),
            SPEC_LIMITS, time.time())
        assert stale.reason is Reason.VALIDATION_FAILED
        missing = pg_store.apply_fenced(
            conn, lease.fence, SHARDS, _ctx("r-4"), UpdateTask(task_id="task_nope", title="x"),
            SPEC_LIMITS, time.time())
        assert missing.reason is Reason.TASK_NOT_FOUND
        task = pg_store.get_task(conn, WS, created.task_id)
        assert task is not None and task.metadata["ingress.request_id"] == "r-1"
        assert pg_store.get_task(conn, "other-ws", created.task_id) is None
        found = pg_store.get_run(conn, WS, run.run_id)
        assert found is not None and found.idempotency_key == "k"
        rows = conn.execute(
            "SELECT request_id, shard, epoch FROM accepted_requests ORDER BY seq").fetchall()
        assert rows == [("r-1", SHARD, 1), ("r-2", SHARD, 1)]
        assert fencing_violations(conn, SHARDS) == []


def test_a_workspace_of_another_shard_is_unavailable_to_this_holder(database: str) -> None:
    other = next(f"ws-{i}" for i in range(100) if shard_of(f"ws-{i}", SHARDS) != SHARD)
    with _setup(database) as conn:
        lease = _acquire(conn, "a", ttl=30)
        out = _write(conn, lease, "r-1", workspace=other)
        assert out.reason is Reason.TASK_INGRESS_UNAVAILABLE
        assert conn.execute("SELECT count(*) FROM tasks").fetchone() == (0,)


def test_a_holder_that_paused_past_its_lease_cannot_write_after_the_takeover(
    database: str,
) -> None:
    with _setup(database) as conn:
        old = _acquire(conn, "a", ttl=0.3)
        assert _write(conn, old, "a-1").accepted
        _wait_expired(conn)                       # a pauses; it never renews
        new = _acquire(conn, "b", ttl=30)
        assert _write(conn, new, "b-1").accepted
        late = _write(conn, old, "a-2")           # a wakes up, still sure it holds the shard
        assert not late.accepted and late.reason is Reason.TASK_INGRESS_UNAVAILABLE
        titles = {r[0] for r in conn.execute("SELECT title FROM tasks").fetchall()}
        assert titles == {"a-1", "b-1"}
        assert fencing_violations(conn, SHARDS) == []


def test_a_holder_paused_inside_its_write_transaction_does_not_stall_the_takeover(
    database: str,
) -> None:
    with _setup(database) as conn:
        old = _acquire(conn, "a", ttl=0.6)
        paused = pg_store.connect_store(database, idle_in_transaction_timeout=0.3)
        # a has passed its fence check and holds the lease row; then it stops.
        paused.execute("BEGIN")
        paused.execute("SELECT epoch FROM shard_leases WHERE shard = %s FOR UPDATE", (SHARD,))
        _wait_expired(conn)
        new = _acquire(conn, "b", ttl=30)     # waits for PostgreSQL to end a's session
        assert new.epoch == old.epoch + 1
        with pytest.raises(psycopg.Error):    # ended: its transaction rolled back
            paused.execute("COMMIT")
        assert paused.broken
        assert _write(conn, new, "b-1").accepted
        paused.close()


@pytest.mark.parametrize("insert", ["store batch", "audit records", "one-message begin"])
def test_a_holder_cut_off_right_after_a_batch_insert_is_ended_by_the_idle_timeout(
    database: str, postgres: PostgresServer, insert: str,
) -> None:
    """A batch written in pipeline mode (psycopg's executemany) ends with Sync + Flush, and
    the Flush disarms idle_in_transaction_session_timeout: a holder cut off right there kept
    its session, and the lease row, with no timeout (found in the partition test). The
    batch writes of the store and the audit must leave the timeout armed, and so must the
    one message that begins a fenced transaction (BEGIN, the fence, the first reads)."""
    name = f"cut-{secrets.token_hex(4)}"
    proxy = TcpProxy(postgres.port)
    cut: psycopg.Connection[Any] | None = None
    url = database.replace(f":{postgres.port}/", f":{proxy.port}/") + f"?application_name={name}"
    try:
        with _setup(database) as conn:
            lease = _acquire(conn, "a", ttl=30)
            cut = pg_store.connect_store(url, idle_in_transaction_timeout=0.3)
            if insert == "one-message begin":
                pg_store.FencedTransaction(cut, lease.fence).begin(
                    ("SELECT last FROM outbox_seq WHERE shard = %s", (SHARD,)))
            else:
                cut.execute("BEGIN")
                pg_store.lock_fence(cut, lease.fence)
            if insert == "store batch":
                pg_store.QmarkConnection(cut).executemany(
                    "INSERT INTO outbox (id, record) VALUES (?, ?)", [(1, b"x"), (2, b"y")])
            elif insert == "audit records":
                records = [dict.fromkeys(AUDIT_NAMES, "x")
                           | {"seq": i, "at": 0.0, "payload_size": 0, "replay": False}
                           for i in (1, 2)]
                pg_store.execute_rows(cut, pg_auditlog.INSERT_SHARD_AUDIT,
                                      [(SHARD, *(r[n] for n in AUDIT_NAMES)) for r in records])
            proxy.cut()  # silent from here on: no COMMIT, no ROLLBACK, no FIN
            for _ in range(200):  # bounded: 10 s against a 0.3 s timeout
                alive = conn.execute("SELECT count(*) FROM pg_stat_activity "
                                     "WHERE application_name = %s", (name,)).fetchone()
                if alive == (0,):
                    break
                time.sleep(0.05)
            else:
                conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                             "WHERE application_name = %s", (name,))
                raise AssertionError("the cut-off session outlived its idle timeout")
            assert _write(conn, lease, "a-1").accepted  # the lease row is free again
    finally:
        proxy.close()
        if cut is not None:
            cut.close()


def test_a_sigstopped_holder_resumed_after_a_takeover_commits_nothing(database: str) -> None:
    ttl = 1.0
    with _setup(database) as conn:
        writer = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("fenced_writer.py")), database,
             str(SHARDS), "a", str(ttl)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert writer.stdin is not None and writer.stdout is not None
        try:
            assert writer.stdout.readline().split() == ["ready", "1"]
            before = [json.loads(writer.stdout.readline()) for _ in range(5)]
            assert all(a["accepted"] for a in before)
            writer.send_signal(signal.SIGSTOP)
            _wait_expired(conn)
            new = _acquire(conn, "b", ttl=30)
            assert _write(conn, new, "b-1").accepted
            writer.send_signal(signal.SIGCONT)
            after: list[dict[str, Any]] = []
            # Its answers so far (written before the stop, read late), then ten refusals;
            # bounded, so that a broken fence fails the asserts below instead of hanging.
            while sum(1 for a in after if not a["accepted"]) < 10 and len(after) < 200:
                after.append(json.loads(writer.stdout.readline()))
            writer.stdin.close()
            assert writer.wait(timeout=30) == 0
        finally:
            if writer.poll() is None:
                writer.kill()
                writer.wait()
            writer.stdout.close()
            if not writer.stdin.closed:
                writer.stdin.close()
        answers = before + after
        refused = [a for a in answers if not a["accepted"]]
        assert {a["reason"] for a in refused} == {Reason.TASK_INGRESS_UNAVAILABLE.value}
        first_refused = answers.index(refused[0])
        # Once refused, never accepted again: the takeover is permanent.
        assert all(not a["accepted"] for a in answers[first_refused:])
        committed = {r[0]: r[1] for r in conn.execute(
            "SELECT request_id, epoch FROM accepted_requests").fetchall()}
        acknowledged = {a["request_id"] for a in answers if a["accepted"]}
        assert acknowledged <= set(committed)          # no acknowledged write lost
        assert {r for r, e in committed.items() if e == 1} <= acknowledged | {
            answers[first_refused]["request_id"]}      # at most the one in flight at the stop
        assert fencing_violations(conn, SHARDS) == []


def test_batch_rows_are_written_without_a_pipeline_in_chunks_and_one_update_per_row(
    database: str,
) -> None:
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("CREATE TABLE rows_t (a integer, b text, c text)")
        n = pg_store.MAX_ROWS_PER_INSERT * 2 + 1
        pg_store.execute_rows(conn, "INSERT INTO rows_t (a, b, c) VALUES (%s, %s, 'k')",
                              [(i, f"r{i}") for i in range(n)])
        pg_store.execute_rows(conn, "UPDATE rows_t SET b = %s WHERE a = %s", [("u", 0), ("v", 7)])
        pg_store.execute_rows(conn, "INSERT INTO rows_t (a, b, c) VALUES (%s, %s, %s)", [])
        rows = conn.execute("SELECT a, b, c FROM rows_t ORDER BY a").fetchall()
    assert [r[0] for r in rows] == list(range(n)) and {r[2] for r in rows} == {"k"}
    assert rows[0][1] == "u" and rows[7][1] == "v" and rows[n - 1][1] == f"r{n - 1}"
