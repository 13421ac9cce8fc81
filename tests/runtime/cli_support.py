"""Helpers for the command-line tests: run `python -m task_ingress` as a user would."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE = 1
CAP_DAC_READ_SEARCH = 2


UNSET = ("TASK_INGRESS_LOG", "TASK_INGRESS_DATABASE", "TASK_INGRESS_AUDIT_KEY")
"""Settings a user's shell may hold that would change what a command does."""


def user_env(**extra: str) -> dict[str, str]:
    """The environment without our log, database and audit key settings, plus `extra`
    (each test states what it needs)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(UNSET)}
    return {**env, **extra}


def cli(*args: str, cwd: Path, timeout: float = 60,
        preexec: Callable[[], None] | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `task-ingress ARGS` (as `python -m task_ingress`) and capture everything; `env`
    is added to the user's environment."""
    return subprocess.run([sys.executable, "-m", "task_ingress", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout,
                          env=user_env(**(env or {})), preexec_fn=preexec)


def mode_bits_bind_root() -> None:
    """preexec_fn: as root, drop the capabilities that ignore file modes from the bounding
    set, so the child (after exec) is refused a read-only directory like any user."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def read_only_dir(parent: Path) -> Path | None:
    """A directory the CLI subprocess (run with `mode_bits_bind_root`) cannot write in;
    None when this machine cannot make one (root without CAP_SETPCAP)."""
    directory = parent / "read-only"
    directory.mkdir()
    directory.chmod(0o555)
    try:
        probe = subprocess.run(["sh", "-c", f"touch '{directory}/probe'"],
                               preexec_fn=mode_bits_bind_root, capture_output=True,
                               timeout=30)
    except subprocess.SubprocessError:
        return None
    if probe.returncode == 0:
        (directory / "probe").unlink()
        return None
    return directory


def one_line(text: str) -> str:
    """The only non-empty line of `text` (fails when there are none or several)."""
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got {len(lines)}:\n{text}"
    return lines[0]
