"""Anchors outside the store: `audit head` prints a signed one-line head, and
`audit verify --expect-seq / --expect-head` fail a log that no longer reaches it — what no
file beside the store can show: records deleted after the last checkpoint, a store rolled
back to an older copy of itself, a store swapped for another under the same key."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
from task_ingress.actors.rules.chain import ChainKey, genesis_hash
from task_ingress.actors.storage.auditlog import write_checkpoint
from task_ingress.messages import CreateTask
from task_ingress.runtime import IngressRuntime, RuntimeConfig
from task_ingress.runtime.audit.anchor import BadAnchor, make_anchor, parse_head_line
from task_ingress.runtime.cli import app
from typer.testing import CliRunner

from tests.conftest import ctx, writer_card

runner = CliRunner()
FILES = ("", ".checkpoint")


@pytest.fixture(autouse=True)
def _env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASK_INGRESS_AUDIT_KEY", "cd" * 32)


KEY = ChainKey(bytes.fromhex("cd" * 32))


def grow(store: Path, n: int, prefix: str = "r") -> None:
    with IngressRuntime(RuntimeConfig(store_path=str(store))) as rt:
        rt.greet("ws", "ops", writer_card("peer-a"))
        for i in range(n):
            rt.submit(ctx(f"{prefix}-{i}"), CreateTask(title=f"t{i}"))


def audit(*args: str) -> tuple[int, list[str]]:
    result = runner.invoke(app, ["audit", *args])
    return result.exit_code, result.output.strip().splitlines()


def head(store: Path) -> str:
    code, lines = audit("head", "--store", str(store))
    assert code == 0 and len(lines) == 1, lines
    return lines[0]


def hash_at(store: Path, seq: int) -> str:
    conn = sqlite3.connect(store)
    value = conn.execute("SELECT hash FROM audit WHERE seq = ?", (seq,)).fetchone()[0]
    conn.close()
    return str(value)


def store_id(store: Path) -> str:
    conn = sqlite3.connect(store)
    value = conn.execute("SELECT value FROM meta WHERE key = 'store_id'").fetchone()[0]
    conn.close()
    return str(value)


def test_head_is_one_signed_line_naming_store_seq_and_hash(tmp_path: Path) -> None:
    store = tmp_path / "s.db"
    grow(store, 5)
    line = head(store)
    anchor = parse_head_line(line)
    assert (anchor.store_id, anchor.seq, anchor.head) == (store_id(store), 5, hash_at(store, 5))
    assert anchor.mac_ok(KEY) and not anchor.mac_ok(ChainKey(b"another key"))
    assert audit("verify", "--store", str(store), "--expect-head", line)[0] == 0


def test_head_of_a_new_store_is_its_genesis(tmp_path: Path) -> None:
    store = tmp_path / "s.db"
    grow(store, 0)
    anchor = parse_head_line(head(store))
    assert (anchor.seq, anchor.head) == (0, genesis_hash(store_id(store)))
    assert audit("verify", "--store", str(store), "--expect-head", head(store))[0] == 0


def test_head_of_a_tampered_log_exits_1_printing_nothing_on_stdout(tmp_path: Path) -> None:
    store = tmp_path / "s.db"
    grow(store, 3)
    conn = sqlite3.connect(store)
    conn.execute("UPDATE audit SET peer_id = 'x' WHERE seq = 2")
    conn.commit()
    conn.close()
    result = runner.invoke(app, ["audit", "head", "--store", str(store)])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "FAILED: first bad record: record seq 2: hash does not match" in result.stderr


def test_records_deleted_after_the_last_checkpoint_fail_only_against_an_anchor(
    tmp_path: Path,
) -> None:
    # A crash after record 5's checkpoint, records 6-8 written since: deleting 7-8 leaves
    # a chain the checkpoint vouches for. The operator's anchor still says seq 8.
    store = tmp_path / "s.db"
    grow(store, 8)
    anchor = head(store)
    write_checkpoint(str(store), KEY, store_id(store), 5, hash_at(store, 5))
    conn = sqlite3.connect(store)
    conn.execute("DELETE FROM audit WHERE seq > 6")
    conn.execute("DELETE FROM tasks WHERE task_id IN (SELECT task_id FROM accepted_requests "
                 "WHERE request_id IN ('r-6', 'r-7'))")
    conn.execute("DELETE FROM accepted_requests WHERE request_id IN ('r-6', 'r-7')")
    conn.commit()
    conn.close()
    code, lines = audit("verify", "--store", str(store))
    assert code == 0, lines  # what the files alone cannot show
    assert any("after the last checkpoint (seq 5)" in line for line in lines)
    code, lines = audit("verify", "--store", str(store), "--expect-seq", "8")
    assert code == 1
    assert lines[-1].startswith("FAILED: first bad record: record seq 7: tail deleted: the "
                                "audit ends at seq 6 but the anchor")
    code, lines = audit("verify", "--store", str(store), "--expect-head", anchor)
    assert code == 1 and "tail deleted" in lines[-1]


def test_store_rolled_back_to_an_older_copy_fails_against_a_later_head(tmp_path: Path
                                                                       ) -> None:
    store, saved = tmp_path / "s.db", tmp_path / "saved"
    grow(store, 3)
    saved.mkdir()
    for suffix in FILES:
        shutil.copy(f"{store}{suffix}", saved / f"s.db{suffix}")
    grow(store, 3, prefix="later")
    later = head(store)
    for suffix in FILES:  # the rollback: every file put back as it was
        shutil.copy(saved / f"s.db{suffix}", f"{store}{suffix}")
    assert audit("verify", "--store", str(store))[0] == 0
    code, lines = audit("verify", "--store", str(store), "--expect-head", later)
    assert code == 1 and "tail deleted: the audit ends at seq 3" in lines[-1]


def test_store_swapped_for_another_under_the_same_key_fails_against_its_head(
    tmp_path: Path,
) -> None:
    mine, other = tmp_path / "mine.db", tmp_path / "other.db"
    grow(mine, 4)
    grow(other, 6)
    mine_head = head(mine)
    for suffix in FILES:
        shutil.copy(f"{other}{suffix}", f"{mine}{suffix}")
    assert audit("verify", "--store", str(mine))[0] == 0
    code, lines = audit("verify", "--store", str(mine), "--expect-head", mine_head)
    assert code == 1
    assert lines[-1] == (f"FAILED: anchor: this is store {store_id(other)}, not the anchored "
                         f"store {parse_head_line(mine_head).store_id}: the store was replaced")


def test_expect_head_takes_a_bare_hash_with_or_without_its_seq(tmp_path: Path) -> None:
    store = tmp_path / "s.db"
    grow(store, 6)
    h5 = hash_at(store, 5)
    assert audit("verify", "--store", str(store), "--expect-head", h5)[0] == 0
    assert audit("verify", "--store", str(store), "--expect-head", h5,
                 "--expect-seq", "5")[0] == 0
    code, lines = audit("verify", "--store", str(store), "--expect-head", h5,
                        "--expect-seq", "4")
    assert code == 1 and "record seq 4" in lines[-1] and "anchored hash" in lines[-1]
    code, lines = audit("verify", "--store", str(store), "--expect-head", "ab" * 32)
    assert code == 1 and "no record has the anchored hash" in lines[-1]


def test_an_altered_head_line_fails_its_mac(tmp_path: Path) -> None:
    store = tmp_path / "s.db"
    grow(store, 6)
    line = head(store).replace("seq=6 ", "seq=5 ").replace(
        f"hash={hash_at(store, 6)}", f"hash={hash_at(store, 5)}")
    code, lines = audit("verify", "--store", str(store), "--expect-head", line)
    assert code == 1 and "the head line's MAC does not verify" in lines[-1]


@pytest.mark.parametrize(("seq", "head", "message"), [
    (-1, None, "--expect-seq must be 0 or more"),
    (None, "abc", "--expect-head must be a record hash"),
    (None, "task-ingress-audit-head store=x", "not a head line"),
])
def test_anchor_values_that_cannot_be_one_are_usage_errors(seq: int | None, head: str | None,
                                                           message: str) -> None:
    with pytest.raises(BadAnchor, match=message):
        make_anchor(seq, head)


def test_every_file_deleted_is_a_missing_store_unless_an_anchor_says_it_existed(
    tmp_path: Path,
) -> None:
    store = tmp_path / "s.db"
    grow(store, 3)
    for suffix in ("", "-wal", "-shm", ".checkpoint"):
        Path(f"{store}{suffix}").unlink(missing_ok=True)
    assert audit("verify", "--store", str(store))[0] == 2  # indistinguishable from a typo
    code, lines = audit("verify", "--store", str(store), "--expect-seq", "3")
    assert code == 1
    assert lines[-1] == (f"FAILED: store: no store file at {store} (check the --store path), "
                         "yet the anchor (seq 3) says it existed: the store was deleted or "
                         "emptied")


def test_a_key_holders_consistent_rewrite_fails_against_a_head_shipped_before_it(
    tmp_path: Path,
) -> None:
    store = tmp_path / "s.db"
    grow(store, 4)
    shipped = head(store)
    conn = sqlite3.connect(store, isolation_level=None)
    conn.execute("UPDATE audit SET request_id = 'rewritten' WHERE seq = 2")
    names = [r[1] for r in conn.execute("PRAGMA table_info(audit)")]
    prev = genesis_hash(store_id(store))
    for row in conn.execute("SELECT * FROM audit ORDER BY seq").fetchall():
        fields = dict(zip(names, row, strict=True), prev_hash=prev)
        fields["replay"] = bool(fields["replay"])
        prev = KEY.seal(fields)
        conn.execute("UPDATE audit SET prev_hash = ?, hash = ? WHERE seq = ?",
                     (fields["prev_hash"], prev, fields["seq"]))
    conn.close()
    write_checkpoint(str(store), KEY, store_id(store), 4, prev)
    conn = sqlite3.connect(store, isolation_level=None)
    conn.execute("UPDATE accepted_requests SET request_id = 'rewritten' WHERE request_id = "
                 "'r-1'")
    conn.close()
    assert audit("verify", "--store", str(store))[0] == 0  # re-signed: consistent
    code, lines = audit("verify", "--store", str(store), "--expect-head", shipped)
    assert code == 1
    assert "record seq 4" in lines[-1] and "does not have the anchored hash" in lines[-1]


def test_a_key_file_beside_the_store_can_be_swapped_which_only_the_real_key_or_an_anchor_shows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The runtime's default: the key in s.db.key. A store writer cannot read it, but can
    # replace it and re-sign every record and the checkpoint under a key of their own.
    monkeypatch.delenv("TASK_INGRESS_AUDIT_KEY")
    store = tmp_path / "s.db"
    grow(store, 3)
    real = Path(f"{store}.key").read_text().strip()
    shipped = head(store)
    forged = ChainKey(b"the forger's own key")
    Path(f"{store}.key").write_text(forged.raw.hex() + "\n")
    conn = sqlite3.connect(store, isolation_level=None)
    conn.execute("UPDATE audit SET peer_id = 'innocent' WHERE seq = 2")
    names = [r[1] for r in conn.execute("PRAGMA table_info(audit)")]
    prev = genesis_hash(store_id(store))
    for row in conn.execute("SELECT * FROM audit ORDER BY seq").fetchall():
        fields = dict(zip(names, row, strict=True), prev_hash=prev)
        fields["replay"] = bool(fields["replay"])
        prev = forged.seal(fields)
        conn.execute("UPDATE audit SET prev_hash = ?, hash = ? WHERE seq = ?",
                     (fields["prev_hash"], prev, fields["seq"]))
    conn.execute("UPDATE accepted_requests SET peer_id = 'innocent' WHERE request_id = 'r-1'")
    conn.close()
    write_checkpoint(str(store), forged, store_id(store), 3, prev)
    code, lines = audit("verify", "--store", str(store))
    assert code == 0  # the files agree with each other: verify says what it relied on
    assert any(line.startswith(f"note: the key was read from {store}.key beside the store")
               for line in lines)
    code, lines = audit("verify", "--store", str(store), "--key", real)
    assert code == 1 and "record seq 1: hash does not match" in lines[-1]
    code, lines = audit("verify", "--store", str(store), "--expect-head", shipped)
    assert code == 1 and "the head line's MAC does not verify" in lines[-1]
