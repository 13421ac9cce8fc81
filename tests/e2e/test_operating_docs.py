"""docs/task-ingress.service says what docs/operating.md promises, and runs a real command."""

from __future__ import annotations

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
