"""The cluster's audit chain roster (actors/storage/pg_roster.py): written once with the
key, for every shard at once and race-free; a runtime refuses a shard whose chain was
emptied whole or replaced, or a roster it cannot verify; chains written without a roster
are adopted only deliberately, and only when everything else verifies."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from task_ingress.actors.rules.chain import ChainKey
from task_ingress.actors.rules.shards import Fence, shard_of
from task_ingress.actors.storage import pg_auditlog, pg_roster
from task_ingress.actors.storage.chainstart import ChainRefused
from task_ingress.messages import CreateTask
from task_ingress.runtime import IngressRuntime
from task_ingress.runtime.audit.pg_verify import verify_database
from task_ingress.runtime.cluster import pg_leases
from task_ingress.runtime.cluster.adopt import adopt_roster
from task_ingress.runtime.cluster.setup import ensure_cluster_database
from task_ingress.runtime.errors import RuntimeStartError

from tests.conftest import ctx, writer_card

SHARDS = 3
KEY = secrets.token_hex(32)
WS = "ws"
SHARD = shard_of(WS, SHARDS)


def _fence(conn: psycopg.Connection[Any], owner: str, shard: int = SHARD) -> Fence:
    conn.execute("UPDATE shard_leases SET expires_at = now() - interval '1 second' "
                 "WHERE shard = %s", (shard,))
    lease = pg_leases.acquire(conn, shard, owner, 60.0, time.monotonic())
    assert lease is not None
    return lease.fence


def _write(make_runtime: Callable[..., IngressRuntime], database: str,
           conn: psycopg.Connection[Any], owner: str, writes: int) -> None:
    rt = make_runtime(database_url=database, fence=_fence(conn, owner), audit_key=KEY)
    rt.greet(WS, "ops", writer_card("peer-a"))
    for i in range(writes):
        assert rt.submit(ctx(f"{owner}-{i}", workspace=WS), CreateTask(title="t")).accepted
    rt.close()


def _problems(conn: psycopg.Connection[Any]) -> list[str]:
    verdict = verify_database(conn, bytes.fromhex(KEY))
    return [f"shard {v.shard}: {p}" for v in verdict.shards for p in v.problems] + [
        str(p) for p in verdict.problems]


def test_the_first_runtime_writes_a_roster_naming_a_genesis_chain_for_every_shard(
    make_runtime: Callable[..., IngressRuntime], database: str,
) -> None:
    with psycopg.connect(database, autocommit=True) as conn:
        pg_leases.ensure_schema(conn, SHARDS)
        assert pg_roster.read_roster(conn) is None
        _write(make_runtime, database, conn, "node-a", 1)
        roster = pg_roster.read_roster(conn)
        assert roster is not None and roster.verifies(ChainKey.from_hex(KEY))
        heads = [pg_auditlog.read_head_row(conn, s) for s in range(SHARDS)]
        assert [h.chain_id if h else None for h in heads] == list(roster.chain_ids)
        assert len(set(roster.chain_ids)) == SHARDS
        assert _problems(conn) == []


def test_a_runtime_refuses_a_shard_emptied_whole_or_given_another_chain(
    make_runtime: Callable[..., IngressRuntime], database: str,
) -> None:
    with psycopg.connect(database, autocommit=True) as conn:
        pg_leases.ensure_schema(conn, SHARDS)
        _write(make_runtime, database, conn, "node-a", 2)
        # Emptied by someone who can write the database, not sign: it used to restart
        # there with a fresh chain, as if never written.
        for table in ("audit", "audit_chains", "accepted_requests", "outbox"):
            conn.execute(f"DELETE FROM {table} WHERE shard = %s", (SHARD,))
        conn.execute("DELETE FROM runs")
        conn.execute("DELETE FROM tasks")
        with pytest.raises(RuntimeStartError, match="no head row"):
            make_runtime(database_url=database, fence=_fence(conn, "node-b"), audit_key=KEY)
        assert pg_auditlog.read_head_row(conn, SHARD) is None   # nothing started over
        # Another genuine chain's genesis row (another shard's) in its place.
        other = (SHARD + 1) % SHARDS
        conn.execute("INSERT INTO audit_chains (shard, chain_id, seq, hash, at, mac) SELECT "
                     "%s, chain_id, seq, hash, at, mac FROM audit_chains WHERE shard = %s",
                     (SHARD, other))
        with pytest.raises(RuntimeStartError, match="chain replaced"):
            make_runtime(database_url=database, fence=_fence(conn, "node-c"), audit_key=KEY)


def test_a_runtime_refuses_a_roster_forged_without_the_key(
    make_runtime: Callable[..., IngressRuntime], database: str,
) -> None:
    with psycopg.connect(database, autocommit=True) as conn:
        pg_leases.ensure_schema(conn, SHARDS)
        _write(make_runtime, database, conn, "node-a", 1)
        fresh = secrets.token_hex(16)
        conn.execute("UPDATE audit_roster SET chain_ids[%s] = %s", (SHARD + 1, fresh))
        with pytest.raises(RuntimeStartError, match="roster does not verify"):
            make_runtime(database_url=database, fence=_fence(conn, "node-b"), audit_key=KEY)


def test_two_daemons_setting_the_database_up_at_once_write_one_roster(database: str) -> None:
    key = ChainKey.from_hex(KEY)
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def daemon() -> None:
        try:
            with psycopg.connect(database, autocommit=True) as conn:
                start.wait(timeout=30)
                ensure_cluster_database(conn, SHARDS, key)
        except BaseException as exc:  # reported below: a thread's exception is lost
            errors.append(exc)

    threads = [threading.Thread(target=daemon) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    with psycopg.connect(database, autocommit=True) as conn:
        rows = conn.execute("SELECT chain_ids FROM audit_roster").fetchall()
        assert len(rows) == 1
        heads = conn.execute("SELECT chain_id FROM audit_chains ORDER BY shard").fetchall()
        assert [h[0] for h in heads] == rows[0][0]
        assert _problems(conn) == []


def test_chains_without_a_roster_are_refused_until_adopted_and_adopted_only_when_they_verify(
    make_runtime: Callable[..., IngressRuntime], database: str,
) -> None:
    with psycopg.connect(database, autocommit=True) as conn:
        pg_leases.ensure_schema(conn, SHARDS)
        _write(make_runtime, database, conn, "node-a", 2)
        # As a database written before the roster (or whose roster was deleted) reads:
        # head rows, no roster. Nothing re-writes it on its own.
        conn.execute("DELETE FROM audit_roster")
        conn.execute("DELETE FROM audit_chains WHERE shard <> %s", (SHARD,))
        assert any("no chain roster" in p for p in _problems(conn))
        with pytest.raises(RuntimeStartError, match="no chain roster"):
            make_runtime(database_url=database, fence=_fence(conn, "node-b"), audit_key=KEY)
        with pytest.raises(ChainRefused, match="none of the 1 shard head rows verifies"):
            pg_roster.ensure_roster(conn, ChainKey.from_hex(secrets.token_hex(32)), SHARDS,
                                    adopt=True)
        conn.execute("UPDATE audit SET reason = 'x' WHERE shard = %s AND seq = 1", (SHARD,))
        with pytest.raises(ChainRefused, match="does not verify: shard"):
            adopt_roster(conn, bytes.fromhex(KEY))
        assert pg_roster.read_roster(conn) is None
        conn.execute("UPDATE audit SET reason = NULL WHERE shard = %s AND seq = 1", (SHARD,))
        old = pg_auditlog.read_head_row(conn, SHARD)
        roster = adopt_roster(conn, bytes.fromhex(KEY))
        assert old is not None and roster.chain_ids[SHARD] == old.chain_id
        assert _problems(conn) == []
        _write(make_runtime, database, conn, "node-c", 1)
        assert _problems(conn) == []


def test_cluster_adopt_roster_pins_verifying_chains_once_and_refuses_an_edited_one(
    make_runtime: Callable[..., IngressRuntime], database: str,
) -> None:
    def adopt(*extra: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "TASK_INGRESS_AUDIT_KEY": KEY}
        return subprocess.run([sys.executable, "-m", "task_ingress", "cluster",
                               "adopt-roster", "--database", database, *extra],
                              env=env, capture_output=True, text=True, timeout=60)

    with psycopg.connect(database, autocommit=True) as conn:
        pg_leases.ensure_schema(conn, SHARDS)
        _write(make_runtime, database, conn, "node-a", 2)
        conn.execute("DELETE FROM audit_roster")  # as a database older than the roster
        conn.execute("UPDATE audit SET reason = 'x' WHERE shard = %s AND seq = 1", (SHARD,))
        refused = adopt()
        assert refused.returncode == 1, refused.stderr
        assert "not adopted" in refused.stderr and len(refused.stderr.splitlines()) == 1
        assert pg_roster.read_roster(conn) is None
        conn.execute("UPDATE audit SET reason = NULL WHERE shard = %s AND seq = 1", (SHARD,))
        wrong = adopt("--key", "zz")
        assert wrong.returncode == 2 and "hex" in wrong.stderr
        done = adopt()
        assert done.returncode == 0, done.stderr
        assert "roster written" in done.stdout and _problems(conn) == []
        again = adopt()
        assert again.returncode == 0 and "already there" in again.stdout
