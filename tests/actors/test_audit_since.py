"""`audit(since=)` (a daemon's start refills its judged-id window from it) reads the recent
records from the log's tail: every record written at or after `since`, none before."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

from task_ingress.actors.storage.auditlog import SINCE_CLOCK_SLACK, read_records
from task_ingress.messages import CreateTask
from task_ingress.runtime import IngressRuntime

from tests.conftest import ctx, writer_card

NOW = 1_800_000_000.0


def _store_with_ten_records(make_runtime: Callable[..., IngressRuntime], path: Path,
                            ats: list[float]) -> sqlite3.Connection:
    rt = make_runtime(store_path=str(path))
    rt.greet("ws", "ops", writer_card("peer-a"))
    for i in range(len(ats)):
        rt.submit(ctx(f"r-{i}"), CreateTask(title="t"))
    rt.close()
    conn = sqlite3.connect(path)
    conn.executemany("UPDATE audit SET at = ? WHERE seq = ?",
                     [(at, seq) for seq, at in enumerate(ats, start=1)])
    conn.commit()
    return conn


def test_since_reads_every_record_at_or_after_it_even_when_the_clock_stepped_back(
        make_runtime: Callable[..., IngressRuntime], tmp_path: Path) -> None:
    ats = [NOW - 9000, NOW - 8000, NOW - 700, NOW - 650, NOW - 500,
           NOW - 20, NOW - 900,  # the clock set back 880 s between two records
           NOW - 10, NOW - 5, NOW]
    conn = _store_with_ten_records(make_runtime, tmp_path / "s.db", ats)
    got = [r.request_id for r in read_records(conn, since=NOW - 600)]
    assert got == ["r-4", "r-5", "r-7", "r-8", "r-9"]
    assert [r.request_id for r in read_records(conn)] == [f"r-{i}" for i in range(10)]
    assert read_records(conn, since=NOW + 1) == []


def _steps(conn: sqlite3.Connection, read: Callable[[], object]) -> int:
    """SQLite virtual-machine steps `read` takes (a progress handler called every step)."""
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    conn.set_progress_handler(count, 1)
    try:
        read()
    finally:
        conn.set_progress_handler(None, 1)
    return steps


def test_since_starts_from_the_tail_instead_of_scanning_the_whole_log(
        make_runtime: Callable[..., IngressRuntime], tmp_path: Path) -> None:
    conn = _store_with_ten_records(make_runtime, tmp_path / "s.db", [NOW] * 10)
    old = NOW - 10 * SINCE_CLOCK_SLACK  # 10,000 records of long ago before the recent ten
    conn.execute("UPDATE audit SET seq = seq + 10000")
    row = list(conn.execute("SELECT * FROM audit ORDER BY seq LIMIT 1").fetchone())
    at = [d[0] for d in conn.execute("SELECT * FROM audit LIMIT 0").description].index("at")
    marks = ",".join("?" * len(row))
    conn.executemany(f"INSERT INTO audit VALUES ({marks})",
                     ([seq, *row[1:at], old, *row[at + 1:]] for seq in range(1, 10_001)))
    conn.commit()
    assert conn.execute("SELECT COUNT(*) FROM audit").fetchone()[0] == 10_010
    recent = _steps(conn, lambda: read_records(conn, since=NOW - 60))
    scan = _steps(conn, lambda: conn.execute(
        "SELECT seq FROM audit WHERE at >= ? ORDER BY seq", (NOW - 60,)).fetchall())
    assert recent * 20 < scan  # from the tail, not through 10,000 old records
    assert [r.request_id for r in read_records(conn, since=NOW - 60)] == [
        f"r-{i}" for i in range(10)]
