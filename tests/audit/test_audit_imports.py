"""The read-only tools (`task-ingress audit`, verify, the swarm's invariants) import no actor
and no Thespian: they read the store file beside a live daemon through `actors.rules` and
`actors.storage` alone, so nothing they load can start or change the pipeline."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import pytest
import task_ingress.runtime.audit as audit

READ_ONLY_TOOLS = [
    "task_ingress.runtime.audit.anchor",
    "task_ingress.runtime.audit.cli",
    "task_ingress.runtime.audit.pg_cli",
    "task_ingress.runtime.audit.pg_verify",
    "task_ingress.runtime.audit.query",
    "task_ingress.runtime.audit.read",
    "task_ingress.runtime.audit.table",
    "task_ingress.runtime.audit.verify",
    "task_ingress.runtime.swarm.invariants",
    "task_ingress.runtime.cli",  # the console script, as `task-ingress audit` loads it
]
# actors.log is the shared structlog set-up (no actor, no Thespian): the CLI configures logging
# through it before any command runs.
ALLOWED_UNDER_ACTORS = ("task_ingress.actors.rules", "task_ingress.actors.storage",
                        "task_ingress.actors.log")


def loaded_by(module: str) -> list[str]:
    """Every module a fresh interpreter holds after importing `module`."""
    code = f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    names: list[str] = json.loads(out)
    return names


def test_every_audit_module_is_listed() -> None:
    found = {f"{audit.__name__}.{m.name}" for m in pkgutil.iter_modules(audit.__path__)}
    assert found <= set(READ_ONLY_TOOLS)


@pytest.mark.parametrize("module", READ_ONLY_TOOLS)
def test_a_read_only_tool_imports_no_actor_and_no_thespian(module: str) -> None:
    loaded = loaded_by(module)
    actors = [m for m in loaded if m.startswith("task_ingress.actors.")
              and not m.startswith(ALLOWED_UNDER_ACTORS)]
    assert actors == []
    assert [m for m in loaded if m.split(".")[0] == "thespian"] == []
