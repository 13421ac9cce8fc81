"""Failover of real cluster daemons: SIGKILL of an owner mid-load, and what reaches the store;
a captured older greet replayed to the shard's next owner.

Daemons run as processes (`python -m task_ingress serve --cluster`), lease TTL 2 s, three
routed nats-servers, the session's PostgreSQL. The load is bounded in requests and seconds.
"""

from __future__ import annotations

import signal
import time
from datetime import datetime
from pathlib import Path

import psycopg
from task_ingress.actors.rules.shards import shard_of
from task_ingress.runtime.cluster import pg_trust
from task_ingress.runtime.cluster.nats_cluster import NatsCluster

from tests.cluster.cluster_support import Daemon, TcpProxy
from tests.cluster.load import TRUST_POLL, Load, wait_until
from tests.cluster.pg_support import PostgresServer
from tests.cluster.stores import (
    audit_chains_verify,
    fencing_problems,
    stored_request_ids,
)
from tests.cluster.test_cluster_serve import WORKSPACES, owners, start
from tests.nats.nats_support import Peer, Wire, presence, result

SHARDS = 4
TTL = 2.0


def test_a_sigkilled_owners_shards_are_owned_again_within_ttl_and_no_acknowledged_write_is_lost(
    database: str, nats_cluster: NatsCluster, cluster_dir: Path
) -> None:
    daemons = [start(cluster_dir, database, nats_cluster, f"node-{i}", i, lease_ttl=TTL)
               for i in range(3)]
    load = None
    try:
        for d in daemons:
            d.wait_ready()
        wait_until(lambda: len({o for o in owners(database).values() if o}) == 3
                   and None not in owners(database).values(), 20, "shards over 3 daemons")
        load = Load(daemons[0].ready_file, nats_cluster.urls[2], WORKSPACES, database)
        load.greet_all()
        load.start(max_requests=40_000, max_seconds=60)
        wait_until(lambda: len(load.accepted()) >= 40, 20, "accepted writes before the kill")

        victim = daemons[1]
        lost = sorted(s for s, o in owners(database).items() if o == victim.node)
        assert lost, "node-1 held no shard"
        victim.signal(signal.SIGKILL)
        killed_at = time.monotonic()
        victim.proc.wait(10)
        took = wait_until(
            lambda: all(owners(database)[s] not in (None, victim.node) for s in lost),
            TTL + 2, f"shards {lost} owned again within TTL + 2 s")
        lost_ws = [ws for ws in WORKSPACES if shard_of(ws, SHARDS) in lost]
        # Every workspace of the lost shards is written again, by the new owners.
        wait_until(lambda: all(any(r["accepted"] and r["workspace"] == ws
                                   and r["at"] > killed_at + took for r in load.replies)
                               for ws in lost_ws), 20, "writes after the takeover")
        load.stop()
        resumed = max(min(r["at"] for r in load.replies if r["accepted"] and r["workspace"] == ws
                          and r["at"] > killed_at + took) for ws in lost_ws) - killed_at
        print(f"takeover {took:.2f} s after SIGKILL (TTL {TTL} s), shards {lost}; every "
              f"lost workspace accepting writes again {resumed:.2f} s after it")
    finally:
        if load is not None:
            load.close()
        codes = [d.stop() for d in daemons]
    assert codes[0] == 0 and codes[2] == 0, [d.log() for d in daemons]
    acked = load.accepted()
    stored = stored_request_ids(database)
    assert set(acked) <= stored, f"acknowledged but not stored: {sorted(set(acked) - stored)}"
    assert audit_chains_verify(database, cluster_dir) == []
    assert fencing_problems(database, SHARDS) == []


def test_a_sigstopped_owner_resumed_after_a_takeover_commits_none_of_its_pending_writes(
    database: str, nats_cluster: NatsCluster, cluster_dir: Path
) -> None:
    """node-0 pauses with admitted writes on their way to the store (the Delay seam keeps
    each batch 0.3 s before it), node-1 takes its shards and writes, node-0 resumes: every
    one of its pending writes is answered task_ingress_unavailable, and the history checker
    finds nothing committed under the old epoch after the new one wrote."""
    daemons = [start(cluster_dir, database, nats_cluster, f"node-{i}", i, lease_ttl=TTL,
                     module="tests.cluster.seamed_serve") for i in range(2)]
    victim, heir = daemons
    load = None
    try:
        for d in daemons:
            d.wait_ready()
        wait_until(lambda: set(owners(database).values()) == {victim.node, heir.node}, 20,
                   "shards over 2 daemons")
        load = Load(victim.ready_file, nats_cluster.urls[1], WORKSPACES, database)
        load.greet_all()
        load.start(max_requests=40_000, max_seconds=60)
        taken = sorted(s for s, o in owners(database).items() if o == victim.node)
        taken_ws = [ws for ws in WORKSPACES if shard_of(ws, SHARDS) in taken]
        wait_until(lambda: all(any(r["accepted"] and r["workspace"] == ws for r in load.replies)
                               for ws in taken_ws), 20, "node-0 accepting writes")
        victim.signal(signal.SIGSTOP)
        stopped_at = time.monotonic()
        wait_until(lambda: all(owners(database)[s] == heir.node for s in taken), TTL + 5,
                   "node-1 owns node-0's shards")
        wait_until(lambda: all(any(r["accepted"] and r["workspace"] == ws
                                   and r["at"] > stopped_at for r in load.replies)
                               for ws in taken_ws), 20, "node-1 writing them")
        victim.signal(signal.SIGCONT)
        resumed = time.time()
        wait_until(lambda: bool(victim.events("shard.stopped_serving")), 10,
                   "node-0 noticing it lost its shards")
        time.sleep(1.0)  # its pending writes reach the store and are answered
        load.stop()
    finally:
        if load is not None:
            load.close()
        codes = [d.stop() for d in daemons]
    assert codes == [0, 0], [d.log() for d in daemons]
    # A write node-0 committed just before the pause may be logged and answered only after
    # it resumed (stopped between its commit and its log line), and one whose audit was
    # fenced off after its store commit stands, unanswered, for the next holder to chain:
    # both legitimate if stored before the takeover. The history checker (fencing_problems,
    # over every row) proves nothing was committed under node-0's epoch after node-1's
    # first write.
    late = {str(e["request_id"]) for e in victim.events("ingress.outcome")
            if at(e) >= resumed and e.get("workspace") in taken_ws
            and e.get("outcome") == "accepted"}
    stored = stored_request_ids(database)
    assert late <= stored, f"answered accepted but not stored: {sorted(late - stored)}"
    store_fenced = fenced_ids(victim, "store.fenced_off", resumed)
    audit_fenced = fenced_ids(victim, "audit.fenced_off", resumed)
    assert store_fenced | audit_fenced, (
        "node-0 had no pending write when it resumed: the test proved nothing")
    assert not store_fenced & stored, "a write the store fenced off was stored"
    assert fencing_problems(database, SHARDS) == []
    acked = load.accepted()
    assert set(acked) <= stored, f"acknowledged but not stored: {sorted(set(acked) - stored)}"


def fenced_ids(daemon: Daemon, event: str, since: float) -> set[str]:
    """Request IDs a daemon logged as fenced off (`store.fenced_off`/`audit.fenced_off`)
    at or after `since` (wall clock)."""
    return {str(rid) for e in daemon.events(event) if at(e) >= since
            for rid in e.get("request_ids", [])}


def at(event: dict[str, object]) -> float:
    """A log event's wall-clock time (structlog's ISO timestamp, UTC)."""
    return datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()


def test_a_daemon_cut_off_from_postgresql_stops_serving_before_its_lease_can_be_taken(
    database: str, postgres: PostgresServer, nats_cluster: NatsCluster, cluster_dir: Path
) -> None:
    """node-0 reaches PostgreSQL only through a proxy the test cuts (connections go silent,
    as in a partition). It must stop serving each of its shards before node-1 can acquire
    it — at TTL/2 after its last good renew, by its own clock — and nothing may be written
    under its epoch after node-1's."""
    proxy = TcpProxy(postgres.port)
    via_proxy = database.replace(f":{postgres.port}/", f":{proxy.port}/")
    cut_off = Daemon(workdir=cluster_dir, node="node-0", database=via_proxy,
                     nats_url=nats_cluster.urls[0], token=nats_cluster.token, shards=SHARDS,
                     workspaces=WORKSPACES, key_file=cluster_dir / "cluster.key",
                     trust_file=cluster_dir / "trust.json", lease_ttl=TTL)
    other = start(cluster_dir, database, nats_cluster, "node-1", 1, lease_ttl=TTL)
    load = None
    try:
        cut_off.wait_ready()
        other.wait_ready()
        wait_until(lambda: set(owners(database).values()) == {"node-0", "node-1"}, 20,
                   "shards over 2 daemons")
        load = Load(other.ready_file, nats_cluster.urls[2], WORKSPACES, database)
        load.greet_all()
        load.start(max_requests=40_000, max_seconds=60)
        held = sorted(s for s, o in owners(database).items() if o == "node-0")
        held_ws = [ws for ws in WORKSPACES if shard_of(ws, SHARDS) in held]
        wait_until(lambda: all(any(r["accepted"] and r["workspace"] == ws for r in load.replies)
                               for ws in held_ws), 20, "node-0 accepting writes")
        proxy.cut()
        cut_at = time.time()
        wait_until(lambda: all(owners(database)[s] == "node-1" for s in held), TTL + 5,
                   "node-1 owns node-0's shards")
        wait_until(lambda: all(any(r["accepted"] and r["workspace"] == ws
                                   and r["at"] > time.monotonic() - 1 for r in load.replies)
                               for ws in held_ws), 20, "node-1 writing them")
        load.stop()
    finally:
        if load is not None:
            load.close()
        proxy.close()  # its hung connections fail now, as a partition's do at tcp_user_timeout
        codes = [other.stop(), cut_off.stop()]
    assert codes == [0, 0], [cut_off.log(), other.log()]
    stopped = {e["shard"]: at(e) for e in cut_off.events("shard.stopped_serving")
               if e["shard"] in held and at(e) >= cut_at}
    taken = {e["shard"]: at(e) for e in other.events("lease.acquired")
             if e["shard"] in held and at(e) >= cut_at}
    assert set(stopped) == set(held) and set(taken) == set(held), (stopped, taken)
    for shard in held:
        assert stopped[shard] < taken[shard], f"shard {shard} served by both daemons"
    print(f"partition: stopped serving {max(stopped.values()) - cut_at:.2f} s after the cut, "
          f"taken over {max(taken.values()) - cut_at:.2f} s after it (TTL {TTL} s)")
    assert fencing_problems(database, SHARDS) == []
    assert set(load.accepted()) <= stored_request_ids(database)


def test_a_captured_older_greet_cannot_restore_task_write_on_the_shards_next_owner(
    database: str, nats_cluster: NatsCluster, cluster_dir: Path
) -> None:
    # Issue 13 G across a failover: the owner that applied a peer's greets is SIGKILLed;
    # the next owner of the shard loads their marks from the database before it serves.
    ws = WORKSPACES[0]
    first = start(cluster_dir, database, nats_cluster, "node-0", 0, lease_ttl=TTL)
    second = None
    wire = Wire(nats_cluster.urls[2], nats_cluster.token)
    try:
        info = first.wait_ready()
        wait_until(lambda: set(owners(database).values()) == {"node-0"}, 20,
                   "every shard held by node-0")
        peer = Peer("alice", daemon_handle=info["daemon_handle"])
        with psycopg.connect(database, autocommit=True) as conn:
            pg_trust.allow(conn, [peer.id], [peer.key.public_key().public_bytes_raw()])
        time.sleep(TRUST_POLL * 3)  # node-0 has read the policy
        now = int(time.time())
        captured = peer.finish({**peer.greet(("task.write",), ws=ws), "proof": None,
                                "ts": now - 20})
        newer = peer.finish({**peer.greet((), ws=ws), "proof": None, "ts": now - 10})
        assert presence(wire.ask(peer.broadcast(ws=ws), captured))["task_write"] is True
        assert presence(wire.ask(peer.broadcast(ws=ws), newer)) == {
            "applied": True, "reason": None, "task_write": False, "trust": "verified"}

        second = start(cluster_dir, database, nats_cluster, "node-1", 1, lease_ttl=TTL)
        second.wait_ready()
        first.signal(signal.SIGKILL)
        first.proc.wait(10)
        shard = shard_of(ws, SHARDS)
        wait_until(lambda: any(e.get("shard") == shard for e in second.events("shard.serving")),
                   TTL + 10, f"node-1 serving shard {shard}")
        assert presence(wire.ask(peer.broadcast(ws=ws), captured)) == {
            "applied": False, "reason": "stale", "task_write": False, "trust": "verified"}
        assert presence(wire.ask(peer.broadcast(ws=ws), newer))["reason"] == "duplicate"
        write = result(wire.ask(peer.daemon_subject(ws=ws), peer.task(
            "task.create", {"title": "t"}, "r-1", ws=ws)))
        assert write["accepted"] is False and write["reason"] == "peer_not_found"
        # The new owner orders greets, it does not refuse them: the peer's next greet counts.
        assert presence(wire.ask(peer.broadcast(ws=ws), peer.greet(ws=ws)))["task_write"]
        write = result(wire.ask(peer.daemon_subject(ws=ws), peer.task(
            "task.create", {"title": "t"}, "r-2", ws=ws)))
        assert write["accepted"] is True, write
        loaded = [e for e in second.events("shard.greet_marks_loaded") if e["workspace"] == ws]
        assert [e["marks"] for e in loaded] == [1]
        # A greet whose mark cannot be written is not applied (a restart could forget it).
        with psycopg.connect(database, autocommit=True) as conn:
            conn.execute("ALTER TABLE greet_marks RENAME TO greet_marks_away")
        assert presence(wire.ask(peer.broadcast(ws=ws), peer.greet((), ws=ws))) == {
            "applied": False, "reason": "failed", "task_write": False, "trust": "verified"}
    finally:
        wire.close()
        first.stop()
        code = second.stop() if second is not None else 0
    assert code == 0, second.log() if second is not None else ""
