"""AuditRecord.trust (SPEC 7): how the identity was known, chained like every field; stores
written before the field existed still verify after the migration."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from task_ingress.actors.rules.chain import record_hash
from task_ingress.actors.storage.schema import MIGRATIONS, SCHEMA_VERSION, encode_outbox
from task_ingress.messages import CreateTask, IngressContext
from task_ingress.messages.audit import GENESIS_HASH
from task_ingress.runtime import IngressRuntime, RuntimeConfig
from task_ingress.runtime.audit.verify import verify_store

from tests.conftest import ctx, writer_card


@pytest.fixture(autouse=True)
def _no_env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TASK_INGRESS_AUDIT_KEY", raising=False)


def test_embedded_requests_are_audited_as_embedded_and_network_ones_by_trust_state(
        tmp_path: Path) -> None:
    store = tmp_path / "s.db"
    with IngressRuntime(RuntimeConfig(store_path=str(store))) as rt:
        rt.greet("ws", "ops", writer_card("peer-a"))
        rt.submit(ctx("r-1"), CreateTask(title="t"))
        rt.submit(IngressContext(workspace="ws", peer_id="peer-b", channel="ops",
                                 request_id="r-2", trust="unverified"), CreateTask(title="t"))
        records = rt.audit()
    assert [(r.request_id, r.trust) for r in records] == [
        ("r-1", "embedded"), ("r-2", "unverified")]
    assert verify_store(str(store)).ok


def test_changing_a_records_trust_breaks_the_chain(tmp_path: Path) -> None:
    store = tmp_path / "s.db"
    with IngressRuntime(RuntimeConfig(store_path=str(store))) as rt:
        rt.greet("ws", "ops", writer_card("peer-a"))
        rt.submit(ctx("r-1"), CreateTask(title="t"))
    with sqlite3.connect(store) as conn:
        conn.execute("UPDATE audit SET trust = 'verified' WHERE seq = 1")
    report = verify_store(str(store))
    assert not report.ok
    assert report.problems[0].seq == 1


@pytest.mark.parametrize("version", [1, 2])
def test_a_store_chained_before_trust_existed_verifies_after_migration(
        tmp_path: Path, version: int) -> None:
    """Version 1 (outbox TEXT) and version 2 (outbox BLOB) both came before the trust
    column (version 3): their records keep their hashes, and an outbox row a crash left
    behind (written without trust) is chained with none."""
    store = tmp_path / "old.db"
    conn = sqlite3.connect(store, isolation_level=None)
    for step in range(1, version + 1):  # the store as that version's runtime left it
        conn.executescript(MIGRATIONS[step])
    conn.execute(f"PRAGMA user_version={version}")
    old = {"seq": 1, "at": time.time(), "workspace": "ws", "channel": "ops",
           "peer_id": "peer-a", "actor": "peer:peer-a/channel:ops", "request_id": "r-0",
           "action": "task.create", "outcome": "rejected", "reason": "peer_not_found",
           "task_id": None, "run_id": None, "payload_size": 0, "replay": False,
           "prev_hash": GENESIS_HASH}
    old["hash"] = record_hash(old)  # what the runtime before trust chained (no trust key)
    conn.execute("INSERT INTO audit VALUES (:seq, :at, :workspace, :channel, :peer_id, "
                 ":actor, :request_id, :action, :outcome, :reason, :task_id, :run_id, "
                 ":payload_size, :replay, :prev_hash, :hash)", old)
    crashed = {k: old[k] for k in ("workspace", "channel", "peer_id", "actor", "action",
                                   "task_id", "run_id", "payload_size", "replay")}
    crashed.update(request_id="r-crash", outcome="accepted", reason=None, task_id="t-crash")
    # The write a crash left unaudited: its task, its accepted request and its outbox row.
    conn.execute("INSERT INTO tasks (task_id, workspace, title, description, created_at, "
                 "updated_at) VALUES ('t-crash', 'ws', 't', '', 0, 0)")
    conn.execute("INSERT INTO accepted_requests VALUES ('ws', 'ops', 'peer-a', 'r-crash', "
                 "'task.create', 't-crash', NULL)")
    conn.execute("INSERT INTO outbox (record) VALUES (?)", (encode_outbox(crashed),))
    conn.close()
    with IngressRuntime(RuntimeConfig(store_path=str(store))) as rt:
        rt.greet("ws", "ops", writer_card("peer-a"))
        rt.submit(ctx("r-1"), CreateTask(title="t"))
        records = rt.audit()
    assert [(r.request_id, r.trust) for r in records] == [
        ("r-0", None), ("r-crash", None), ("r-1", "embedded")]
    assert verify_store(str(store)).ok
    with sqlite3.connect(store) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
