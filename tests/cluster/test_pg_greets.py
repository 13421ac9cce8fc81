"""The greet ledger's marks in PostgreSQL (runtime/cluster/pg_greets.py): the same merge as
the file's, what a shard's next holder loads, pruning, and the daemon's shared connection."""

from __future__ import annotations

import random

import psycopg
import pytest
from task_ingress.actors.storage.pg_store import Fenced
from task_ingress.runtime.cluster import pg_leases
from task_ingress.runtime.cluster.pg_greets import GreetDatabase, write_mark
from task_ingress.runtime.cluster.setup import ensure_cluster_database
from task_ingress.runtime.nats.envelope import MAX_REPLAY_AGE
from task_ingress.runtime.nats.greets import (
    MAX_IDS_PER_TS,
    GreetLedger,
    PeerKey,
    Persisted,
    merged,
)

from tests.conftest import FakeClock

NOW = 1_775_606_400
KEY = ("ws-1", "ops", "alice@" + "a" * 32)


def _rows(database: str) -> dict[PeerKey, Persisted]:
    with psycopg.connect(database, autocommit=True) as conn:
        return {(str(w), str(c), str(p)): (int(ts), list(ids)) for w, c, p, ts, ids in
                conn.execute("SELECT workspace, channel, peer_id, ts, ids FROM greet_marks")}


def _ledger(db: GreetDatabase, clock: FakeClock, ws: str = KEY[0]) -> GreetLedger:
    return GreetLedger(db.store(ws), greet_interval=30.0, clock=clock, wall=db.wall)


def test_the_database_merges_greet_marks_as_the_file_does(database: str) -> None:
    with psycopg.connect(database, autocommit=True) as conn:
        ensure_cluster_database(conn, shards=2)
        rng = random.Random(7)
        expected: dict[PeerKey, Persisted] = {}
        # Newer, older and equal ts, known and new ids, past MAX_IDS_PER_TS in one second.
        writes = [((f"ws-{rng.randrange(2)}", "ops", f"p{rng.randrange(3)}"),
                   100 + rng.randrange(4), f"g-{rng.randrange(90)}") for _ in range(2000)]
        writes += [(KEY, 200, f"burst-{i}") for i in range(MAX_IDS_PER_TS + 5)]
        for key, ts, env_id in writes:
            write_mark(conn, key, ts, env_id)
            expected[key] = merged(expected.get(key), ts, env_id)
    assert _rows(database) == expected
    assert len(expected[KEY][1]) == MAX_IDS_PER_TS and expected[KEY][1][-1] == "burst-68"


def test_an_existing_cluster_database_gets_the_greet_table_at_the_next_start(
        database: str) -> None:
    with psycopg.connect(database, autocommit=True) as conn:
        ensure_cluster_database(conn, shards=2)
        conn.execute("DROP TABLE greet_marks")  # a database set up before the table existed
        ensure_cluster_database(conn, shards=2)  # what every daemon's keeper does at start
        write_mark(conn, KEY, NOW, "g-1")
    assert _rows(database) == {KEY: (NOW, ["g-1"])}


def test_a_new_holder_loads_the_marks_and_a_captured_older_greet_is_stale(
        database: str, clock: FakeClock) -> None:
    with psycopg.connect(database, autocommit=True) as conn:
        ensure_cluster_database(conn, shards=2)
    old_owner = GreetDatabase(database, wall=lambda: float(NOW))
    first = _ledger(old_owner, clock)
    assert first.load() == 0
    for ts, env_id in ((NOW - 20, "g-1"), (NOW - 10, "g-2")):
        assert first.judge(KEY, ts, env_id) is None
        first.note(KEY, ts, env_id)
        first.persist(KEY, ts, env_id, "card")
    old_owner.close()
    new_owner = GreetDatabase(database, wall=lambda: float(NOW))
    other_ws = _ledger(new_owner, clock, "ws-2")
    assert other_ws.load() == 0  # marks are per workspace
    second = _ledger(new_owner, clock)
    assert second.load() == 1
    assert second.judge(KEY, NOW - 20, "g-1") == "stale"
    assert second.judge(KEY, NOW - 10, "g-2") == "duplicate"
    assert second.judge(KEY, NOW - 5, "g-3") is None
    new_owner.close()
    with pytest.raises(RuntimeError, match="closed"):  # a late greet is not applied
        second.persist(KEY, NOW - 5, "g-3", "card")


def test_expired_marks_are_deleted_when_a_shard_is_taken_and_as_marks_are_written(
        database: str, clock: FakeClock) -> None:
    with psycopg.connect(database, autocommit=True) as conn:
        ensure_cluster_database(conn, shards=2)
        write_mark(conn, ("ws-1", "ops", "gone"), NOW - MAX_REPLAY_AGE - 2, "g-0")
        write_mark(conn, ("ws-1", "ops", "edge"), NOW - MAX_REPLAY_AGE - 1, "g-0")
        write_mark(conn, ("ws-2", "ops", "gone"), NOW - MAX_REPLAY_AGE - 2, "g-0")
    wall = [float(NOW)]
    db = GreetDatabase(database, wall=lambda: wall[0])
    try:
        ledger = _ledger(db, clock)
        assert ledger.load() == 1  # "edge" can still pass the ts window
        assert set(_rows(database)) == {("ws-1", "ops", "edge"), ("ws-2", "ops", "gone")}
        wall[0] += MAX_REPLAY_AGE - 1.0  # not yet due: nothing deleted by the write
        ledger.persist(KEY, int(wall[0]), "g-1", "card")
        assert ("ws-1", "ops", "edge") in _rows(database)
        wall[0] += 1.0
        ledger.persist(KEY, int(wall[0]), "g-2", "card")
        assert set(_rows(database)) == {KEY, ("ws-2", "ops", "gone")}  # its own workspace's
    finally:
        db.close()


def test_the_shared_connection_is_reopened_after_it_broke_and_a_failed_write_raises(
        database: str, clock: FakeClock) -> None:
    with psycopg.connect(database, autocommit=True) as conn:
        ensure_cluster_database(conn, shards=2)
    db = GreetDatabase(database, wall=lambda: float(NOW))
    try:
        ledger = _ledger(db, clock)
        ledger.load()
        pid = db.run(lambda c: c.info.backend_pid)
        with psycopg.connect(database, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        ledger.persist(KEY, NOW, "g-1", "card")  # the dead connection, then a new one
        assert db.run(lambda c: c.info.backend_pid) != pid
        assert _rows(database) == {KEY: (NOW, ["g-1"])}
    finally:
        db.close()
    nowhere = GreetDatabase(database.rsplit("/", 1)[0] + "/no_such_database")
    with pytest.raises(psycopg.OperationalError):
        nowhere.store(KEY[0]).persist(KEY, NOW, "g-1", "card")
    nowhere.close()


def test_a_holders_marks_are_written_under_its_lease_and_refused_after_a_takeover(
        database: str) -> None:
    """A mark commits only while the shard's lease row names the writer's holding: an old
    holder still finishing a greet after a takeover is refused (its greet is then not
    applied), so the next holder, which loaded the marks after it acquired, never knows less
    than was applied. Before, the write was not fenced and landed after the load."""
    with psycopg.connect(database, autocommit=True) as conn:
        ensure_cluster_database(conn, shards=2)
        old = pg_leases.acquire(conn, 0, "node-a", ttl=30.0, sent_at=0.0)
        assert old is not None
    db = GreetDatabase(database, wall=lambda: float(NOW))
    try:
        db.store(KEY[0], old.fence).persist(KEY, NOW, "g-1", "card")
        with psycopg.connect(database, autocommit=True) as conn:
            assert pg_leases.release(conn, old)
            new = pg_leases.acquire(conn, 0, "node-b", ttl=30.0, sent_at=0.0)
            assert new is not None and new.epoch == old.epoch + 1
        with pytest.raises(Fenced):
            db.store(KEY[0], old.fence).persist(KEY, NOW + 1, "g-2", "card")
        assert _rows(database) == {KEY: (NOW, ["g-1"])}
        db.store(KEY[0], new.fence).persist(KEY, NOW + 1, "g-2", "card")
        assert _rows(database) == {KEY: (NOW + 1, ["g-2"])}
        # Under a valid lease the merge rule still holds: an older ts changes nothing, and
        # is not mistaken for a refused fence.
        db.store(KEY[0], new.fence).persist(KEY, NOW, "g-0", "card")
        assert _rows(database) == {KEY: (NOW + 1, ["g-2"])}
    finally:
        db.close()
