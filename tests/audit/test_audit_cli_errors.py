"""Issue 14, the `audit` rows: SPEC §9 exit codes of the real command (0 ok, 1 the log failed
verification — real tampering only —, 2 usage error or a store that cannot be read, 130
interrupted). Every user error is one line on stderr naming the problem and what to do,
never a traceback; `audit show` piped fits 80 columns without breaking a word."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from task_ingress.messages import CreateTask, EnqueueRun, PeerCard
from task_ingress.runtime import IngressRuntime, RuntimeConfig

from tests.conftest import ctx, writer_card

LONG_RID = "req-3f2a9c1e-7b4d-4e21-9c55-0a1b2c3d4e5f"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "store.db"
    env_key = os.environ.pop("TASK_INGRESS_AUDIT_KEY", None)
    try:
        with IngressRuntime(RuntimeConfig(store_path=str(path))) as rt:
            rt.greet("ws", "operations", writer_card("peer-alpha"))
            rt.greet("ws", "operations", PeerCard(peer_id="peer-read",
                                                  capabilities=["task.read"]))
            task = rt.submit(ctx(LONG_RID, peer="peer-alpha", channel="operations"),
                             CreateTask(title="one")).task_id
            rt.submit(ctx("r-2", peer="peer-alpha", channel="operations"),
                      EnqueueRun(task_id=task or "", idempotency_key="k"))
            rt.submit(ctx("r-3", peer="peer-read", channel="operations"),
                      CreateTask(title="no"))
            rt.submit(ctx("r-4", peer="peer-ghost", channel="operations"),
                      CreateTask(title="no"))
    finally:
        if env_key is not None:
            os.environ["TASK_INGRESS_AUDIT_KEY"] = env_key
    yield path


def audit(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real command, piped, as a script or a monitor runs it."""
    base = {k: v for k, v in os.environ.items()
            if k not in ("COLUMNS", "LINES", "TASK_INGRESS_AUDIT_KEY")}
    base["TASK_INGRESS_LOG_LEVEL"] = "warning"
    return subprocess.run([sys.executable, "-m", "task_ingress", "audit", *args],
                          capture_output=True, text=True, timeout=120,
                          env=base | (env or {}))


def assert_usage_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr and "FAILED" not in result.stdout
    for word in words:
        assert word in lines[0], lines[0]


def test_a_key_that_is_not_hex_is_a_usage_error_never_tampering(store: Path) -> None:
    assert_usage_error(audit("verify", "--store", str(store), "--key", "zz"),
                       "--key must be the audit key in hex")
    assert_usage_error(audit("head", "--store", str(store), "--key", "zz"), "--key")
    assert_usage_error(audit("verify", "--store", str(store),
                             env={"TASK_INGRESS_AUDIT_KEY": "zz"}),
                       "$TASK_INGRESS_AUDIT_KEY must be the audit key in hex")


def test_the_honest_store_verifies_exit_0_and_tampering_exits_1(store: Path) -> None:
    ok = audit("verify", "--store", str(store))
    assert ok.returncode == 0 and ok.stdout.strip().splitlines()[-1] == "4"
    os.remove(f"{store}.checkpoint")
    bad = audit("verify", "--store", str(store))
    assert bad.returncode == 1 and "FAILED: checkpoint" in bad.stdout


@pytest.mark.parametrize("command", ["show", "tail", "export"])
def test_an_unknown_reason_is_a_usage_error_suggesting_the_nearest(store: Path, command: str
                                                                   ) -> None:
    assert_usage_error(audit(command, "--store", str(store), "--reason", "peer_not_fond"),
                       "--reason 'peer_not_fond' is not a known code",
                       "did you mean peer_not_found?")


def test_an_unknown_action_or_reason_far_from_any_lists_the_codes(store: Path) -> None:
    assert_usage_error(audit("show", "--store", str(store), "--action", "task.creat"),
                       "did you mean task.create?")
    assert_usage_error(audit("show", "--store", str(store), "--reason", "zzz"),
                       "use one of channel_mismatch, stale_channel,", "overloaded")


@pytest.mark.parametrize(("args", "words"), [
    (("show", "-n", "-3"), ("-n/--limit must be 0 or more, got -3",)),
    (("tail", "-n", "-3"), ("-n/--lines must be 0 or more, got -3",)),
    (("tail", "-f", "--for", "-1"), ("--for must be 0 or more",)),
    (("show", "--since", "1h", "--until", "2h"), ("is after --until", "swap them")),
    (("show", "--since", "soon"), ("not a time: 'soon'",)),
    (("verify", "--expect-seq", "-1"), ("--expect-seq must be 0 or more",)),
    (("verify", "--expect-head", "nope"), ("--expect-head must be a record hash",)),
])
def test_ranges_and_values_that_cannot_be_used_are_usage_errors(
    store: Path, args: tuple[str, ...], words: tuple[str, ...]
) -> None:
    assert_usage_error(audit(args[0], "--store", str(store), *args[1:]), *words)


def test_export_to_a_missing_directory_is_one_line_exit_2(store: Path, tmp_path: Path) -> None:
    target = tmp_path / "missing" / "dir" / "x.jsonl"
    assert_usage_error(audit("export", "--store", str(store), "-o", str(target)),
                       f"cannot write {target}: No such file or directory",
                       "check that its directory exists")


@pytest.mark.parametrize("command", ["verify", "head", "show", "tail", "export"])
def test_a_path_that_is_no_store_is_a_usage_error(tmp_path: Path, command: str) -> None:
    empty = tmp_path / "empty.db"
    empty.touch()
    assert_usage_error(audit(command, "--store", str(empty)), "is an empty file")
    assert_usage_error(audit(command, "--store", str(tmp_path)), "is a directory")
    assert_usage_error(audit(command, "--store", str(tmp_path / "none.db")), "no store file")
    assert not (tmp_path / "none.db").exists()


def test_show_piped_fits_80_columns_and_breaks_no_word(store: Path) -> None:
    result = audit("show", "--store", str(store))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    table = lines[1:-1]  # the title names the store's path, which may be longer
    assert table and all(len(line) <= 80 for line in table), table
    export = audit("export", "--store", str(store)).stdout
    records = [json.loads(line) for line in export.splitlines()]
    words = {"task.create", "task.run.enqueue", "capability_denied", "peer_not_found",
             f"req={LONG_RID}", "peer-alpha", "ws/operations"}
    words |= {f"task={r['task_id']}" for r in records if r["task_id"]}
    words |= {f"run={r['run_id']}" for r in records if r["run_id"]}
    for word in words:
        assert any(word in line for line in table), (word, table)
    assert lines[-1] == "4 record(s)"


def test_show_is_as_wide_as_the_terminal_says(store: Path) -> None:
    wide = audit("show", "--store", str(store), env={"COLUMNS": "200"}).stdout.splitlines()
    narrow = audit("show", "--store", str(store)).stdout.splitlines()
    assert len(wide) < len(narrow)  # details fold less when there is room


def test_tail_follow_interrupted_exits_130(store: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TASK_INGRESS_AUDIT_KEY"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "task_ingress", "audit", "tail", "--store", str(store), "-n", "1",
         "-f", "--for", "120"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=env | {"TASK_INGRESS_LOG_LEVEL": "warning"},
    )
    try:
        assert proc.stdout is not None
        assert "#4 " in proc.stdout.readline()  # it is following
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def test_a_reader_that_goes_away_is_no_failure(store: Path) -> None:
    base = {k: v for k, v in os.environ.items() if k != "TASK_INGRESS_AUDIT_KEY"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "task_ingress", "audit", "export", "--store", str(store)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=base | {"TASK_INGRESS_LOG_LEVEL": "warning"}, bufsize=0,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # as `| head -0` would: every write now fails with EPIPE
    assert proc.wait(timeout=60) == 0
    assert "Traceback" not in proc.stderr.read()
    proc.stderr.close()
