"""docs/task-ingress.service says what docs/operating.md promises, and runs a real command."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

from task_ingress.runtime.cli_exit import EXIT_USAGE

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _unit() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in (DOCS / "task-ingress.service").read_text(encoding="utf-8").splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_the_unit_restarts_on_failure_but_not_when_serve_could_not_start() -> None:
    unit = _unit()
    assert unit["Restart"] == ["on-failure"]
    assert unit["RestartPreventExitStatus"] == [str(EXIT_USAGE)]
    assert unit["KillSignal"] == ["SIGTERM"] and unit["KillMode"] == ["mixed"]


def test_the_units_command_uses_real_serve_options_and_the_runtime_directory() -> None:
    unit = _unit()
    (command,) = unit["ExecStart"]
    argv = shlex.split(command)
    assert argv[0].endswith("/task-ingress") and argv[1] == "serve"
    options = [a for a in argv[2:] if a.startswith("--")]
    help_text = subprocess.run([sys.executable, "-m", "task_ingress", "serve", "--help"],
                               capture_output=True, text=True, timeout=60).stdout
    assert options and all(o in help_text for o in options)
    ready = argv[argv.index("--ready-file") + 1]
    assert ready.startswith(f"/run/{unit['RuntimeDirectory'][0]}/")
    store = argv[argv.index("--store") + 1]
    assert store.startswith(f"/var/lib/{unit['StateDirectory'][0]}/")


OPERATING = DOCS / "operating.md"


def _authorization_block() -> str:
    text = OPERATING.read_text(encoding="utf-8")
    match = re.search(r"```\n(authorization \{.*?)```", text, re.S)
    assert match, "operating.md shows no authorization block"
    return match.group(1)


def _users_in(block: str) -> list[dict[str, object]]:
    users = []
    for m in re.finditer(r'\{nkey: "(?P<nkey>[^"]+)", permissions: \{\s*publish: \{allow: '
                         r'\[(?P<pub>[^\]]*)\]\}\s*subscribe: \{allow: \[(?P<sub>[^\]]*)\]\}',
                         block):
        users.append({"nkey": m["nkey"], "permissions": {
            "publish": {"allow": re.findall(r'"([^"]+)"', m["pub"])},
            "subscribe": {"allow": re.findall(r'"([^"]+)"', m["sub"])}}})
    return users


def test_the_authorization_block_for_nats_url_is_the_one_the_daemon_gives_its_own_server(
        tmp_path: Path) -> None:
    from task_ingress.runtime.nats.authz import Served, nkey_authorization
    from task_ingress.runtime.nats.identity import generate_key, handle, raw_public_key
    from task_ingress.runtime.nats.nkey import user_nkey
    from task_ingress.runtime.nats.server import find_nats_server

    daemon_fp, peer_fp = "d" * 32, "e" * 32
    made = nkey_authorization(Served("ws0", "task-ingress", f"task-ingress@{daemon_fp}"),
                              daemon_nkey="<DAEMON_NKEY>", operator_nkey=None,
                              peers={peer_fp: "<PEER_NKEY>"})
    shown = json.loads(json.dumps(made).replace("ws0", "<WS>").replace(daemon_fp, "<DAEMON_FP>")
                       .replace(peer_fp, "<PEER_FP>"))
    block = _authorization_block()
    assert _users_in(block) == shown["users"]

    # nats-server loads it, with real values in the placeholders.
    daemon_key, peer_key = generate_key(), generate_key()
    daemon_handle = handle("task-ingress", daemon_key)
    peer_handle = handle("peer", peer_key)
    real = (block.replace("<WS>", "default")
            .replace("<DAEMON_NKEY>", user_nkey(raw_public_key(daemon_key)))
            .replace("<DAEMON_FP>", daemon_handle.split("@")[1])
            .replace("<PEER_NKEY>", user_nkey(raw_public_key(peer_key)))
            .replace("<PEER_FP>", peer_handle.split("@")[1]))
    conf = tmp_path / "nats.conf"
    conf.write_text('listen: "127.0.0.1:4222"\n' + real)
    checked = subprocess.run([find_nats_server(), "-t", "-c", str(conf)], capture_output=True,
                             text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
