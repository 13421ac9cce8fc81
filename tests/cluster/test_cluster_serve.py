"""`serve --cluster` end to end: real daemons (processes), routed nats-servers, PostgreSQL."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from task_ingress.actors.rules.shards import shard_of
from task_ingress.runtime.cluster import pg_leases, pg_trust
from task_ingress.runtime.cluster.nats_cluster import NatsCluster
from task_ingress.runtime.cluster.setup import ensure_cluster_database

from tests.cluster.cluster_support import Daemon
from tests.cluster.load import TRUST_POLL, Load, wait_until
from tests.nats.conftest import WireTap, assert_all_agh_valid
from tests.nats.nats_support import Peer, Wire, encode, presence, result

SHARDS = 4
# Two workspaces in each of the 4 shards (ws-0..7 leave shard 3 empty, and a daemon holding
# only shard 3 would serve nothing the tests write to).
WORKSPACES = ["ws-1", "ws-3", "ws-0", "ws-4", "ws-2", "ws-5", "ws-10", "ws-15"]


def start(cluster_dir: Path, database: str, nats: NatsCluster, node: str, i: int,
          **kw: object) -> Daemon:
    return Daemon(workdir=cluster_dir, node=node, database=database,
                  nats_url=nats.urls[i % len(nats.urls)], token=nats.token, shards=SHARDS,
                  workspaces=WORKSPACES, key_file=cluster_dir / "cluster.key",
                  trust_file=cluster_dir / "trust.json", **kw)  # type: ignore[arg-type]


def owners(database: str) -> dict[int, str | None]:
    with psycopg.connect(database, autocommit=True) as conn:
        return {s.shard: s.owner for s in pg_leases.status(conn)}


def test_two_daemons_split_the_shards_serve_every_workspace_and_release_on_stop(
    database: str, nats_cluster: NatsCluster, cluster_dir: Path
) -> None:
    daemons = [start(cluster_dir, database, nats_cluster, f"node-{i}", i) for i in range(2)]
    load = None
    try:
        infos = [d.wait_ready() for d in daemons]
        assert infos[0]["node_id"] == "node-0" and infos[0]["shards"] == SHARDS
        assert infos[0]["daemon_handle"] == infos[1]["daemon_handle"]  # one cluster identity
        wait_until(lambda: sorted(v or "" for v in owners(database).values())
                   == ["node-0", "node-0", "node-1", "node-1"], 20, "shards split 2/2")
        load = Load(daemons[0].ready_file, nats_cluster.urls[2], WORKSPACES, database)
        load.greet_all()
        replies = load.round()
        assert all(r["accepted"] for r in replies.values()), replies
    finally:
        if load is not None:
            load.close()
        codes = [d.stop() for d in daemons]
    assert codes == [0, 0], [d.log() for d in daemons]
    assert set(owners(database).values()) == {None}  # every lease given back on stop


def test_serve_cluster_without_a_reachable_database_exits_2(
    nats_cluster: NatsCluster, cluster_dir: Path
) -> None:
    d = start(cluster_dir, "postgresql://nobody@127.0.0.1:1/none", nats_cluster, "node-x", 0)
    assert d.proc.wait(60) == 2, d.log()
    assert not d.ready_file.exists()


def test_serve_cluster_without_a_reachable_nats_exits_2_after_its_connect_timeout(
    database: str, nats_cluster: NatsCluster, cluster_dir: Path
) -> None:
    d = Daemon(workdir=cluster_dir, node="node-x", database=database,
               nats_url="nats://127.0.0.1:1", token=nats_cluster.token, shards=SHARDS,
               workspaces=WORKSPACES, key_file=cluster_dir / "cluster.key",
               trust_file=cluster_dir / "trust.json", extra=["--nats-connect-timeout", "1"])
    assert d.proc.wait(60) == 2, d.log()
    assert "no NATS server reachable at nats://127.0.0.1:1 within 1 s" in d.log()
    assert not d.ready_file.exists()


def test_serve_cluster_usage_errors_exit_2() -> None:
    out = subprocess.run([sys.executable, "-m", "task_ingress", "serve", "--cluster",
                          "--database", "postgresql://x@127.0.0.1:1/x"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--nats-url" in out.stderr
    out = subprocess.run([sys.executable, "-m", "task_ingress", "serve", "--shards", "3"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--cluster" in out.stderr
    env = {k: v for k, v in os.environ.items() if k != "TASK_INGRESS_AUDIT_KEY"}
    out = subprocess.run([sys.executable, "-m", "task_ingress", "serve", "--cluster",
                          "--database", "postgresql://x@127.0.0.1:1/x",
                          "--nats-url", "nats://127.0.0.1:1"],
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 2 and "TASK_INGRESS_AUDIT_KEY" in out.stderr


def test_serve_cluster_with_an_audit_key_no_chain_verifies_under_exits_2(
    database: str, nats_cluster: NatsCluster, cluster_dir: Path
) -> None:
    first = start(cluster_dir, database, nats_cluster, "node-0", 0)
    try:
        first.wait_ready()
        wait_until(lambda: set(owners(database).values()) == {"node-0"}, 20, "shards owned")
    finally:
        assert first.stop() == 0, first.log()
    (cluster_dir / "audit.key").write_text(secrets.token_hex(32))  # hex, but not the cluster's
    wrong = start(cluster_dir, database, nats_cluster, "node-1", 1)
    try:  # it used to start and refuse every shard's chain at every lease attempt, forever
        code = wrong.proc.wait(60)
    finally:
        if wrong.proc.poll() is None:
            wrong.stop()
    assert code == 2, wrong.log()
    assert "does not match this cluster's audit chains" in wrong.log()
    assert not wrong.ready_file.exists()


def test_the_test_workspaces_cover_every_shard_twice() -> None:
    assert sorted(shard_of(ws, SHARDS) for ws in WORKSPACES) == [0, 0, 1, 1, 2, 2, 3, 3]


def _greet(wire: Wire, peer: Peer, ws: str, timeout: float = 20.0) -> dict[str, Any]:
    """A greet sent as a NATS request, retried until the owner of the workspace's shard
    answers (it has none while its lease is being taken)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return presence(wire.ask(peer.broadcast(ws=ws), peer.greet(ws=ws), timeout=1.0))
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_cluster_daemons_are_agh_peers_and_publish_only_valid_agh_envelopes(
    database: str, nats_cluster: NatsCluster, cluster_dir: Path
) -> None:
    # Issue 12 for serve --cluster: AGH peers greet, find the daemons by whois and write
    # with JSON says in every workspace, whichever daemon holds its shard; everything the
    # daemons publish (their greets, whois answers, receipts) passes AGH's envelope rules.
    tap = WireTap(nats_cluster.urls[2], nats_cluster.token)
    daemons = [start(cluster_dir, database, nats_cluster, f"node-{i}", i) for i in range(2)]
    names: set[str] = set()
    try:
        infos = [d.wait_ready() for d in daemons]
        names = {infos[0]["daemon_peer_id"], infos[0]["daemon_handle"]}
        wait_until(lambda: None not in owners(database).values(), 20, "every shard held")
        wire = tap.wire
        verified = Peer("writer", daemon_handle=infos[0]["daemon_handle"])
        with psycopg.connect(database, autocommit=True) as conn:
            pg_trust.allow(conn, [verified.id], [verified.key.public_key().public_bytes_raw()])
        time.sleep(TRUST_POLL * 3)  # every daemon has read the policy
        plain = Peer("plain-peer", verified=False)
        for ws in WORKSPACES:
            assert _greet(wire, verified, ws)["task_write"] is True
            receipt = wire.ask(verified.daemon_subject(ws=ws), verified.task(
                "task.create", {"title": "t"}, f"r-{ws}", ws=ws))
            assert receipt["body"] == {"for_id": f"r-{ws}", "status": "accepted"}
            assert _greet(wire, plain, ws) == {"applied": True, "reason": None,
                                               "task_write": False, "trust": "unverified"}
            denied = wire.ask(plain.daemon_subject(ws=ws), plain.task(
                "task.create", {"title": "t"}, f"p-{ws}", ws=ws))
            assert denied["body"]["reason_code"] == "verification_failed"
            assert result(denied)["trust"] == "unverified"
            answers = wire.collect(plain.own_subject(ws=ws))
            wire.publish(plain.daemon_subject(ws=ws), encode(plain.whois(plain.daemon, ws=ws)))
            wait_until(lambda answers=answers: len(answers) == 1, 10, f"whois in {ws}")
            assert json.loads(answers[0])["body"]["peer_card"]["peer_id"] == plain.daemon
        wire.flush()
    finally:
        codes = [d.stop() for d in daemons]
        tap.wire.flush()
        tap.close()
    assert codes == [0, 0], [d.log() for d in daemons]
    published = tap.published_by(names)
    # The daemons' own greets went to the broadcast subjects; answers to the peers.
    kinds = {(e["protocol"], e["kind"], subject.endswith(".broadcast"))
             for _, subject, e in published}
    assert kinds == {(p, k, k == "greet") for p in ("agh-network/v0", "agh-network/v1")
                     for k in ("greet", "whois", "receipt")}, kinds
    assert assert_all_agh_valid(tap, names) == len(published)


def test_a_shard_whose_greet_marks_cannot_be_read_is_not_served_until_they_can(
    database: str, nats_cluster: NatsCluster, cluster_dir: Path
) -> None:
    # Serving without the marks would let a captured older greet through (pg_greets.py).
    with psycopg.connect(database, autocommit=True) as conn:
        ensure_cluster_database(conn, SHARDS)
        conn.execute("CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
                     "$$ BEGIN RAISE EXCEPTION 'greet marks unreadable'; END $$")
        conn.execute("CREATE TRIGGER unreadable BEFORE DELETE ON greet_marks "
                     "FOR EACH STATEMENT EXECUTE FUNCTION refuse()")
    d = start(cluster_dir, database, nats_cluster, "node-0", 0)
    wire = Wire(nats_cluster.urls[2], nats_cluster.token)
    try:
        info = d.wait_ready()
        wait_until(lambda: len(d.events("shard.start_failed")) >= SHARDS, 20,
                   "every shard's start failed")
        assert d.events("shard.serving") == []
        assert "greet marks unreadable" in d.events("shard.start_failed")[0]["error"]
        peer = Peer("plain-peer", verified=False, daemon=info["daemon_peer_id"])
        with pytest.raises(Exception):  # noqa: B017 - nobody answers: no responders
            wire.ask(peer.broadcast(ws=WORKSPACES[0]), peer.greet(ws=WORKSPACES[0]),
                     timeout=1.0)
        with psycopg.connect(database, autocommit=True) as conn:
            conn.execute("DROP TRIGGER unreadable ON greet_marks")
        assert _greet(wire, peer, WORKSPACES[0])["applied"] is True
    finally:
        wire.close()
        code = d.stop()
    assert code == 0, d.log()
