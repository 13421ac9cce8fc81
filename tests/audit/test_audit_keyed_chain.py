"""Issue 13: someone who can write the store's files but cannot read the audit key cannot
rewrite the log unnoticed. Each test is one attack, done with nothing but sqlite3, file
operations and sha256 (all such an attacker has), and `audit verify` must fail it with exit 1
and a message naming what is wrong. Nothing stored in the database excuses anything."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from task_ingress.actors.rules.chain import ChainKey
from task_ingress.actors.storage.auditlog import AUDIT_COLUMNS, AUDIT_NAMES, write_checkpoint
from task_ingress.messages import CreateTask, EnqueueRun, PeerCard
from task_ingress.runtime import IngressRuntime, RuntimeConfig
from task_ingress.runtime.cli import app
from task_ingress.runtime.errors import RuntimeStartError
from typer.testing import CliRunner

from tests.conftest import ctx, writer_card

runner = CliRunner()


@pytest.fixture(autouse=True)
def _no_env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TASK_INGRESS_AUDIT_KEY", raising=False)


def populate(store: Path, n: int = 4) -> None:
    """Accepted creates and an enqueue by peer-a, rejections of a peer nobody greeted."""
    with IngressRuntime(RuntimeConfig(store_path=str(store))) as rt:
        rt.greet("ws", "ops", writer_card("peer-a"))
        rt.greet("ws", "ops", PeerCard(peer_id="peer-r", capabilities=["task.read"]))
        task = rt.submit(ctx("first"), CreateTask(title="first")).task_id
        rt.submit(ctx("run"), EnqueueRun(task_id=task or "", idempotency_key="k"))
        for i in range(n):
            rt.submit(ctx(f"ok-{i}"), CreateTask(title=f"t{i}"))
            rt.submit(ctx(f"no-{i}", peer="ghost"), CreateTask(title="x"))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "store.db"
    populate(path)
    yield path


def verify_cli(store: Path, *extra: str) -> tuple[int, list[str]]:
    result = runner.invoke(app, ["audit", "verify", "--store", str(store), *extra])
    return result.exit_code, result.output.strip().splitlines()


def sql(store: Path, *statements: str) -> None:
    conn = sqlite3.connect(store, isolation_level=None)
    for statement in statements:
        conn.execute(statement)
    conn.close()


def sha256_rechain(store: Path, from_seq: int = 1) -> None:
    """The keyless forger's best: re-link the records from `from_seq` on with sha256, so that
    every prev_hash matches its predecessor's hash."""
    conn = sqlite3.connect(store, isolation_level=None)
    rows = [dict(zip(AUDIT_NAMES, r, strict=True))
            for r in conn.execute(f"SELECT {AUDIT_COLUMNS} FROM audit ORDER BY seq")]
    prev = rows[0]["prev_hash"] if rows else ""
    for r in rows:
        if r["seq"] >= from_seq:
            r["prev_hash"], r["replay"] = prev, bool(r["replay"])
            body = {k: r[k] for k in sorted(r) if k != "hash"}
            r["hash"] = hashlib.sha256(
                json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
            conn.execute("UPDATE audit SET prev_hash = ?, hash = ? WHERE seq = ?",
                         (r["prev_hash"], r["hash"], r["seq"]))
        prev = r["hash"]
    conn.close()


def delete_tail(store: Path, after_seq: int) -> None:
    """Delete the records after `after_seq` and the writes they vouch for, so the store
    check has nothing to say (these are creates, and rejections)."""
    sql(store,
        "DELETE FROM tasks WHERE task_id IN (SELECT task_id FROM audit WHERE seq > "
        f"{after_seq} AND outcome = 'accepted')",
        "DELETE FROM accepted_requests WHERE request_id IN (SELECT request_id FROM audit "
        f"WHERE seq > {after_seq} AND outcome = 'accepted')",
        f"DELETE FROM audit WHERE seq > {after_seq}")


def remove_checkpoint(store: Path) -> None:
    os.remove(f"{store}.checkpoint")


def test_edited_record_with_the_chain_recomputed_and_the_checkpoint_deleted_fails(
    store: Path,
) -> None:
    # The attack of issue 13 in full: blame an innocent peer, re-chain, delete the
    # checkpoint, and give every record one time so the chain looks "young".
    sql(store, "UPDATE audit SET peer_id = 'innocent' WHERE peer_id = 'ghost'",
        "UPDATE audit SET at = 1700000000.0")
    sha256_rechain(store)
    remove_checkpoint(store)
    code, lines = verify_cli(store)
    assert code == 1
    assert lines[-1] == ("FAILED: first bad record: record seq 1: hash does not match the "
                         "record's contents")
    assert any("checkpoint" in line and "is missing" in line for line in lines)


def test_edited_record_with_the_chain_recomputed_from_it_fails_naming_it(store: Path) -> None:
    sql(store, "UPDATE audit SET peer_id = 'innocent' WHERE seq = 4")
    sha256_rechain(store, from_seq=4)
    code, lines = verify_cli(store)
    assert code == 1
    assert lines[-1] == ("FAILED: first bad record: record seq 4: hash does not match the "
                         "record's contents")


def test_deleted_tail_with_the_checkpoint_deleted_fails(store: Path) -> None:
    delete_tail(store, 6)  # records of well under a second: a "young" chain until now
    remove_checkpoint(store)
    code, lines = verify_cli(store)
    assert code == 1
    assert lines[-1].startswith("FAILED: checkpoint: checkpoint file ")
    assert lines[-1].endswith("is missing: every store has one from its creation (deleted?)")


def test_deleted_tail_fails_against_the_checkpoint(store: Path) -> None:
    delete_tail(store, 6)
    code, lines = verify_cli(store)
    assert code == 1
    assert lines[-1] == ("FAILED: first bad record: record seq 7: tail deleted: the checkpoint "
                         "vouches for records up to seq 10 but the audit ends at seq 6")


def test_deleted_checkpoint_alone_fails(store: Path) -> None:
    # Today's young-chain excuse came from record times inside the database: gone.
    remove_checkpoint(store)
    code, lines = verify_cli(store)
    assert code == 1 and "is missing" in lines[-1]


@pytest.mark.parametrize("keep_checkpoint", [False, True])
def test_emptied_store_fails(store: Path, keep_checkpoint: bool) -> None:
    sql(store, *(f"DELETE FROM {t}" for t in
                 ("audit", "tasks", "runs", "accepted_requests", "outbox")))
    if not keep_checkpoint:
        remove_checkpoint(store)
    code, lines = verify_cli(store)
    assert code == 1
    expected = "tail deleted" if keep_checkpoint else "is missing"
    assert expected in lines[-1]


def test_emptied_store_with_its_id_deleted_too_fails_as_an_unkeyed_store(store: Path) -> None:
    sql(store, *(f"DELETE FROM {t}" for t in
                 ("audit", "tasks", "runs", "accepted_requests", "outbox", "meta")))
    remove_checkpoint(store)
    code, lines = verify_cli(store)
    assert code == 1 and lines[-1].startswith("FAILED: legacy: legacy unkeyed chain")
    code, lines = verify_cli(store, "--allow-legacy")
    assert code == 1 and "is missing" in lines[-1]


def test_checkpoint_copied_from_another_store_with_the_same_key_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TASK_INGRESS_AUDIT_KEY", "ab" * 32)
    mine, other = tmp_path / "mine.db", tmp_path / "other.db"
    populate(mine)
    populate(other, n=6)
    shutil.copy(f"{other}.checkpoint", f"{mine}.checkpoint")
    code, lines = verify_cli(mine)
    assert code == 1
    assert lines[-1].startswith("FAILED: checkpoint: the checkpoint belongs to store ")
    assert "(copied from another store?)" in lines[-1]


def test_genesis_checkpoint_copied_from_another_store_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Empty the log and put back a checkpoint that vouches for no records: it is another
    # store's, so it does not vouch for this one.
    monkeypatch.setenv("TASK_INGRESS_AUDIT_KEY", "ab" * 32)
    mine, fresh = tmp_path / "mine.db", tmp_path / "fresh.db"
    populate(mine)
    with IngressRuntime(RuntimeConfig(store_path=str(fresh))):
        pass
    assert json.loads(Path(f"{fresh}.checkpoint").read_text())["seq"] == 0
    sql(mine, *(f"DELETE FROM {t}" for t in
                ("audit", "tasks", "runs", "accepted_requests", "outbox")))
    shutil.copy(f"{fresh}.checkpoint", f"{mine}.checkpoint")
    code, lines = verify_cli(mine)
    assert code == 1 and "the checkpoint belongs to store" in lines[-1]


def test_missing_key_fails_even_with_the_checkpoint_gone(store: Path) -> None:
    os.remove(f"{store}.key")
    remove_checkpoint(store)
    code, lines = verify_cli(store)
    assert code == 1
    assert lines[-1].startswith("FAILED: key: no audit key, so neither the chain nor the "
                                "checkpoint can be authenticated")


def test_missing_key_where_a_checkpoint_exists_fails(store: Path) -> None:
    os.remove(f"{store}.key")
    code, lines = verify_cli(store)
    assert code == 1 and lines[-1].startswith("FAILED: key: no audit key")


def test_garbled_key_file_beside_the_store_fails_as_tampering(store: Path) -> None:
    Path(f"{store}.key").write_text("not a key\n")
    code, lines = verify_cli(store)
    assert code == 1 and "does not hold a hex key" in lines[-1]


def test_deleted_store_file_beside_its_checkpoint_fails(store: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{store}{suffix}").unlink(missing_ok=True)
    code, lines = verify_cli(store)
    assert code == 1
    assert "its checkpoint vouches for seq 10: the store was deleted or emptied" in lines[-1]


def test_runtime_refuses_to_extend_a_log_whose_checkpoint_is_missing(store: Path) -> None:
    # Appending and checkpointing would launder the deletion: the next verify would pass.
    remove_checkpoint(store)
    with pytest.raises(RuntimeStartError, match=r"checkpoint file .* is missing"):
        IngressRuntime(RuntimeConfig(store_path=str(store))).start()
    assert verify_cli(store)[0] == 1


def test_runtime_refuses_to_extend_a_truncated_log(store: Path) -> None:
    sql(store, "DELETE FROM audit WHERE seq > 6")
    with pytest.raises(RuntimeStartError, match="tail deleted"):
        IngressRuntime(RuntimeConfig(store_path=str(store))).start()


@pytest.mark.parametrize("checkpoint", ["forged", "foreign"])
def test_runtime_refuses_a_forged_or_foreign_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, checkpoint: str
) -> None:
    monkeypatch.setenv("TASK_INGRESS_AUDIT_KEY", "ab" * 32)
    mine, other = tmp_path / "mine.db", tmp_path / "other.db"
    populate(mine)
    if checkpoint == "forged":
        cp = json.loads(Path(f"{mine}.checkpoint").read_text())
        Path(f"{mine}.checkpoint").write_text(json.dumps(cp | {"seq": 3}))
        expected = "MAC does not verify"
    else:
        populate(other)
        shutil.copy(f"{other}.checkpoint", f"{mine}.checkpoint")
        expected = "the checkpoint belongs to store"
    with pytest.raises(RuntimeStartError, match=expected):
        IngressRuntime(RuntimeConfig(store_path=str(mine))).start()


def test_runtime_refuses_records_forged_after_the_checkpoint(store: Path) -> None:
    sql(store, "UPDATE audit SET peer_id = 'innocent' WHERE seq = 10")
    conn = sqlite3.connect(store)
    last = conn.execute("SELECT seq FROM audit ORDER BY seq DESC LIMIT 1").fetchone()[0]
    conn.close()
    assert last == 10
    with pytest.raises(RuntimeStartError, match="differs from the checkpoint"):
        IngressRuntime(RuntimeConfig(store_path=str(store))).start()


def test_runtime_continues_a_log_checkpointed_before_its_last_records(store: Path) -> None:
    # A crash between a commit and the next checkpoint leaves records after it: the keyed
    # chain covers them, the runtime continues them, and verify passes.
    conn = sqlite3.connect(store)
    store_id = conn.execute("SELECT value FROM meta WHERE key = 'store_id'").fetchone()[0]
    head5 = conn.execute("SELECT hash FROM audit WHERE seq = 5").fetchone()[0]
    conn.close()
    key = ChainKey.from_hex(Path(f"{store}.key").read_text())
    write_checkpoint(str(store), key, store_id, 5, head5)
    assert verify_cli(store)[0] == 0
    with IngressRuntime(RuntimeConfig(store_path=str(store))) as rt:
        rt.greet("ws", "ops", writer_card("peer-a"))
        rt.submit(ctx("more"), CreateTask(title="more"))
    code, lines = verify_cli(store)
    assert code == 0 and lines[-1] == "11"
