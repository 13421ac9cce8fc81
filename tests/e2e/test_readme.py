"""The README's embedding example runs as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_embedding_example_runs_as_written() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert blocks, "README has no python example"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASK_INGRESS_LOG")}
    result = subprocess.run([sys.executable, "-c", blocks[0]], capture_output=True, text=True,
                            timeout=120, cwd=README.parent, env=env)
    assert result.returncode == 0, result.stderr
    assert "ops queued" in result.stdout
    assert "peer_not_found" in result.stdout
    # Reasons print as their codes, also inside lists; a library logs nothing by default.
    assert "(3, 'rejected', 'peer_not_found')" in result.stdout
    assert "<Reason" not in result.stdout
    assert result.stderr == ""


def test_readme_setup_commands_match_ci() -> None:
    text = README.read_text(encoding="utf-8")
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    test_command = "python -m pytest"
    assert test_command in text and test_command in ci
