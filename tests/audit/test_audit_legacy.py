"""Stores written before the chain was keyed (schema 2: sha256 chain from "0"*64, checkpoint
MAC over seq and hash only). `audit verify` fails them as legacy unless --allow-legacy; the
runtime re-chains one under the key on start, once, only if its old chain and old checkpoint
hold — an unkeyed chain without a checkpoint could be anyone's forgery."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from task_ingress.actors.rules.chain import (
    ChainKey,
    genesis_hash,
    legacy_checkpoint_mac,
    record_hash,
)
from task_ingress.actors.storage.auditlog import (
    AUDIT_COLUMNS,
    INSERT_AUDIT,
    make_checkpoint,
    read_checkpoint,
    read_meta,
)
from task_ingress.actors.storage.chainstart import ChainRefused, open_chain
from task_ingress.actors.storage.schema import MIGRATIONS, connect
from task_ingress.messages import CreateTask
from task_ingress.messages.audit import GENESIS_HASH
from task_ingress.runtime import IngressRuntime, RuntimeConfig
from task_ingress.runtime.cli import app
from task_ingress.runtime.errors import RuntimeStartError
from typer.testing import CliRunner

from tests.conftest import ctx, writer_card

runner = CliRunner()
KEY_HEX = "5a" * 32
KEY = ChainKey(bytes.fromhex(KEY_HEX))


@pytest.fixture(autouse=True)
def _env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASK_INGRESS_AUDIT_KEY", KEY_HEX)


def legacy_store(path: Path, n: int = 5, checkpoint_at: int | None = -1) -> list[str]:
    """A schema-2 store with `n` rejected records chained the old way, and a legacy
    checkpoint at `checkpoint_at` (-1: the head; None: none). Returns the hashes."""
    conn = sqlite3.connect(path, isolation_level=None)
    for version in (1, 2):
        for statement in MIGRATIONS[version].split(";"):
            if statement.strip():
                conn.execute(statement)
    conn.execute("PRAGMA user_version=2")
    prev, hashes = GENESIS_HASH, []
    for seq in range(1, n + 1):
        rec = {"seq": seq, "at": 1_700_000_000.0 + seq, "workspace": "ws", "channel": "ops",
               "peer_id": "ghost", "actor": "peer:ghost/channel:ops", "request_id": f"old-{seq}",
               "action": "task.create", "outcome": "rejected", "reason": "peer_not_found",
               "task_id": None, "run_id": None, "payload_size": 9, "replay": False,
               "prev_hash": prev}
        rec["hash"] = prev = record_hash(rec)
        hashes.append(prev)
        conn.execute(INSERT_AUDIT, rec)
    conn.close()
    if checkpoint_at is not None:
        seq = n if checkpoint_at == -1 else checkpoint_at
        head = hashes[seq - 1]
        Path(f"{path}.checkpoint").write_text(json.dumps({
            "seq": seq, "hash": head, "at": 1_700_000_100.0,
            "mac": legacy_checkpoint_mac(KEY.raw, seq, head)}))
    return hashes


def verify_cli(store: Path, *extra: str) -> tuple[int, list[str]]:
    result = runner.invoke(app, ["audit", "verify", "--store", str(store), *extra])
    return result.exit_code, result.output.strip().splitlines()


def start(store: Path) -> None:
    with IngressRuntime(RuntimeConfig(store_path=str(store))) as rt:
        rt.greet("ws", "ops", writer_card("peer-a"))
        assert rt.submit(ctx("new-1"), CreateTask(title="after the upgrade")).accepted


def test_a_legacy_store_fails_verification_as_such(tmp_path: Path) -> None:
    store = tmp_path / "old.db"
    legacy_store(store)
    code, lines = verify_cli(store)
    assert code == 1
    assert lines[-1].startswith("FAILED: legacy: legacy unkeyed chain (schema 2, no store id)")
    assert "Start the runtime once to re-chain it under the key" in lines[-1]


def test_allow_legacy_checks_it_by_the_old_rules(tmp_path: Path) -> None:
    store = tmp_path / "old.db"
    legacy_store(store)
    code, lines = verify_cli(store, "--allow-legacy")
    assert code == 0 and lines[-1] == "5"
    assert any(line.startswith("note: legacy unkeyed chain") for line in lines)


def test_allow_legacy_never_excuses_a_missing_checkpoint(tmp_path: Path) -> None:
    store = tmp_path / "old.db"
    legacy_store(store, checkpoint_at=None)
    code, lines = verify_cli(store, "--allow-legacy")
    assert code == 1 and "is missing" in lines[-1]


def test_the_runtime_rechains_a_legacy_store_once_and_it_verifies(tmp_path: Path) -> None:
    store = tmp_path / "old.db"
    old = legacy_store(store)
    start(store)
    code, lines = verify_cli(store)
    assert code == 0 and lines[-1] == "6", lines
    assert any("records 1-5 were written as an unkeyed (schema 2) chain and re-chained"
               in line and "vouched for seq 5" in line for line in lines)
    conn = sqlite3.connect(store)
    meta = read_meta(conn)
    first = conn.execute("SELECT prev_hash, hash FROM audit WHERE seq = 1").fetchone()
    conn.close()
    assert first[0] == genesis_hash(meta["store_id"]) and first[1] != old[0]
    cp, _ = read_checkpoint(str(store))
    assert cp is not None and cp.store_id == meta["store_id"] and cp.seq == 6
    start(store)  # a second start does not re-chain again
    assert verify_cli(store)[0] == 0


def test_a_legacy_chain_with_records_after_its_checkpoint_is_rechained(tmp_path: Path) -> None:
    store = tmp_path / "old.db"
    legacy_store(store, checkpoint_at=3)
    start(store)
    assert verify_cli(store)[0] == 0


@pytest.mark.parametrize(("damage", "message"), [
    ("no checkpoint", "has 5 records and no checkpoint, so nothing vouches for them"),
    ("edited", r"legacy \(schema 2\) audit chain is broken at record seq 2"),
    ("tail deleted", "tail deleted or rewritten"),
    ("wrong key", "legacy checkpoint's MAC does not verify"),
])
def test_the_runtime_refuses_to_rechain_a_legacy_log_nothing_vouches_for(
    tmp_path: Path, damage: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "old.db"
    legacy_store(store, checkpoint_at=None if damage == "no checkpoint" else -1)
    conn = sqlite3.connect(store, isolation_level=None)
    if damage == "edited":
        conn.execute("UPDATE audit SET peer_id = 'innocent' WHERE seq = 2")
    if damage == "tail deleted":
        conn.execute("DELETE FROM audit WHERE seq > 3")
    conn.close()
    if damage == "wrong key":
        monkeypatch.setenv("TASK_INGRESS_AUDIT_KEY", "77" * 32)
    with pytest.raises(RuntimeStartError, match=message):
        start(store)
    conn = sqlite3.connect(store)
    assert "store_id" not in read_meta(conn)  # nothing was re-chained
    conn.close()


def test_a_new_store_interrupted_after_its_genesis_checkpoint_keeps_that_id(tmp_path: Path
                                                                           ) -> None:
    store = tmp_path / "new.db"
    conn = connect(str(store), durable=False)
    Path(f"{store}.checkpoint").write_text(
        make_checkpoint(KEY, "feed" * 8, 0, genesis_hash("feed" * 8)).to_json())
    head = open_chain(conn, str(store), KEY)
    assert (head.store_id, head.seq, head.head) == ("feed" * 8, 0, genesis_hash("feed" * 8))
    assert read_meta(conn)["store_id"] == "feed" * 8
    conn.close()


def test_a_rechain_interrupted_after_its_checkpoint_is_finished_with_that_id(tmp_path: Path
                                                                            ) -> None:
    store = tmp_path / "old.db"
    legacy_store(store)
    conn = connect(str(store), durable=False)
    rows = conn.execute(f"SELECT {AUDIT_COLUMNS} FROM audit ORDER BY seq").fetchall()
    names = [c.strip() for c in AUDIT_COLUMNS.split(",")]
    head = genesis_hash("beef" * 8)
    for row in rows:  # what the interrupted start had computed and checkpointed
        fields = dict(zip(names, row, strict=True), prev_hash=head)
        fields["replay"] = bool(fields["replay"])
        head = KEY.seal(fields)
    Path(f"{store}.checkpoint").write_text(
        make_checkpoint(KEY, "beef" * 8, 5, head).to_json())
    chain = open_chain(conn, str(store), KEY)
    assert (chain.store_id, chain.seq, chain.head) == ("beef" * 8, 5, head)
    conn.close()
    assert verify_cli(store)[0] == 0


def test_a_foreign_checkpoint_beside_a_store_without_an_id_is_refused(tmp_path: Path) -> None:
    store = tmp_path / "old.db"
    legacy_store(store, checkpoint_at=None)
    conn = connect(str(store), durable=False)
    Path(f"{store}.checkpoint").write_text(
        make_checkpoint(KEY, "beef" * 8, 5, "ab" * 32).to_json())
    with pytest.raises(ChainRefused, match="do not re-chain to it"):
        open_chain(conn, str(store), KEY)
    conn.close()
