"""SPEC §9's exit codes, as a user meets them: 0 ok, 1 the checked thing failed, 2 usage
error or could not start (one line, never a traceback, nothing left behind), 130
interrupted. Each command runs as `python -m task_ingress` in a fresh directory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import typer
from task_ingress.runtime import IngressRuntime, RuntimeConfig
from task_ingress.runtime.cli_exit import BUG_LINE, run
from task_ingress.runtime.errors import RuntimeStartError
from task_ingress.runtime.nats.identity import generate_key, save_key
from task_ingress.runtime.nats.ready import ReadyInfo, write_ready_file
from task_ingress.runtime.nats.server import NatsServer
from task_ingress.runtime.preflight import ACTOR_BASES

from task_ingress import __version__
from tests.runtime.cli_support import (
    cli,
    mode_bits_bind_root,
    one_line,
    read_only_dir,
    user_env,
)


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """An empty working directory: after a refused command it must still be empty."""
    directory = tmp_path / "work"
    directory.mkdir()
    return directory


def test_swarm_with_an_unknown_actor_base_lists_the_valid_ones_in_one_line(work: Path) -> None:
    result = cli("swarm", "--actor-base", "bogus", "--no-progress", cwd=work)
    assert result.returncode == 2, result.stderr
    line = one_line(result.stderr)
    assert "'bogus'" in line and all(base in line for base in ACTOR_BASES)
    assert result.stdout == "" and list(work.iterdir()) == []


def test_serve_with_an_unknown_actor_base_is_a_usage_error(work: Path) -> None:
    result = cli("serve", "--actor-base", "bogus", cwd=work, timeout=30)
    assert result.returncode == 2, result.stderr
    assert all(base in one_line(result.stderr) for base in ACTOR_BASES)
    assert list(work.iterdir()) == []


@pytest.mark.parametrize("command", [
    ["swarm", "--requests", "20", "--no-progress"],
    ["swarm", "--requests", "20", "--no-progress", "--process-mode", "pipeline"],
    ["serve"],
    ["serve", "--process-mode", "pipeline"],
    ["demo"],
], ids=["swarm", "swarm pipeline", "serve", "serve pipeline", "demo"])
def test_a_store_in_a_read_only_directory_is_one_line_and_leaves_nothing_behind(
        work: Path, tmp_path: Path, command: list[str]) -> None:
    ro = read_only_dir(tmp_path)
    if ro is None:
        pytest.skip("this machine cannot make a directory read-only for this user")
    result = cli(*command, "--store", str(ro / "store.db"), cwd=work, timeout=30,
                 preexec=mode_bits_bind_root)
    assert result.returncode == 2, result.stdout + result.stderr
    line = one_line(result.stderr)
    assert "--store" in line and "cannot write" in line
    assert list(ro.iterdir()) == [] and list(work.iterdir()) == []


@pytest.mark.parametrize("argv", [
    ["swarm", "--requests", "many"],
    ["swarm", "--no-such-option"],
    ["swarm", "--concurrency", "0"],
    ["swarm", "--transport", "carrier-pigeon"],
    ["swarm", "--daemon", "no-such-ready-file.json"],
    ["swarm", "--json", "no-such-dir/deeper/report.json"],
    ["swarm", "--store", "no-such-dir/store.db"],
    ["bench", "--systems", "runtime-simple,nope"],
    ["bench", "--json", "no-such-dir/deeper/bench.json"],
    ["serve", "--workspace", "Not A Workspace"],
    ["serve", "--log-level", "loud"],
    ["--log-level", "loud", "demo"],
    ["--log-format", "xml", "demo"],
    ["demo", "--store", "no-such-dir/store.db"],
    ["serve", "--key-file", "no-such-dir/daemon.key"],
    ["keygen"],
    ["keygen", "--out", "k.key", "--nickname", "Not Valid"],
    ["keygen", "--out", "no-such-dir/k.key"],
    ["trust", "list"],
    ["trust", "add", "not-a-handle", "--trust-file", "trust.json"],
    ["trust", "list", "--daemon", "no-such-ready-file.json"],
    ["request", "create", "--daemon", "no-such-ready-file.json", "--key", "k.key",
     "--channel", "ops", "--title", "t"],
    ["request", "create", "--channel", "ops"],
    ["no-such-command"],
    ["audit", "verify"],
    ["audit", "show", "--store", "s.db", "-n", "abc"],
    ["audit", "export", "--store"],
], ids=lambda argv: " ".join(argv))
def test_a_usage_error_is_one_line_and_exit_2_never_1(work: Path, argv: list[str]) -> None:
    result = cli(*argv, cwd=work, timeout=30)
    assert result.returncode == 2, result.stdout + result.stderr
    line = one_line(result.stderr)
    assert line.startswith("task-ingress") and "Traceback" not in result.stderr
    assert list(work.iterdir()) == []


NO_DATABASE = "postgresql://nobody@127.0.0.1:1/none"
"""A PostgreSQL URL nothing answers at (port 1): no server is needed to meet these errors."""
AUDIT = {"TASK_INGRESS_AUDIT_KEY": "ab" * 32}
CLUSTER = ["serve", "--cluster", "--database", NO_DATABASE, "--nats-url", "nats://127.0.0.1:1"]


@pytest.mark.parametrize(("argv", "env"), [
    (["serve", "--cluster"], {}),
    (["serve", "--cluster", "--database", NO_DATABASE], {}),
    ([*CLUSTER, "--key-file", "{key}"], {}),
    ([*CLUSTER, "--key-file", "{key}"], {"TASK_INGRESS_AUDIT_KEY": "zz"}),
    (CLUSTER, AUDIT),
    ([*CLUSTER, "--key-file", "no-such-dir/cluster.key"], AUDIT),
    ([*CLUSTER, "--key-file", "{not_a_key}"], AUDIT),
    ([*CLUSTER, "--key-file", "{key}"], AUDIT),  # nothing answers at the database URL
    ([*CLUSTER, "--key-file", "{key}", "--lease-ttl", "-1"], AUDIT),
    ([*CLUSTER, "--key-file", "{key}", "--shards", "0"], AUDIT),
    ([*CLUSTER, "--key-file", "{key}", "--actor-base", "bogus"], AUDIT),
    ([*CLUSTER, "--key-file", "{key}", "--workspace", "Not A Workspace"], AUDIT),
    ([*CLUSTER, "--key-file", "{key}", "--ready-file", "no-such-dir/r.json"], AUDIT),
    (["serve", "--shards", "4"], {}),
    (["serve", "--process-mode", "bogus"], {}),
    (["trust", "list", "--database", NO_DATABASE], {}),
    (["trust", "add", "a@" + "0" * 32, "--database", NO_DATABASE], {}),
    (["trust", "add", "a@" + "0" * 32, "--database", NO_DATABASE, "--trust-file", "t.json"],
     {}),
    (["audit", "verify", "--database", NO_DATABASE], AUDIT),
    (["audit", "verify", "--database", NO_DATABASE, "--key", "zz"], {}),
    (["audit", "verify", "--database", NO_DATABASE, "--store", "s.db"], AUDIT),
    (["audit", "show", "--database", NO_DATABASE, "--reason", "peer_not_fond"], AUDIT),
    (["audit", "show", "--database", NO_DATABASE], AUDIT),
    (["audit", "head", "--database", NO_DATABASE], AUDIT),
    (["cluster", "status"], {}),
    (["cluster", "status", "--database", NO_DATABASE], {}),
    (["bench", "--cluster"], {}),
    (["bench", "--cluster", "--database", NO_DATABASE], {}),
    (["bench", "--cluster", "--database", NO_DATABASE, "--daemons", "0"], {}),
    (["bench", "--cluster", "--database", NO_DATABASE, "--systems", "baseline"], {}),
    (["bench", "--daemons", "2"], {}),
    (["swarm", "--process-mode", "bogus"], {}),
    (["swarm", "--process-mode", "pipeline", "--actor-base", "multiprocQueueBase"], {}),
    (["swarm", "--process-mode", "pipeline", "--store", "no-such-dir/s.db"], {}),
    (["swarm", "--process-mode", "pipeline", "--transport", "nats", "--nats-url",
      "nats://127.0.0.1:1"], {}),
    (["swarm", "--transport", "nats", "--nats-url", "nats://127.0.0.1:1"], {}),
    (["keygen", "--out", "{key}"], {}),
    (["request", "create", "--daemon", "{not_a_key}", "--key", "{key}", "--channel", "ops",
      "--title", "t"], {}),
    (["request", "create", "--daemon", "no-such-ready-file.json", "--key", "{not_a_key}",
      "--channel", "ops", "--title", "t"], {}),
], ids=lambda value: " ".join(value) if isinstance(value, list) else
    ",".join(f"{k}={v[:4]}" for k, v in value.items()))
def test_a_usage_error_of_cluster_mode_and_the_newer_options_is_one_line_and_exit_2(
        work: Path, tmp_path: Path, argv: list[str], env: dict[str, str]) -> None:
    # Each of these ended in a traceback or a daemon retrying forever before it was checked.
    key, not_a_key = tmp_path / "cluster.key", tmp_path / "not-a.key"
    save_key(str(key), generate_key())
    not_a_key.write_text("not a key\n")
    not_a_key.chmod(0o600)
    args = [a.format(key=key, not_a_key=not_a_key) for a in argv]
    result = cli(*args, cwd=work, timeout=60, env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    line = one_line(result.stderr)
    assert "Traceback" not in result.stderr
    # `audit`'s own errors read `error: …` (docs/operating.md#exit-codes-of-task-ingress-audit)
    assert line.startswith("task-ingress " + argv[0]) or (
        argv[0] == "audit" and line.startswith("error: ")), line
    if argv[0] == "swarm" and "--process-mode" in argv:
        assert "--process-mode" in line or "--store" in line, line
    if argv[:3] == ["swarm", "--transport", "nats"]:
        assert "needs --daemon READY_FILE" in line, line
    assert list(work.iterdir()) == []
    assert key.read_bytes() and not_a_key.read_text() == "not a key\n"


@pytest.mark.parametrize("argv", [
    ["--help"], ["swarm", "--help"], ["serve", "--help"], ["demo", "--help"],
    ["bench", "--help"], ["audit", "verify", "--help"], ["keygen", "--help"],
    ["trust", "add", "--help"], ["request", "create", "--help"],
    ["cluster", "status", "--help"], ["audit", "show", "--help"], ["audit", "head", "--help"],
    ["trust", "list", "--help"], ["request", "enqueue", "--help"],
], ids=lambda argv: " ".join(argv))
def test_help_has_no_type_placeholders_on_flags(work: Path, argv: list[str]) -> None:
    result = cli(*argv, cwd=work)
    assert result.returncode == 0, result.stderr
    assert "Usage: task-ingress" in result.stdout
    assert "<bool>" not in result.stdout


def test_version_prints_the_installed_version(work: Path) -> None:
    result = cli("--version", cwd=work)
    assert result.returncode == 0
    assert result.stdout == f"task-ingress {__version__}\n"


def test_a_bug_prints_its_traceback_and_says_it_is_a_bug_with_exit_1(
        capsys: pytest.CaptureFixture[str]) -> None:
    app = typer.Typer()

    @app.command()
    def boom() -> None:
        raise ZeroDivisionError("a bug")

    assert run(app, []) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "ZeroDivisionError: a bug" in err
    assert err.strip().splitlines()[-1] == BUG_LINE


def test_a_runtime_that_cannot_start_is_one_line_and_exit_2(
        capsys: pytest.CaptureFixture[str]) -> None:
    app = typer.Typer()

    @app.command()
    def start() -> None:
        raise RuntimeStartError("store: unable to open database file")

    assert run(app, []) == 2
    err = capsys.readouterr().err
    assert one_line(err) == "task-ingress: could not start: store: unable to open database file"


def _ready_file(path: Path, *, pid: int, nats_url: str, token: str, store: Path) -> Path:
    write_ready_file(str(path), ReadyInfo(
        nats_url=nats_url, pid=pid, trust_file=str(path.parent / "trust.json"),
        credentials={"token": token} if token else {}, store=str(store),
        workspace="default", daemon_peer_id="task-ingress", daemon_route_token="none",
        daemon_handle="task-ingress@" + "0" * 32, daemon_fingerprint="0" * 32,
        daemon_public_key="none", greet_interval=1.0))
    return path


def test_swarm_at_a_stale_ready_file_names_the_dead_pid_at_once(work: Path,
                                                                  tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    ready = _ready_file(tmp_path / "daemon.json", pid=gone.pid, nats_url="nats://127.0.0.1:1",
                        token="", store=tmp_path / "store.db")
    started = time.monotonic()
    result = cli("swarm", "--daemon", str(ready), "--no-progress", cwd=work, timeout=30)
    assert result.returncode == 2, result.stdout + result.stderr
    line = one_line(result.stderr)
    assert f"the daemon in {ready} (pid {gone.pid}) is not running" in line
    assert time.monotonic() - started < 15  # it did not wait for an answer first
    assert list(work.iterdir()) == []


def test_a_request_at_a_stale_ready_file_names_the_dead_pid_at_once(work: Path,
                                                                    tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    ready = _ready_file(tmp_path / "daemon.json", pid=gone.pid, nats_url="nats://127.0.0.1:1",
                        token="", store=tmp_path / "store.db")
    key = tmp_path / "k.key"
    assert cli("keygen", "--out", str(key), cwd=tmp_path).returncode == 0
    result = cli("request", "create", "--daemon", str(ready), "--key", str(key), "--channel",
                 "ops", "--title", "t", "--timeout", "30", cwd=work, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    line = one_line(result.stderr)
    assert line.startswith("task-ingress request create: ")
    assert f"the daemon in {ready} (pid {gone.pid}) is not running" in line
    assert result.stdout == "" and list(work.iterdir()) == []


@pytest.mark.parametrize("argv", [
    ["swarm", "--daemon", "{ready}", "--no-progress"],
    ["trust", "list", "--daemon", "{ready}"],
    ["trust", "add", "--key", "{key}", "--daemon", "{ready}"],
], ids=["swarm", "trust list", "trust add"])
def test_a_cluster_daemons_ready_file_where_a_single_daemons_is_needed_is_one_line_and_exit_2(
        work: Path, tmp_path: Path, argv: list[str]) -> None:
    # The swarm used to run, enrol its peers in a trust file no cluster daemon reads, and
    # fail (exit 1) on a store file it could not find; trust add failed on an empty path.
    ready = _ready_file(tmp_path / "node.json", pid=os.getpid(), nats_url="nats://127.0.0.1:1",
                        token="t", store=tmp_path / "store.db")
    info = json.loads(ready.read_text())
    ready.write_text(json.dumps({**info, "trust_file": "", "node_id": "node-7", "shards": 4}))
    key = tmp_path / "k.key"
    save_key(str(key), generate_key())
    result = cli(*[a.format(ready=ready, key=key) for a in argv], cwd=work, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    line = one_line(result.stderr)
    assert line.startswith(f"task-ingress {argv[0]}")
    assert "cluster node node-7" in line and "Traceback" not in result.stderr
    assert list(work.iterdir()) == []


def test_a_swarm_that_sent_nothing_fails_with_exit_1(work: Path, tmp_path: Path) -> None:
    # A NATS server with no daemon behind it (the store is there, the daemon answers
    # nothing): every greet fails, so no request is sent and every invariant holds vacuously.
    store = tmp_path / "store.db"
    with IngressRuntime(RuntimeConfig(store_path=str(store))):
        pass
    server = NatsServer().start()
    try:
        ready = _ready_file(tmp_path / "daemon.json", pid=os.getpid(), nats_url=server.url,
                            token=server.token, store=store)
        result = cli("swarm", "--daemon", str(ready), "--duration", "2", "--peers", "4",
                     "--no-progress", "--json", "report.json", "--plot", "", cwd=work,
                     timeout=60)
    finally:
        server.stop()
    assert result.returncode == 1, result.stdout + result.stderr
    assert "no request was sent" in result.stderr
    assert "every invariant held" not in result.stdout
    report = json.loads((work / "report.json").read_text())
    assert report["requests"] == 0 and report["ok"] is False
    assert report["presence"]["greets"] == 0 and report["presence"]["failed"] > 0
    assert all(report["invariants"].values())  # nothing to break: the run itself failed


def test_ctrl_c_during_a_swarm_reports_what_was_sent_and_exits_130(work: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "task_ingress", "swarm", "--requests", "1000000",
         "--duration", "120", "--no-progress", "--ack-log", "acks.jsonl", "--json",
         "report.json", "--plot", ""],
        cwd=work, env=user_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        acks = work / "acks.jsonl"
        deadline = time.monotonic() + 60
        while not acks.exists() or len(acks.read_text().splitlines()) < 50:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the swarm never got going"
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 130, out + err
    report = json.loads((work / "report.json").read_text())
    assert report["interrupted"] is True and 0 < report["requests"] < 1_000_000
    assert f"interrupted after {report['requests']:,} of 1,000,000 requests" in err
    assert "every invariant held" not in out
    # What was sent before the interrupt is still checked, and it holds.
    assert all(report["invariants"].values()), report["invariant_details"]
