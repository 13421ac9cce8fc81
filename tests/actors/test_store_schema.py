"""The store file's schema is versioned (`PRAGMA user_version`): a store written by an
older version opens, is migrated in place, and keeps every row."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
from task_ingress.actors.storage.schema import (
    MIGRATIONS,
    SCHEMA_VERSION,
    WAL_CHECKPOINT_PAGES,
    connect,
    decode_outbox,
    encode_outbox,
)
from task_ingress.messages import CreateTask
from task_ingress.runtime import IngressRuntime, RuntimeConfig
from task_ingress.runtime.audit.verify import verify_store

from tests.conftest import ctx, writer_card


def version_1_store(path: Path, records: list[dict[str, object]]) -> None:
    """A store as version 1 created it (outbox.record TEXT), with these outbox rows and one
    more that was drained, so the AUTOINCREMENT counter is ahead of the rows."""
    conn = sqlite3.connect(path, isolation_level=None)
    for statement in MIGRATIONS[1].split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.execute("PRAGMA user_version=1")
    for fields in [*records, {"drained": True}]:
        conn.execute("INSERT INTO outbox (record) VALUES (?)", (encode_outbox(fields),))
    conn.execute("DELETE FROM outbox WHERE id = ?", (len(records) + 1,))
    conn.close()


def outbox_type(conn: sqlite3.Connection) -> str:
    return next(str(r[2]) for r in conn.execute("PRAGMA table_info(outbox)") if r[1] == "record")


def test_a_version_1_store_is_migrated_keeping_its_outbox_rows_and_counter(tmp_path: Path
                                                                           ) -> None:
    path = tmp_path / "store.db"
    records: list[dict[str, object]] = [{"request_id": "r-1"}, {"request_id": "r-2"}]
    version_1_store(path, records)
    conn = connect(str(path), durable=False)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
    assert outbox_type(conn) == "BLOB"
    rows = conn.execute("SELECT id, record FROM outbox ORDER BY id").fetchall()
    assert [(i, decode_outbox(blob)) for i, blob in rows] == [(1, records[0]), (2, records[1])]
    # An outbox id is never reused: the drained row 3 stays taken.
    cur = conn.execute("INSERT INTO outbox (record) VALUES (?)", (encode_outbox({}),))
    assert cur.lastrowid == 4
    conn.close()
    again = connect(str(path), durable=False)  # opening again changes nothing
    assert again.execute("SELECT count(*) FROM outbox").fetchone()[0] == 3
    again.close()


def test_a_new_store_declares_the_outbox_record_blob(tmp_path: Path) -> None:
    conn = connect(str(tmp_path / "store.db"), durable=False)
    assert outbox_type(conn) == "BLOB"
    conn.close()


def test_the_runtime_serves_a_version_1_store_and_it_verifies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TASK_INGRESS_AUDIT_KEY", raising=False)
    path = tmp_path / "store.db"
    version_1_store(path, [])
    with IngressRuntime(RuntimeConfig(store_path=str(path))) as rt:
        rt.greet("ws", "ops", writer_card("peer-a"))
        assert rt.submit(ctx("r-1"), CreateTask(title="after the upgrade")).accepted
    result = verify_store(str(path))
    assert result.ok and result.records == 1, result.problems
    assert os.path.exists(f"{path}.checkpoint")


def test_the_wal_is_checkpointed_only_past_its_page_budget_not_sqlites_1000(
    tmp_path: Path,
) -> None:
    conn = connect(str(tmp_path / "store.db"), durable=False)
    page = conn.execute("PRAGMA page_size").fetchone()[0]
    wal = tmp_path / "store.db-wal"
    # One page a commit at least: far past SQLite's default 1,000 pages, short of ours.
    for i in range(1_500):
        conn.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (f"k{i}", "v" * 64))
    assert wal.stat().st_size > 1_400 * page  # not checkpointed (and restarted) at 1,000
    for i in range(1_500, WAL_CHECKPOINT_PAGES + 500):
        conn.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (f"k{i}", "v" * 64))
    # Past the budget a commit checkpointed it: the file restarted from its start and
    # never grew far beyond the budget.
    assert wal.stat().st_size < (WAL_CHECKPOINT_PAGES + 100) * (page + 24)
    conn.close()
