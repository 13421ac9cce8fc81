"""`task-ingress audit verify|show|tail|export --database URL` through the console script,
on chains a runtime on PostgreSQL wrote: every shard verified on its own; an edit, a deleted
tail or a forged head row found (exit 1); no key or no database is a usage error (exit 2)."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from task_ingress.actors.rules.shards import shard_of
from task_ingress.messages import CreateTask
from task_ingress.runtime import IngressRuntime
from task_ingress.runtime.cluster import pg_leases

from tests.conftest import ctx, writer_card

SHARDS = 3
KEY = secrets.token_hex(32)
WORKSPACES = {shard_of(f"ws-{i}", SHARDS): f"ws-{i}" for i in range(50)}


def _cli(*args: str, key: str | None = KEY) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TASK_INGRESS_AUDIT_KEY"}
    if key is not None:
        env["TASK_INGRESS_AUDIT_KEY"] = key
    return subprocess.run([sys.executable, "-m", "task_ingress", *args], env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def cluster(make_runtime: Callable[..., IngressRuntime], database: str
            ) -> Iterator[psycopg.Connection[Any]]:
    """A database whose shards 0 and 1 were written by two runtimes (shard 2: nothing)."""
    with psycopg.connect(database, autocommit=True) as conn:
        pg_leases.ensure_schema(conn, SHARDS)
        for shard, writes in ((0, 3), (1, 2)):
            lease = pg_leases.acquire(conn, shard, f"node-{shard}", 60, time.monotonic())
            assert lease is not None
            rt = make_runtime(database_url=database, fence=lease.fence, audit_key=KEY)
            ws = WORKSPACES[shard]
            rt.greet(ws, "ops", writer_card("peer-a"))
            for i in range(writes):
                assert rt.submit(ctx(f"s{shard}-{i}", workspace=ws),
                                 CreateTask(title="t")).accepted
            rt.submit(ctx(f"s{shard}-x", peer="ghost", workspace=ws), CreateTask(title="g"))
            rt.close()
        yield conn


def test_verify_checks_every_shard_and_prints_the_record_count_last(
    cluster: psycopg.Connection[Any], database: str,
) -> None:
    done = _cli("audit", "verify", "--database", database)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("shard 0: OK: 4 records")
    assert lines[1].startswith("shard 1: OK: 3 records")
    assert lines[2].startswith("shard 2: OK: 0 records")
    assert lines[-1] == "7"
    shown = _cli("audit", "show", "--database", database, "--reason", "peer_not_found")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert [ln for ln in lines if ln.startswith("[shard")] == ["[shard 0]", "[shard 1]"]
    # Piped: each shard's records as `audit show --store`'s table, within 80 columns, no
    # year, no word broken (it printed one 120-column line per record, full ISO time).
    assert all(len(ln) <= 80 for ln in lines), lines
    assert sum("rejected peer_not_found" in ln for ln in lines) == 2
    assert all(f"req=s{shard}-x" in shown.stdout for shard in (0, 1))
    assert not re.search(r"\d{4}-\d\d-\d\dT", shown.stdout)  # short times, no year
    assert lines[-1] == "2 record(s)"


def test_an_edited_audit_row_makes_verify_exit_1_naming_its_shard_and_record(
    cluster: psycopg.Connection[Any], database: str,
) -> None:
    cluster.execute("UPDATE audit SET outcome = 'rejected', reason = 'overloaded' "
                    "WHERE shard = 1 AND seq = 2")
    done = _cli("audit", "verify", "--database", database)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "shard 0: OK" in done.stdout
    assert "shard 1: problem: chain: record seq 2: hash does not match" in done.stdout
    assert done.stdout.splitlines()[-1] == "FAILED: shard(s) 1 do not verify"


def test_a_task_row_no_accepted_record_vouches_for_makes_verify_exit_1(
    cluster: psycopg.Connection[Any], database: str,
) -> None:
    cluster.execute("INSERT INTO tasks (task_id, workspace, title, description, created_at, "
                    "updated_at) VALUES ('task_forged', %s, 'f', '', 0, 0)", (WORKSPACES[2],))
    done = _cli("audit", "verify", "--database", database)
    assert done.returncode == 1, done.stdout
    assert ("shard 2: problem: store: store: task task_forged has no accepted task.create "
            "record") in done.stdout
    assert "shard 0: OK" in done.stdout and "shard 1: OK" in done.stdout


def test_a_deleted_tail_or_a_forged_head_row_makes_verify_exit_1(
    cluster: psycopg.Connection[Any], database: str,
) -> None:
    cluster.execute("DELETE FROM audit WHERE shard = 0 AND seq = 4")
    cluster.execute("UPDATE audit_chains SET seq = 2 WHERE shard = 1")
    done = _cli("audit", "verify", "--database", database)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "shard 0: problem: checkpoint: store: the head row names seq 4" in done.stdout
    assert "shard 1: problem: checkpoint: store: the head row's MAC does not verify" \
        in done.stdout


def test_a_wrong_key_fails_and_no_key_or_no_database_is_a_usage_error(
    cluster: psycopg.Connection[Any], database: str,
) -> None:
    wrong = _cli("audit", "verify", "--database", database, key=secrets.token_hex(32))
    assert wrong.returncode == 1
    missing = _cli("audit", "verify", "--database", database, key=None)
    assert missing.returncode == 2 and "needs the audit key" in missing.stderr
    gone = _cli("audit", "verify", "--database", database.rsplit("/", 1)[0] + "/nope")
    assert gone.returncode == 2 and "cannot read the cluster database" in gone.stderr
    both = _cli("audit", "verify", "--database", database, "--store", "x.db")
    assert both.returncode == 2


def test_anchors_kept_outside_the_database_catch_a_rollback_the_head_rows_cannot(
    cluster: psycopg.Connection[Any], database: str, tmp_path: Path,
    make_runtime: Callable[..., IngressRuntime],
) -> None:
    ws = WORKSPACES[0]
    old_row = cluster.execute("SELECT seq, hash, at, mac FROM audit_chains WHERE shard = 0"
                              ).fetchone()                  # a genuine head row, at seq 4
    cluster.execute("UPDATE shard_leases SET expires_at = now() WHERE shard = 0")
    lease = pg_leases.acquire(cluster, 0, "node-x", 60, time.monotonic())
    assert lease is not None and old_row is not None and old_row[0] == 4
    rt = make_runtime(database_url=database, fence=lease.fence, audit_key=KEY)
    rt.greet(ws, "ops", writer_card("peer-a"))
    for i in range(2):
        assert rt.submit(ctx(f"late-{i}", workspace=ws), CreateTask(title="t")).accepted
    rt.close()
    head = _cli("audit", "head", "--database", database)
    assert head.returncode == 0, head.stderr
    lines = head.stdout.splitlines()
    # Every shard has a chain from the first start on (the roster wrote shard 2's genesis).
    assert len(lines) == 3 and "seq=6 " in lines[0] and "seq=0 " in lines[2]
    anchors = tmp_path / "anchors.txt"
    anchors.write_text(head.stdout)
    assert _cli("audit", "verify", "--database", database, "--anchors",
                str(anchors)).returncode == 0
    # Someone who can write the database (not the key) rolls shard 0 back to seq 4: the
    # later records and their store rows deleted, the head row they saved put back.
    cluster.execute("DELETE FROM audit WHERE shard = 0 AND seq > 4")
    cluster.execute("DELETE FROM accepted_requests WHERE request_id LIKE 'late-%'")
    cluster.execute("DELETE FROM tasks WHERE task_id NOT IN (SELECT task_id FROM "
                    "accepted_requests WHERE task_id IS NOT NULL)")
    cluster.execute("UPDATE audit_chains SET seq = %s, hash = %s, at = %s, mac = %s "
                    "WHERE shard = 0", old_row)
    inside = _cli("audit", "verify", "--database", database)
    assert inside.returncode == 0                     # nothing inside the database shows it
    done = _cli("audit", "verify", "--database", database, "--anchors", str(anchors))
    assert done.returncode == 1, done.stdout
    assert "shard 0: problem: anchor: record seq 5: tail deleted: the chain ends at seq 4" \
        in done.stdout
    assert "shard 1: OK" in done.stdout
    tampered = tmp_path / "tampered.txt"
    tampered.write_text(head.stdout.replace("seq=6 ", "seq=4 ", 1))
    forged = _cli("audit", "verify", "--database", database, "--anchors", str(tampered))
    assert forged.returncode == 1 and "MAC does not verify" in forged.stdout
    bad = tmp_path / "bad.txt"
    bad.write_text("not a head line\n")
    assert _cli("audit", "verify", "--database", database, "--anchors",
                str(bad)).returncode == 2


def _empty(conn: psycopg.Connection[Any], shard: int | None) -> None:
    """Delete a shard's rows (every row, with `None`) as a database writer without the key
    can: its records, head row, accepted requests, outbox, and its workspace's tasks."""
    where, params = ("", ()) if shard is None else ("WHERE shard = %s", (shard,))
    for table in ("audit", "audit_chains", "accepted_requests", "outbox"):
        conn.execute(f"DELETE FROM {table} {where}", params)
    if shard is None:
        for table in ("runs", "tasks", "cluster_config", "audit_roster"):
            conn.execute(f"DELETE FROM {table}")
    else:
        conn.execute("DELETE FROM runs WHERE task_id IN (SELECT task_id FROM tasks "
                     "WHERE workspace = %s)", (WORKSPACES[shard],))
        conn.execute("DELETE FROM tasks WHERE workspace = %s", (WORKSPACES[shard],))


def test_a_database_with_every_row_deleted_fails_verification(
    cluster: psycopg.Connection[Any], database: str,
) -> None:
    _empty(cluster, None)
    done = _cli("audit", "verify", "--database", database)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "problem: checkpoint: store: no shards" in done.stdout
    assert done.stdout.splitlines()[-1] == "FAILED: no shards"
    assert _cli("audit", "head", "--database", database).returncode == 1


def test_a_shard_emptied_whole_fails_verification_without_an_anchor(
    cluster: psycopg.Connection[Any], database: str, tmp_path: Path,
) -> None:
    head = _cli("audit", "head", "--database", database)
    assert head.returncode == 0, head.stderr
    anchors = tmp_path / "anchors.txt"
    anchors.write_text(head.stdout)
    _empty(cluster, 0)
    # Records, head row and store rows gone: the roster, MAC'd under the key when the
    # chains were set up, still names shard 0's chain.
    inside = _cli("audit", "verify", "--database", database)
    assert inside.returncode == 1, inside.stdout
    assert ("shard 0: problem: roster: store: the roster names chain ") in inside.stdout
    assert "its audit chain was deleted whole (emptied)" in inside.stdout
    assert "shard 1: OK" in inside.stdout and "shard 2: OK" in inside.stdout
    assert inside.stdout.splitlines()[-1] == "FAILED: shard(s) 0 do not verify"
    done = _cli("audit", "verify", "--database", database, "--anchors", str(anchors))
    assert done.returncode == 1, done.stdout
    assert "problem: anchor: store: no shard has the anchored chain" in done.stdout


def test_export_database_writes_every_shards_records_with_their_shard(
    cluster: psycopg.Connection[Any], database: str, tmp_path: Path,
) -> None:
    done = _cli("audit", "export", "--database", database)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(r["shard"], r["seq"]) for r in rows] == [
        (0, 1), (0, 2), (0, 3), (0, 4), (1, 1), (1, 2), (1, 3)]
    assert {r["request_id"] for r in rows} >= {"s0-0", "s1-x"}
    ghosts = _cli("audit", "export", "--database", database, "--peer", "ghost",
                  "-o", str(tmp_path / "ghosts.jsonl"))
    assert ghosts.returncode == 0, ghosts.stderr
    lines = (tmp_path / "ghosts.jsonl").read_text().splitlines()
    assert [json.loads(line)["request_id"] for line in lines] == ["s0-x", "s1-x"]
    missing = _cli("audit", "export", "--database", database, "-o", str(tmp_path / "no/x"))
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
    both = _cli("audit", "export", "--database", database, "--store", str(tmp_path / "s.db"))
    assert both.returncode == 2 and "exactly one of" in both.stderr


def test_tail_database_shows_the_newest_across_shards_and_follows_every_shard(
    cluster: psycopg.Connection[Any], database: str,
    make_runtime: Callable[..., IngressRuntime],
) -> None:
    newest = _cli("audit", "tail", "--database", database, "-n", "3")
    assert newest.returncode == 0, newest.stderr
    assert [ln.split()[0] for ln in newest.stdout.splitlines()] == ["[shard"] * 3
    assert newest.stdout.splitlines()[-1].endswith("req=s1-x")  # the last one written
    env = {**os.environ, "TASK_INGRESS_AUDIT_KEY": KEY}
    with subprocess.Popen(
            [sys.executable, "-m", "task_ingress", "audit", "tail", "--database", database,
             "-n", "1", "-f", "--for", "30", "--json"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as follower:
        try:
            assert follower.stdout is not None
            # Its first line (the newest record) comes after it read each shard's head.
            assert json.loads(follower.stdout.readline())["request_id"] == "s1-x"
            lease = pg_leases.acquire(cluster, 2, "node-2", 60, time.monotonic())
            assert lease is not None
            rt = make_runtime(database_url=database, fence=lease.fence, audit_key=KEY)
            rt.greet(WORKSPACES[2], "ops", writer_card("peer-a"))
            for i in range(2):
                assert rt.submit(ctx(f"s2-{i}", workspace=WORKSPACES[2]),
                                 CreateTask(title="t")).accepted
            rt.close()
            got = [json.loads(follower.stdout.readline()) for _ in range(2)]
        finally:
            follower.kill()
    assert [(r["shard"], r["seq"], r["request_id"]) for r in got] == [
        (2, 1, "s2-0"), (2, 2, "s2-1")]


def test_a_shard_chain_replaced_by_another_genuine_chain_fails_verification(
    cluster: psycopg.Connection[Any], database: str,
) -> None:
    # Without the key, shard 1 emptied and given a copy of shard 2's genuine genesis head
    # row: every MAC holds and the shard looks unwritten, but its chain is not shard 1's.
    _empty(cluster, 1)
    cluster.execute("INSERT INTO audit_chains (shard, chain_id, seq, hash, at, mac) SELECT "
                    "1, chain_id, seq, hash, at, mac FROM audit_chains WHERE shard = 2")
    done = _cli("audit", "verify", "--database", database)
    assert done.returncode == 1, done.stdout
    assert "shard 1: problem: roster: store: the head row names chain " in done.stdout
    assert "the shard's audit chain was replaced" in done.stdout
    assert done.stdout.splitlines()[-1] == "FAILED: shard(s) 1 do not verify"


def test_a_roster_forged_or_deleted_without_the_key_fails_every_shard(
    cluster: psycopg.Connection[Any], database: str,
) -> None:
    # Naming a fresh chain for shard 0 (to start it over) needs a MAC only the key makes.
    cluster.execute("UPDATE audit_roster SET chain_ids[1] = %s", (secrets.token_hex(16),))
    forged = _cli("audit", "verify", "--database", database)
    assert forged.returncode == 1, forged.stdout
    for shard in range(SHARDS):
        assert (f"shard {shard}: problem: roster: store: the chain roster's MAC does not "
                "verify") in forged.stdout
    cluster.execute("DELETE FROM audit_roster")
    gone = _cli("audit", "verify", "--database", database)
    assert gone.returncode == 1, gone.stdout
    assert "shard 0: problem: roster: store: no chain roster" in gone.stdout
    assert gone.stdout.splitlines()[-1] == "FAILED: shard(s) 0, 1, 2 do not verify"


def test_a_roster_of_another_shard_count_fails_verification(
    cluster: psycopg.Connection[Any], database: str,
) -> None:
    cluster.execute("UPDATE cluster_config SET value = '4' WHERE key = 'shards'")
    done = _cli("audit", "verify", "--database", database)
    assert done.returncode == 1, done.stdout
    assert "the chain roster names 3 shards, the cluster is set up for 4" in done.stdout
