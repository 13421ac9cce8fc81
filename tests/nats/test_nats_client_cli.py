"""`task-ingress keygen`, `trust add|remove|list` and `request ...` against a served daemon,
as an outside script calls them (SPEC 9): output, exit codes, no restart for policy edits."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path

from task_ingress.runtime.cli import app
from typer.testing import CliRunner

from tests.nats.conftest import RunningDaemon

Start = Callable[..., RunningDaemon]


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout


def test_keygen_writes_a_private_key_and_prints_the_handle_last(tmp_path: Path) -> None:
    key = tmp_path / "alice.key"
    code, out = _run("keygen", "--out", str(key), "--nickname", "alice")
    assert code == 0
    handle = out.strip().splitlines()[-1]
    nickname, fingerprint = handle.split("@")
    assert nickname == "alice" and len(fingerprint) == 32
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert _run("keygen", "--out", str(key))[0] == 2  # never overwrites a key
    assert _run("keygen", "--out", str(tmp_path / "b.key"), "--nickname", "Bad!")[0] == 2


def test_request_is_denied_until_trust_add_then_every_action_works(
        start_daemon: Start, tmp_path: Path) -> None:
    d = start_daemon()
    ready = d.daemon.settings.ready_file
    key = str(tmp_path / "k.key")
    handle = _run("keygen", "--out", key, "--nickname", "ops-bot")[1].strip().splitlines()[-1]
    common = ("--daemon", ready, "--key", key, "--channel", "ops")

    code, out = _run("request", "create", *common, "--title", "Ship it")
    denied = json.loads(out)
    assert code == 1 and denied["accepted"] is False
    assert denied["reason"] == "capability_denied"
    assert set(denied) == {"accepted", "reason", "task_id", "run_id", "request_id"}

    assert _run("trust", "add", handle, "--daemon", ready)[0] == 0
    assert _run("trust", "list", "--daemon", ready)[1].split() == [handle]
    code, out = _run("request", "create", *common, "--title", "Ship it",
                     "--network-channel", "ops", "--request-id", "r-1")
    created = json.loads(out)
    assert code == 0 and created["accepted"] is True and created["request_id"] == "r-1"
    task_id = created["task_id"]
    assert _run("request", "update", *common, "--task-id", task_id, "--title", "v2")[0] == 0
    code, out = _run("request", "enqueue", *common, "--task-id", task_id,
                     "--idempotency-key", "k-1")
    assert code == 0 and json.loads(out)["run_id"]
    assert _run("request", "cancel", *common, "--task-id", task_id, "--reason", "done")[0] == 0
    task = d.runtime.get_task("default", task_id)
    assert task is not None and task.status == "canceled" and task.title == "v2"
    assert {r.peer_id for r in d.runtime.audit()} == {handle}

    assert _run("trust", "remove", handle, "--trust-file", d.info.trust_file)[0] == 0
    assert _run("trust", "list", "--trust-file", d.info.trust_file)[1] == ""
    code, out = _run("request", "create", *common, "--title", "again")
    assert code == 1 and json.loads(out)["reason"] == "capability_denied"


def test_usage_and_connection_errors_exit_2(tmp_path: Path) -> None:
    key = str(tmp_path / "k.key")
    _run("keygen", "--out", key)
    assert _run("trust", "add", "not-a-handle", "--trust-file", str(tmp_path / "t"))[0] == 2
    assert _run("trust", "list")[0] == 2  # neither --trust-file nor --daemon
    missing = str(tmp_path / "missing.json")
    assert _run("request", "create", "--daemon", missing, "--key", key, "--channel", "ops",
                "--title", "t")[0] == 2
    stale = tmp_path / "stale.json"
    stale.write_text(json.dumps({
        "nats_url": "nats://127.0.0.1:1", "pid": 1, "trust_file": "t", "store": "s",
        "workspace": "default", "daemon_peer_id": "task-ingress", "daemon_route_token": "x",
        "daemon_handle": "task-ingress@" + "0" * 32, "daemon_fingerprint": "0" * 32,
        "daemon_public_key": "x", "greet_interval": 30.0}))
    assert _run("request", "create", "--daemon", str(stale), "--key", key, "--channel", "ops",
                "--title", "t", "--timeout", "1")[0] == 2
