"""AuditRecord.trust (SPEC 7): how the identity was known, chained like every field; stores
written before the field existed, or before the chain was keyed, still verify after the
migration."""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
import time
from pathlib import Path

import pytest
from task_ingress.actors.storage.schema import MIGRATIONS, SCHEMA_VERSION, encode_outbox
from task_ingress.messages import CreateTask, IngressContext
from task_ingress.messages.audit import GENESIS_HASH
from task_ingress.runtime import IngressRuntime, RuntimeConfig
from task_ingress.runtime.audit.verify import Problem, verify_store

from tests.conftest import ctx, writer_card

KEY_HEX = "3c" * 32


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


def old_hash(fields: dict[str, object]) -> str:
    """How the unkeyed runtime (schema 3 and older) hashed a record: sha256 of its sorted
    compact JSON, `trust` left out when None (records from before the field existed)."""
    chained = {k: v for k, v in fields.items()
               if k != "hash" and (k != "trust" or v is not None)}
    blob = json.dumps(chained, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(blob.encode()).hexdigest()


@pytest.mark.parametrize(("version", "trust"), [(1, None), (2, None), (3, "verified")])
def test_a_store_chained_before_the_key_verifies_after_migration(
        tmp_path: Path, version: int, trust: str | None) -> None:
    """Version 1 (outbox TEXT) and version 2 (outbox BLOB) came before the trust column
    (version 3), and all three before the keyed chain (version 4). Their records keep their
    old hashes for the legacy check, are re-chained under the key on start (trust and all),
    and an outbox row a crash left behind (written without trust) is chained with none."""
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
    if version >= 3:
        old["trust"] = trust
    old["hash"] = old_hash(old)
    columns = ", ".join(old)
    conn.execute(f"INSERT INTO audit ({columns}) VALUES ({', '.join(':' + k for k in old)})",
                 old)
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
    # The key file and the legacy checkpoint (seq and hash only) that runtime kept beside it.
    Path(f"{store}.key").write_text(KEY_HEX)
    Path(f"{store}.checkpoint").write_text(json.dumps({
        "seq": 1, "hash": old["hash"], "at": old["at"],
        "mac": hmac.new(bytes.fromhex(KEY_HEX), f"1:{old['hash']}".encode(),
                        hashlib.sha256).hexdigest()}))
    legacy = verify_store(str(store), allow_legacy=True)
    assert legacy.legacy and legacy.records == 1
    assert [p.kind for p in legacy.problems] == []
    with IngressRuntime(RuntimeConfig(store_path=str(store))) as rt:
        rt.greet("ws", "ops", writer_card("peer-a"))
        rt.submit(ctx("r-1"), CreateTask(title="t"))
        records = rt.audit()
    assert [(r.request_id, r.trust) for r in records] == [
        ("r-0", trust), ("r-crash", None), ("r-1", "embedded")]
    assert records[0].hash != old["hash"]  # re-chained under the key
    report = verify_store(str(store))
    assert report.ok, report.problems
    assert not report.legacy and any("records 1-1 were written as an unkeyed" in n
                                     for n in report.notes)
    with sqlite3.connect(store) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
        conn.execute("UPDATE audit SET trust = 'embedded' WHERE seq = 1")
    assert verify_store(str(store)).first_problem == Problem(
        "chain", 1, "hash does not match the record's contents")
