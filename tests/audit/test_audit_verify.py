"""`task-ingress audit verify`: passes on an honest store, names the first bad record of a
tampered one (edited, deleted, rewritten, truncated), never writes to the store.
(The attacks of a store writer without the key: tests/audit/test_audit_keyed_chain.py.)"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from task_ingress.actors.rules.chain import (
    ChainKey,
    Seal,
    first_bad_record,
    genesis_hash,
    record_hash,
)
from task_ingress.actors.storage import auditlog
from task_ingress.actors.storage.auditlog import (
    AUDIT_COLUMNS,
    KEY_ENV,
    find_key,
    key_path,
    record_from_row,
)
from task_ingress.messages import CancelTask, CreateTask, EnqueueRun, PeerCard, UpdateTask
from task_ingress.runtime import IngressRuntime, RuntimeConfig
from task_ingress.runtime.audit.read import load_key
from task_ingress.runtime.audit.verify import verify_store
from task_ingress.runtime.cli import app
from task_ingress.runtime.facade import load_or_create_key
from typer.testing import CliRunner

from tests.conftest import ctx, writer_card

runner = CliRunner()


@pytest.fixture(autouse=True)
def _no_env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """The key comes from the key file beside the store unless a test sets the env var."""
    monkeypatch.delenv("TASK_INGRESS_AUDIT_KEY", raising=False)


def populate(store: Path) -> list[str]:
    """A store with accepted and rejected writes of every action; returns the task IDs."""
    with IngressRuntime(RuntimeConfig(store_path=str(store))) as rt:
        rt.greet("ws", "ops", writer_card("peer-a"))
        rt.greet("ws", "ops", PeerCard(peer_id="peer-r", capabilities=["task.read"]))
        t1 = rt.submit(ctx("r-1"), CreateTask(title="one", network_channel="ops")).task_id
        t2 = rt.submit(ctx("r-2"), CreateTask(title="two")).task_id
        assert t1 and t2
        rt.submit(ctx("r-3"), UpdateTask(task_id=t1, title="one!"))
        rt.submit(ctx("r-4"), EnqueueRun(task_id=t1, idempotency_key="k1"))
        rt.submit(ctx("r-5"), EnqueueRun(task_id=t1, idempotency_key="k1"))  # same run
        rt.submit(ctx("r-1"), CreateTask(title="one", network_channel="ops"))  # replay
        rt.submit(ctx("r-6", peer="peer-r"), CreateTask(title="denied"))
        rt.submit(ctx("r-7"), CreateTask(title=" "))
        rt.submit(ctx("r-8"), CancelTask(task_id=t2))
        rt.submit(ctx("r-9"), UpdateTask(task_id="task_nope", title="x"))
    return [t1, t2]


def verify_cli(store: Path, *extra: str) -> tuple[int, list[str]]:
    result = runner.invoke(app, ["audit", "verify", "--store", str(store), *extra])
    return result.exit_code, result.output.strip().splitlines()


def db(store: Path) -> sqlite3.Connection:
    return sqlite3.connect(store, isolation_level=None)


def rows(store: Path) -> list[dict[str, object]]:
    conn = db(store)
    names = [c.strip() for c in AUDIT_COLUMNS.split(",")]
    out = [dict(zip(names, r, strict=True))
           for r in conn.execute(f"SELECT {AUDIT_COLUMNS} FROM audit ORDER BY seq")]
    conn.close()
    for r in out:
        r["replay"] = bool(r["replay"])
    return out


def chain_key(store: Path) -> ChainKey:
    """The key the runtime generated beside the store."""
    return ChainKey.from_hex(Path(f"{store}.key").read_text())


def store_id(store: Path) -> str:
    conn = db(store)
    value = conn.execute("SELECT value FROM meta WHERE key = 'store_id'").fetchone()[0]
    conn.close()
    return str(value)


def rewrite_chain_from(store: Path, seq: int, seal: Seal = record_hash) -> None:
    """What a careful forger does: recompute every hash from `seq` on so the chain links.
    Without the key (the default `seal`) the forger can only use sha256."""
    conn = db(store)
    prev = genesis_hash(store_id(store))
    for r in rows(store):
        if int(str(r["seq"])) >= seq:
            r["prev_hash"] = prev
            r["hash"] = seal(r)
            conn.execute("UPDATE audit SET prev_hash = ?, hash = ? WHERE seq = ?",
                         (r["prev_hash"], r["hash"], r["seq"]))
        prev = str(r["hash"])
    conn.close()


def write_checkpoint(store: Path, seq: int) -> None:
    """A valid checkpoint at `seq`, as Audit writes it (the key file is the runtime's)."""
    head = next(str(r["hash"]) for r in rows(store) if r["seq"] == seq)
    auditlog.write_checkpoint(str(store), chain_key(store), store_id(store), seq, head)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "store.db"
    populate(path)
    yield path


def test_honest_store_verifies_and_prints_the_record_count_last(store: Path) -> None:
    code, lines = verify_cli(store)
    assert code == 0, lines
    assert lines[-1] == "10"
    result = verify_store(str(store))
    assert result.ok and result.records == 10 and result.checkpoint is not None
    assert result.checkpoint.seq == 10 and result.tasks == 2 and result.runs == 1


def test_edited_record_fails_naming_it(store: Path) -> None:
    conn = db(store)
    conn.execute("UPDATE audit SET outcome = 'accepted', reason = NULL WHERE seq = 7")
    conn.close()
    code, lines = verify_cli(store)
    assert code == 1
    assert "first bad record: record seq 7" in lines[-1]
    assert "hash does not match" in lines[-1]


def test_edited_record_with_its_own_hash_recomputed_with_the_key_breaks_the_next_link(
    store: Path,
) -> None:
    conn = db(store)
    conn.execute("UPDATE audit SET peer_id = 'peer-x' WHERE seq = 4")
    conn.close()
    r4 = next(r for r in rows(store) if r["seq"] == 4)
    conn = db(store)
    conn.execute("UPDATE audit SET hash = ? WHERE seq = 4", (chain_key(store).seal(r4),))
    conn.close()
    result = verify_store(str(store))
    details = [str(p) for p in result.problems]
    assert "chain: record seq 5: prev_hash does not match the previous record" in details
    # The store check pins the edit itself: r-4's accepted-request row names peer-a.
    first = result.first_problem
    assert first is not None and first.kind == "store" and first.seq == 4


def test_chain_rewritten_without_the_key_fails_at_the_first_rewritten_record(store: Path
                                                                            ) -> None:
    conn = db(store)
    conn.execute("UPDATE audit SET reason = 'peer_not_found' WHERE seq = 7")
    conn.close()
    rewrite_chain_from(store, 7)
    code, lines = verify_cli(store)
    assert code == 1
    assert lines[-1] == ("FAILED: first bad record: record seq 7: hash does not match the "
                         "record's contents")


def test_chain_rewritten_by_a_key_holder_is_caught_by_the_checkpoint(store: Path) -> None:
    conn = db(store)
    conn.execute("UPDATE audit SET reason = 'peer_not_found' WHERE seq = 7")
    conn.close()
    rewrite_chain_from(store, 7, chain_key(store).seal)
    result = verify_store(str(store))
    assert not result.ok
    first = result.first_problem
    assert first is not None and first.kind == "checkpoint" and first.seq == 10
    assert "rewritten" in first.detail


def test_deleted_record_fails_naming_the_gap(store: Path) -> None:
    conn = db(store)
    conn.execute("DELETE FROM audit WHERE seq = 6")
    conn.close()
    code, lines = verify_cli(store)
    assert code == 1
    assert "record seq 7" in lines[-1] and "record 6 is missing" in lines[-1]


@pytest.mark.parametrize("tamper", [
    "UPDATE audit SET payload_size = payload_size + 1 WHERE seq = 3",
    "UPDATE audit SET prev_hash = hash WHERE seq = 5",
    "DELETE FROM audit WHERE seq IN (4, 5)",
    "UPDATE audit SET seq = 100 WHERE seq = 10",
])
def test_streaming_chain_check_agrees_with_the_chain_module(store: Path, tamper: str) -> None:
    conn = db(store)
    conn.execute(tamper)
    records = [record_from_row(r) for r in
               conn.execute(f"SELECT {AUDIT_COLUMNS} FROM audit ORDER BY seq")]
    conn.close()
    expected = first_bad_record(records, chain_key(store).seal, genesis_hash(store_id(store)))
    chain = [p for p in verify_store(str(store)).problems if p.kind == "chain"]
    assert expected is not None and [(p.seq, p.detail) for p in chain] == [expected]


def test_deleted_tail_fails_against_the_checkpoint(store: Path) -> None:
    conn = db(store)
    conn.execute("DELETE FROM audit WHERE seq >= 9")
    conn.close()
    code, lines = verify_cli(store)
    assert code == 1
    assert "record seq 9" in lines[-1] and "tail deleted" in lines[-1]


def test_records_after_an_older_checkpoint_pass_when_the_chain_holds(store: Path) -> None:
    write_checkpoint(store, 5)
    result = verify_store(str(store))
    assert result.ok, result.problems
    assert any("after the last checkpoint" in n for n in result.notes)


def test_forged_checkpoint_fails(store: Path) -> None:
    cp = json.loads(Path(f"{store}.checkpoint").read_text())
    cp["seq"], cp["hash"] = 9, next(str(r["hash"]) for r in rows(store) if r["seq"] == 9)
    Path(f"{store}.checkpoint").write_text(json.dumps(cp))
    code, lines = verify_cli(store)
    assert code == 1 and "MAC does not verify" in lines[-1]


def test_wrong_key_in_the_environment_fails(store: Path, monkeypatch: pytest.MonkeyPatch
                                            ) -> None:
    monkeypatch.setenv("TASK_INGRESS_AUDIT_KEY", "ab" * 32)
    assert not verify_store(str(store)).ok
    monkeypatch.setenv("TASK_INGRESS_AUDIT_KEY", Path(f"{store}.key").read_text().strip())
    assert verify_store(str(store)).ok


def test_checkpoint_without_its_key_fails_and_key_option_restores_it(store: Path) -> None:
    key = Path(f"{store}.key").read_text().strip()
    os.remove(f"{store}.key")
    code, lines = verify_cli(store)
    assert code == 1 and lines[-1].startswith("FAILED: key: no audit key")
    code, lines = verify_cli(store, "--key", key)
    assert code == 0 and lines[-1] == "10"


def test_task_deleted_from_the_store_fails_naming_its_create_record(store: Path,
                                                                    ) -> None:
    conn = db(store)
    task_id = conn.execute("SELECT task_id FROM audit WHERE seq = 2").fetchone()[0]
    conn.execute("DELETE FROM tasks WHERE task_id = ?", (task_id,))
    conn.close()
    result = verify_store(str(store))
    first = result.first_problem
    assert first is not None and first.kind == "store" and first.seq == 2


def test_task_without_an_accepted_record_fails(store: Path) -> None:
    conn = db(store)
    conn.execute("INSERT INTO tasks (task_id, workspace, title, description, created_at, "
                 "updated_at) VALUES ('task_smuggled', 'ws', 't', '', 0, 0)")
    conn.close()
    code, lines = verify_cli(store)
    assert code == 1 and "task_smuggled has no accepted task.create record" in lines[-1]


def test_run_and_request_rows_without_records_fail(store: Path) -> None:
    conn = db(store)
    task_id = conn.execute("SELECT task_id FROM tasks LIMIT 1").fetchone()[0]
    conn.execute("INSERT INTO runs (run_id, task_id, workspace, idempotency_key, peer_id, "
                 "channel, created_at) VALUES ('run_smuggled', ?, 'ws', 'kx', 'peer-a', 'ops', 0)",
                 (task_id,))
    conn.execute("INSERT INTO accepted_requests VALUES ('ws', 'ops', 'peer-a', 'r-forged', "
                 "'task.update', ?, NULL)", (task_id,))
    conn.close()
    details = [str(p) for p in verify_store(str(store)).problems]
    assert any("run_smuggled has no accepted enqueue record" in d for d in details)
    assert any("r-forged (task.update) has no accepted record" in d for d in details)


def test_pending_outbox_rows_are_reported_not_errors_and_drained_on_start(store: Path) -> None:
    # A SIGKILL between the store's commit and Audit's leaves the record in the outbox:
    # move the newest accepted record back there, as that crash would have left it.
    last = max((r for r in rows(store) if r["outcome"] == "accepted" and not r["replay"]),
               key=lambda r: int(str(r["seq"])))
    fields = {k: v for k, v in last.items() if k not in ("seq", "at", "prev_hash", "hash")}
    conn = db(store)
    conn.execute("DELETE FROM audit WHERE seq >= ?", (last["seq"],))
    conn.execute("INSERT INTO outbox (record) VALUES (?)", (json.dumps(fields),))
    conn.close()
    write_checkpoint(store, int(str(last["seq"])) - 1)
    result = verify_store(str(store))
    assert result.ok, result.problems
    assert result.pending_outbox == 1 and any("pending outbox" in n for n in result.notes)
    with IngressRuntime(RuntimeConfig(store_path=str(store))):
        pass  # Audit drains the outbox on start
    after = verify_store(str(store))
    assert after.ok and after.pending_outbox == 0
    assert after.records == int(str(last["seq"]))


def test_verify_never_changes_the_store_files(store: Path) -> None:
    def snapshot() -> dict[str, str]:
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(store.parent.iterdir())}

    before = snapshot()
    assert verify_cli(store)[0] == 0
    assert runner.invoke(app, ["audit", "export", "--store", str(store)]).exit_code == 0
    assert runner.invoke(app, ["audit", "show", "--store", str(store)]).exit_code == 0
    assert snapshot() == before


def test_verify_reads_a_store_a_live_runtime_is_writing(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    with IngressRuntime(RuntimeConfig(store_path=str(path))) as rt:
        rt.greet("ws", "ops", writer_card("peer-a"))
        for i in range(5):
            rt.submit(ctx(f"r-{i}"), CreateTask(title=f"t{i}"))
        live = verify_store(str(path))
        assert live.ok and live.records == 5, live.problems
    assert verify_store(str(path)).ok


def test_missing_store_exits_2(tmp_path: Path) -> None:
    code, _ = verify_cli(tmp_path / "nope.db")
    assert code == 2
    assert not (tmp_path / "nope.db").exists()


def test_json_output_names_the_first_problem(store: Path) -> None:
    conn = db(store)
    conn.execute("DELETE FROM audit WHERE seq = 3")
    conn.close()
    result = runner.invoke(app, ["audit", "verify", "--store", str(store), "--json"])
    assert result.exit_code == 1
    data = json.loads(result.output)
    assert data["ok"] is False and data["first_problem"]["seq"] == 4


def test_the_runtime_and_the_audit_tools_find_the_key_in_one_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = str(tmp_path / "store.db")
    assert find_key(store) is None and load_key(store) == (None, None)
    created = load_or_create_key(store)  # the runtime's first start writes the key file
    assert find_key(store) == (created, key_path(store))
    assert load_key(store) == (bytes.fromhex(created), None)
    monkeypatch.setenv(KEY_ENV, "ab" * 32)  # the environment wins over the file, for both
    assert load_or_create_key(store) == "ab" * 32
    assert load_key(store) == (bytes.fromhex("ab" * 32), None)
    assert load_key(store, "cd" * 32) == (bytes.fromhex("cd" * 32), None)  # --key wins


def test_an_outbox_row_that_does_not_decode_fails_naming_it(store: Path) -> None:
    conn = db(store)
    row_id = conn.execute("INSERT INTO outbox (record) VALUES (?)", (b"\xc1",)).lastrowid
    conn.close()
    code, lines = verify_cli(store)
    assert code == 1
    assert f"outbox row {row_id} does not decode (neither a msgpack nor a JSON record)" \
        in lines[-1]
