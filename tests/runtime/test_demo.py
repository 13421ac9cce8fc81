"""`task-ingress demo` shows every outcome, each on one line at 80 columns, and checks
them; a kept store verifies afterwards."""

from __future__ import annotations

import glob
import io
import os
import sqlite3
import tempfile
from pathlib import Path

from rich.console import Console
from task_ingress.messages import Reason
from task_ingress.runtime.audit.verify import verify_store
from task_ingress.runtime.demo import run_demo


def _run(store: str = ":memory:") -> tuple[int, str]:
    out = io.StringIO()
    status = run_demo(store, Console(file=out, width=80, force_terminal=False,
                                     color_system=None))
    return status, out.getvalue()


def _step_lines(text: str) -> list[str]:
    table = text.split("audit tail")[0]
    return [line for line in table.splitlines() if line.startswith("│")]


def test_the_demo_shows_every_reason_and_a_replay_one_line_each() -> None:
    leftovers = set(glob.glob(os.path.join(tempfile.gettempdir(), "task-ingress-demo-*")))
    status, text = _run()
    assert status == 0, text
    lines = _step_lines(text)
    for i, line in enumerate(lines, 1):  # no step wrapped onto a second line
        assert line.split("│")[1].strip() == str(i), line
    outcomes = [line.split("│")[4].strip() for line in lines]
    assert set(outcomes) == {r.value for r in Reason} | {"accepted", "accepted (replay)"}
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "temp store removed" in text
    now = set(glob.glob(os.path.join(tempfile.gettempdir(), "task-ingress-demo-*")))
    assert now <= leftovers


def test_a_kept_demo_store_verifies_and_keeps_no_trigger(tmp_path: Path) -> None:
    store = str(tmp_path / "demo.db")
    status, text = _run(store)
    assert status == 0, text
    assert f"task-ingress audit verify --store {store}" in text
    result = verify_store(store)
    assert result.ok, result.problems
    conn = sqlite3.connect(store)
    try:
        assert conn.execute("SELECT COUNT(*) FROM sqlite_master WHERE type = 'trigger'"
                            ).fetchone() == (0,)
    finally:
        conn.close()
