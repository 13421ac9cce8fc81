"""A file store survives restarts: tasks, idempotency and the audit chain continue."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from task_ingress.actors.rules.chain import ChainKey, first_bad_record, genesis_hash
from task_ingress.messages import AuditRecord, CreateTask, EnqueueRun
from task_ingress.runtime import IngressRuntime, RuntimeConfig

from tests.conftest import FakeClock, ctx, writer_card


def _runtime(path: Path, clock: FakeClock) -> IngressRuntime:
    return IngressRuntime(RuntimeConfig(store_path=str(path), clock=clock))


def bad_record(store: Path, records: list[AuditRecord]) -> tuple[int, str] | None:
    """The keyed chain rule over `records`, with the key and store id beside the store."""
    key = ChainKey.from_hex((store.parent / f"{store.name}.key").read_text())
    conn = sqlite3.connect(store)
    store_id = conn.execute("SELECT value FROM meta WHERE key = 'store_id'").fetchone()[0]
    conn.close()
    return first_bad_record(records, key.seal, genesis_hash(store_id))


def test_file_store_survives_restart_and_chain_continues(tmp_path: Path, clock: FakeClock
                                                         ) -> None:
    store = tmp_path / "store.db"
    with _runtime(store, clock) as rt:
        rt.greet("ws", "ops", writer_card("peer-a"))
        first = rt.submit(ctx("r-1"), CreateTask(title="persist me"))
        run = rt.submit(ctx("r-2"), EnqueueRun(task_id=first.task_id or "", idempotency_key="k"))
        head = rt.audit()[-1]
    with _runtime(store, clock) as rt:
        rt.greet("ws", "ops", writer_card("peer-a"))
        task = rt.get_task("ws", first.task_id or "")
        assert task is not None and task.title == "persist me"
        replay = rt.submit(ctx("r-1"), CreateTask(title="persist me"))
        assert replay.replay and replay.task_id == first.task_id
        again = rt.submit(ctx("r-3"), EnqueueRun(task_id=task.task_id, idempotency_key="k"))
        assert again.run_id == run.run_id
        records = rt.audit()
    assert records[2].prev_hash == head.hash
    assert bad_record(store, records) is None
    assert [r.seq for r in records] == [1, 2, 3, 4]


def test_outbox_rows_left_by_a_crash_are_chained_on_start(tmp_path: Path, clock: FakeClock
                                                          ) -> None:
    store = tmp_path / "store.db"
    with _runtime(store, clock) as rt:
        rt.greet("ws", "ops", writer_card("peer-a"))
        rt.submit(ctx("r-1"), CreateTask(title="t"))
    # Simulate a crash after the store committed but before Audit chained the record.
    conn = sqlite3.connect(store)
    record = ('{"workspace":"ws","channel":"ops","peer_id":"peer-a","actor":"peer:peer-a/'
              'channel:ops","request_id":"r-lost","action":"task.create","outcome":"accepted",'
              '"reason":null,"task_id":"task_x","run_id":null,"payload_size":9,"replay":false}')
    conn.execute("INSERT INTO outbox (record) VALUES (?)", (record,))
    conn.commit()
    conn.close()
    with _runtime(store, clock) as rt:
        records = rt.audit()
    assert [r.request_id for r in records] == ["r-1", "r-lost"]
    assert bad_record(store, records) is None
    conn = sqlite3.connect(store)
    assert conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0
    conn.close()


def test_checkpoint_is_written_beside_the_store_at_shutdown(tmp_path: Path, clock: FakeClock
                                                            ) -> None:
    store = tmp_path / "store.db"
    with _runtime(store, clock) as rt:
        rt.greet("ws", "ops", writer_card("peer-a"))
        rt.submit(ctx("r-1"), CreateTask(title="t"))
        head = rt.audit()[-1]
    checkpoint = json.loads((tmp_path / "store.db.checkpoint").read_text())
    assert (checkpoint["seq"], checkpoint["hash"]) == (1, head.hash)
    assert (tmp_path / "store.db.key").exists()
