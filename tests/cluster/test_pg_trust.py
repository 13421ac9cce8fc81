"""The cluster's trust policy in PostgreSQL: `trust add|remove|list --database URL` through
the console script, and the daemons' reader, which sees a change within its re-read
interval and never re-reads sooner."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import psycopg
import pytest
from task_ingress.runtime.cluster.pg_leases import ShardCountMismatch
from task_ingress.runtime.cluster.pg_trust import DatabaseTrustPolicy
from task_ingress.runtime.cluster.setup import ensure_cluster_database
from task_ingress.runtime.nats.identity import b64url, generate_key, handle, raw_public_key

from tests.conftest import FakeClock


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "task_ingress", *args],
                          capture_output=True, text=True, timeout=60)


def _identity(nickname: str) -> tuple[str, bytes]:
    key = generate_key()
    return handle(nickname, key), raw_public_key(key)


def test_trust_add_list_remove_round_trip_through_the_database(database: str) -> None:
    alice, alice_pub = _identity("alice")
    bob, _ = _identity("bob")
    assert _cli("trust", "list", "--database", database).stdout == ""
    added = _cli("trust", "add", alice, "--pubkey", b64url(alice_pub), "--database", database)
    assert added.returncode == 0, added.stderr
    assert added.stdout == f"allowed {alice}\n" and "no public key" not in added.stderr
    bare = _cli("trust", "add", bob, "--database", database)
    assert bare.returncode == 0 and "has no public key" in bare.stderr
    assert _cli("trust", "list", "--database", database).stdout.split() == sorted([alice, bob])
    removed = _cli("trust", "remove", bob, "--database", database)
    assert removed.returncode == 0 and removed.stdout == f"removed {bob}\n"
    assert _cli("trust", "list", "--database", database).stdout.split() == [alice]
    again = _cli("trust", "remove", bob, "--database", database)
    assert again.stdout == f"not present {bob}\n"


def test_trust_with_a_foreign_key_a_bad_handle_or_no_database_is_a_usage_error(
    database: str,
) -> None:
    alice, _ = _identity("alice")
    _, mallory_pub = _identity("mallory")
    foreign = _cli("trust", "add", alice, "--pubkey", b64url(mallory_pub), "--database",
                   database)
    assert foreign.returncode == 2 and "belongs to none of the handles" in foreign.stderr
    bad = _cli("trust", "add", "alice@nope", "--database", database)
    assert bad.returncode == 2 and "not a verified handle" in bad.stderr
    gone = _cli("trust", "list", "--database", database.rsplit("/", 1)[0] + "/nope")
    assert gone.returncode == 2 and "cannot use the cluster database" in gone.stderr
    both = _cli("trust", "list", "--database", database, "--trust-file", "x.json")
    assert both.returncode == 2 and "exactly one of" in both.stderr
    assert _cli("trust", "list", "--database", database).stdout == ""


def test_the_reader_sees_adds_and_removals_after_its_recheck_interval_and_not_before(
    database: str,
) -> None:
    clock = FakeClock()
    alice, alice_pub = _identity("alice")
    fp = alice.rsplit("@", 1)[1]
    policy = DatabaseTrustPolicy(database, recheck=5.0, clock=clock)
    try:
        assert not policy.allows(fp) and len(policy) == 0
        assert _cli("trust", "add", alice, "--pubkey", b64url(alice_pub), "--database",
                    database).returncode == 0
        clock.advance(4.9)
        assert not policy.allows(fp)          # read at most every 5 s: not yet
        clock.advance(0.2)
        assert policy.allows(fp) and len(policy) == 1
        assert policy.keys() == {fp: alice_pub}
        assert policy.handles() == [alice]
        assert _cli("trust", "remove", alice, "--database", database).returncode == 0
        assert policy.allows(fp)              # still the policy read 0 s ago
        clock.advance(5.1)
        assert not policy.allows(fp) and policy.keys() == {}
        assert policy.reloads == 3
    finally:
        policy.close()


def test_a_cluster_database_is_set_up_in_one_idempotent_call(database: str) -> None:
    with psycopg.connect(database, autocommit=True) as conn:
        for _ in range(2):
            ensure_cluster_database(conn, shards=3)
        tables = {r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()}
        assert {"shard_leases", "tasks", "audit", "audit_chains", "outbox",
                "trust_policy"} <= tables
        with pytest.raises(ShardCountMismatch):
            ensure_cluster_database(conn, shards=4)


def test_a_reader_without_read_on_call_answers_from_its_last_read_until_refreshed(
    database: str,
) -> None:
    """The daemon's event loop asks the policy and must never wait for the database: such a
    reader never touches it when asked, only in `refresh` (the daemon's poller thread)."""
    clock = FakeClock()
    alice, alice_pub = _identity("alice")
    fp = alice.rsplit("@", 1)[1]
    connects: list[str] = []

    def connect(url: str) -> psycopg.Connection[Any]:
        connects.append(url)
        return psycopg.connect(url, autocommit=True)

    policy = DatabaseTrustPolicy(database, recheck=5.0, clock=clock, connect=connect,
                                 read_on_call=False)
    try:
        assert _cli("trust", "add", alice, "--pubkey", b64url(alice_pub), "--database",
                    database).returncode == 0
        policy.close()                         # asked with no connection at all
        clock.advance(60)
        assert not policy.allows(fp) and len(policy) == 0 and policy.handles() == []
        assert connects == [database] and policy.reloads == 1
        policy.refresh()                       # due: reads now
        assert policy.allows(fp) and policy.keys() == {fp: alice_pub}
        assert _cli("trust", "remove", alice, "--database", database).returncode == 0
        policy.refresh()                       # not due, not forced: keeps the last read
        assert policy.allows(fp)
        policy.refresh(force=True)
        assert not policy.allows(fp) and policy.reloads == 3
    finally:
        policy.close()
