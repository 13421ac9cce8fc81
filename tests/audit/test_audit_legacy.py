"""Stores written before the chain was keyed (schema 3 or older: sha256 chain from "0"*64,
`trust` in the hash only when set, checkpoint MAC over seq and hash only). Each test runs on
a version-2 store (records from before `trust`) and a version-3 one (records with it).
`audit verify` fails them as legacy unless --allow-legacy; the runtime re-chains one under
the key on start, once, only if its old chain and old checkpoint hold — an unkeyed chain
without a checkpoint could be anyone's forgery."""

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


@pytest.fixture(params=[2, 3], ids=["before-trust", "with-trust"])
def version(request: pytest.FixtureRequest) -> int:
    """The schema version the legacy store was left at."""
    return int(request.param)


def legacy_store(path: Path, version: int, n: int = 5, checkpoint_at: int | None = -1
                 ) -> list[str]:
    """A store of schema `version` with `n` rejected records chained the old way (from
    version 3, odd records with trust 'verified', even ones with none), and a legacy
    checkpoint at `checkpoint_at` (-1: the head; None: none). Returns the hashes."""
    conn = sqlite3.connect(path, isolation_level=None)
    for step in range(1, version + 1):
        for statement in MIGRATIONS[step].split(";"):
            if statement.strip():
                conn.execute(statement)
    conn.execute(f"PRAGMA user_version={version}")
    prev, hashes = GENESIS_HASH, []
    for seq in range(1, n + 1):
        rec = {"seq": seq, "at": 1_700_000_000.0 + seq, "workspace": "ws", "channel": "ops",
               "peer_id": "ghost", "actor": "peer:ghost/channel:ops", "request_id": f"old-{seq}",
               "action": "task.create", "outcome": "rejected", "reason": "peer_not_found",
               "task_id": None, "run_id": None, "payload_size": 9, "replay": False,
               "prev_hash": prev}
        if version >= 3:
            rec["trust"] = "verified" if seq % 2 else None
        rec["hash"] = prev = record_hash(rec)
        hashes.append(prev)
        conn.execute(f"INSERT INTO audit ({', '.join(rec)}) "
                     f"VALUES ({', '.join(':' + k for k in rec)})", rec)
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


def test_a_legacy_store_fails_verification_as_such(tmp_path: Path, version: int) -> None:
    store = tmp_path / "old.db"
    legacy_store(store, version)
    code, lines = verify_cli(store)
    assert code == 1
    assert lines[-1].startswith(
        "FAILED: legacy: legacy unkeyed chain (schema 3 or older, no store id)")
    assert "Start the runtime once to re-chain it under the key" in lines[-1]


def test_allow_legacy_checks_it_by_the_old_rules(tmp_path: Path, version: int) -> None:
    store = tmp_path / "old.db"
    legacy_store(store, version)
    code, lines = verify_cli(store, "--allow-legacy")
    assert code == 0 and lines[-1] == "5"
    assert any(line.startswith("note: legacy unkeyed chain") for line in lines)


def test_the_read_only_tools_read_a_legacy_store_no_runtime_has_migrated(tmp_path: Path,
                                                                         version: int) -> None:
    store = tmp_path / "old.db"
    legacy_store(store, version)
    exported = runner.invoke(app, ["audit", "export", "--store", str(store)])
    assert exported.exit_code == 0, exported.output
    records = [json.loads(line) for line in exported.output.splitlines()]
    assert [r["trust"] for r in records] == [
        ("verified" if seq % 2 and version >= 3 else None) for seq in range(1, 6)]
    shown = runner.invoke(app, ["audit", "show", "--store", str(store), "-n", "2"])
    assert shown.exit_code == 0 and "old-5" in shown.output, shown.output
    conn = sqlite3.connect(store)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == version  # left as it was
    conn.close()


def test_allow_legacy_never_excuses_a_missing_checkpoint(tmp_path: Path, version: int
                                                         ) -> None:
    store = tmp_path / "old.db"
    legacy_store(store, version, checkpoint_at=None)
    code, lines = verify_cli(store, "--allow-legacy")
    assert code == 1 and "is missing" in lines[-1]


def test_the_runtime_rechains_a_legacy_store_once_and_it_verifies(tmp_path: Path,
                                                                  version: int) -> None:
    store = tmp_path / "old.db"
    old = legacy_store(store, version)
    start(store)
    code, lines = verify_cli(store)
    assert code == 0 and lines[-1] == "6", lines
    assert any("records 1-5 were written as an unkeyed (schema 3 or older) chain and re-chained"
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
    conn = sqlite3.connect(store, isolation_level=None)
    trust = [r[0] for r in conn.execute("SELECT trust FROM audit WHERE seq <= 5 ORDER BY seq")]
    assert trust == [("verified" if seq % 2 and version >= 3 else None) for seq in range(1, 6)]
    # The keyed seal covers trust in every record, also where it is empty.
    conn.execute("UPDATE audit SET trust = 'embedded' WHERE seq = 2")
    conn.close()
    code, lines = verify_cli(store)
    assert code == 1 and lines[-1].startswith("FAILED: first bad record: record seq 2: "), lines


def test_a_legacy_chain_with_records_after_its_checkpoint_is_rechained(tmp_path: Path,
                                                                       version: int) -> None:
    store = tmp_path / "old.db"
    legacy_store(store, version, checkpoint_at=3)
    start(store)
    assert verify_cli(store)[0] == 0


@pytest.mark.parametrize(("damage", "message"), [
    ("no checkpoint", "has 5 records and no checkpoint, so nothing vouches for them"),
    ("edited", r"legacy \(unkeyed\) audit chain is broken at record seq 2"),
    ("tail deleted", "tail deleted or rewritten"),
    ("wrong key", "legacy checkpoint's MAC does not verify"),
])
def test_the_runtime_refuses_to_rechain_a_legacy_log_nothing_vouches_for(
    tmp_path: Path, damage: str, message: str, monkeypatch: pytest.MonkeyPatch, version: int
) -> None:
    store = tmp_path / "old.db"
    legacy_store(store, version,
                 checkpoint_at=None if damage == "no checkpoint" else -1)
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


@pytest.mark.parametrize("trust", ["embedded", None])
def test_a_legacy_records_trust_is_in_its_old_hash_when_it_was_set(tmp_path: Path,
                                                                   trust: str | None) -> None:
    store = tmp_path / "old.db"
    legacy_store(store, 3)  # record 3 was chained with trust 'verified'
    conn = sqlite3.connect(store, isolation_level=None)
    conn.execute("UPDATE audit SET trust = ? WHERE seq = 3", (trust,))
    conn.close()
    code, lines = verify_cli(store, "--allow-legacy")
    assert code == 1 and lines[-1].startswith("FAILED: first bad record: record seq 3: "), lines
    with pytest.raises(RuntimeStartError,
                       match=r"legacy \(unkeyed\) audit chain is broken at record seq 3"):
        start(store)


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


def test_a_rechain_interrupted_after_its_checkpoint_is_finished_with_that_id(
        tmp_path: Path, version: int) -> None:
    store = tmp_path / "old.db"
    legacy_store(store, version)
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


def test_a_foreign_checkpoint_beside_a_store_without_an_id_is_refused(tmp_path: Path,
                                                                     version: int) -> None:
    store = tmp_path / "old.db"
    legacy_store(store, version, checkpoint_at=None)
    conn = connect(str(store), durable=False)
    Path(f"{store}.checkpoint").write_text(
        make_checkpoint(KEY, "beef" * 8, 5, "ab" * 32).to_json())
    with pytest.raises(ChainRefused, match="do not re-chain to it"):
        open_chain(conn, str(store), KEY)
    conn.close()
