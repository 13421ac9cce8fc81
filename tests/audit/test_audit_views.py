"""`task-ingress audit show | tail | export`: filters, follow mode, and JSON Lines an
operator can pipe into a log system (and re-verify)."""

from __future__ import annotations

import json
import os
import queue
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from task_ingress.actors.rules.chain import ChainKey, first_bad_record, genesis_hash
from task_ingress.messages import AuditRecord, CreateTask, PeerCard
from task_ingress.runtime import IngressRuntime, RuntimeConfig
from task_ingress.runtime.audit.query import BadQuery, make_filter, parse_time
from task_ingress.runtime.cli import app
from typer.testing import CliRunner

from tests.conftest import ctx, writer_card

runner = CliRunner(env={"COLUMNS": "250"})
SPEC_FIELDS = {"seq", "at", "workspace", "channel", "peer_id", "actor", "request_id", "action",
               "outcome", "reason", "task_id", "run_id", "payload_size", "prev_hash", "hash"}


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """Writes by two peers in two channels, with rejections of three kinds."""
    path = tmp_path / "store.db"
    with IngressRuntime(RuntimeConfig(store_path=str(path))) as rt:
        rt.greet("ws", "ops", writer_card("peer-a"))
        rt.greet("ws", "dev", writer_card("peer-b"))
        rt.greet("ws", "ops", PeerCard(peer_id="peer-r", capabilities=["task.read"]))
        rt.submit(ctx("a-1"), CreateTask(title="a one"))
        rt.submit(ctx("a-2"), CreateTask(title=""))  # validation_failed
        rt.submit(ctx("b-1", peer="peer-b", channel="dev"), CreateTask(title="b one"))
        rt.submit(ctx("r-1", peer="peer-r"), CreateTask(title="no"))  # capability_denied
        rt.submit(ctx("z-1", peer="peer-z"), CreateTask(title="no"))  # peer_not_found
    return path


def invoke(*args: str) -> str:
    result = runner.invoke(app, ["audit", *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_show_filters_by_peer_channel_reason_and_outcome(store: Path) -> None:
    out = invoke("show", "--store", str(store), "--peer", "peer-b")
    assert "b-1" in out and "a-1" not in out and "1 record(s)" in out
    out = invoke("show", "--store", str(store), "--channel", "ops", "--outcome", "rejected")
    assert "a-2" in out and "r-1" in out and "z-1" in out and "a-1 " not in out
    assert "3 record(s)" in out
    out = invoke("show", "--store", str(store), "--reason", "capability_denied")
    assert "r-1" in out and "1 record(s)" in out
    out = invoke("show", "--store", str(store), "--workspace", "elsewhere")
    assert "0 record(s)" in out


def test_show_filters_by_time_range(store: Path) -> None:
    assert "5 record(s)" in invoke("show", "--store", str(store), "--since", "1h")
    assert "0 record(s)" in invoke("show", "--store", str(store), "--until", "1h")
    future = str(time.time() + 3600)
    assert "0 record(s)" in invoke("show", "--store", str(store), "--since", future)
    assert "5 record(s)" in invoke("show", "--store", str(store), "--until", future)


def test_tail_prints_the_newest_records_in_order(store: Path) -> None:
    lines = invoke("tail", "--store", str(store), "-n", "2").strip().splitlines()
    assert len(lines) == 2
    assert "#4 " in lines[0] and "capability_denied" in lines[0]
    assert "#5 " in lines[1] and "peer_not_found" in lines[1]


def test_export_writes_one_spec_record_per_line_that_reverifies(store: Path) -> None:
    lines = invoke("export", "--store", str(store)).strip().splitlines()
    assert len(lines) == 5
    dicts = [json.loads(line) for line in lines]
    assert all(set(d) >= SPEC_FIELDS for d in dicts)
    records = [AuditRecord.model_validate(d, strict=False) for d in dicts]
    assert [r.seq for r in records] == [1, 2, 3, 4, 5]
    # The export carries everything the chain needs; checking it takes the key, and the
    # store's id for the genesis hash (`audit head` prints it).
    key = ChainKey.from_hex(Path(f"{store}.key").read_text())
    conn = sqlite3.connect(store)
    store_id = conn.execute("SELECT value FROM meta WHERE key = 'store_id'").fetchone()[0]
    conn.close()
    assert first_bad_record(records, key.seal, genesis_hash(store_id)) is None
    edited = [records[0], records[1].model_copy(update={"peer_id": "peer-x"}), *records[2:]]
    assert first_bad_record(edited, key.seal, genesis_hash(store_id)) == (
        2, "hash does not match the record's contents")


def test_export_to_a_file_with_filters(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "rejected.jsonl"
    invoke("export", "--store", str(store), "--outcome", "rejected", "-o", str(out))
    reasons = [json.loads(line)["reason"] for line in out.read_text().splitlines()]
    assert reasons == ["validation_failed", "capability_denied", "peer_not_found"]


def test_tail_follow_prints_records_written_after_it_started(store: Path) -> None:
    env = dict(os.environ, TASK_INGRESS_LOG_LEVEL="warning")
    proc = subprocess.Popen(
        [sys.executable, "-m", "task_ingress", "audit", "tail", "--store", str(store), "-n", "1",
         "-f", "--for", "120", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
    )
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    reader = threading.Thread(target=lambda out: [lines.put(line) for line in out],
                              args=(proc.stdout,), daemon=True)
    reader.start()
    try:
        first = json.loads(lines.get(timeout=30))  # the existing head: tail is running
        assert first["seq"] == 5
        with IngressRuntime(RuntimeConfig(store_path=str(store))) as rt:
            rt.greet("ws", "ops", writer_card("peer-a"))
            rt.submit(ctx("late-1"), CreateTask(title="late"))
            rt.submit(ctx("late-2"), CreateTask(title="later"))
        followed = [json.loads(lines.get(timeout=30)) for _ in range(2)]
    finally:
        proc.kill()  # followed what it had to; --for 120 only bounds a hung test
        proc.wait(timeout=10)
        reader.join(timeout=10)
        proc.stdout.close()
    assert [(r["seq"], r["request_id"]) for r in followed] == [(6, "late-1"), (7, "late-2")]
    assert lines.empty()


def test_tail_follow_stops_by_itself_after_for_seconds(store: Path) -> None:
    result = runner.invoke(app, ["audit", "tail", "--store", str(store), "-n", "1", "-f",
                                 "--for", "0.1"])
    assert result.exit_code == 0 and "#5 " in result.output


def test_commands_exit_2_on_a_missing_store(tmp_path: Path) -> None:
    for command in ("show", "tail", "export"):
        result = runner.invoke(app, ["audit", command, "--store", str(tmp_path / "none.db")])
        assert result.exit_code == 2, command


@pytest.mark.parametrize(("text", "expected"), [
    ("1700000000.5", 1700000000.5),
    ("2023-11-14T22:13:20", 1700000000.0),
    ("2023-11-14T22:13:20Z", 1700000000.0),
    ("2023-11-14T23:13:20+01:00", 1700000000.0),
    ("90s", 1000.0 - 90),
    ("15m", 1000.0 - 900),
    ("2h", 1000.0 - 7200),
    ("1d", 1000.0 - 86400),
])
def test_time_options_accept_iso_unix_and_ages(text: str, expected: float) -> None:
    assert parse_time(text, now=1000.0) == pytest.approx(expected)


def test_query_values_that_cannot_be_used_raise_bad_query_not_a_cli_error() -> None:
    with pytest.raises(BadQuery, match="not a time"):
        parse_time("yesterday")
    with pytest.raises(BadQuery, match="--outcome"):
        make_filter(outcome="maybe")
    assert make_filter(outcome="rejected", since="1700000000").since == 1700000000.0


def test_a_bad_time_option_is_a_usage_error_exit_2(store: Path) -> None:
    result = runner.invoke(app, ["audit", "show", "--store", str(store), "--since", "soon"])
    assert result.exit_code == 2 and "not a time: 'soon'" in result.output
