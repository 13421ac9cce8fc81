"""`task-ingress swarm --daemon READY_FILE` drives a real `task-ingress serve` over NATS."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from task_ingress.runtime.cli import app
from typer.testing import CliRunner


def test_swarm_over_nats_against_a_served_daemon_holds_every_invariant(tmp_path: Path) -> None:
    ready = tmp_path / "ready.json"
    env = dict(os.environ, TASK_INGRESS_LOG_LEVEL="warning")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "task_ingress", "serve", "--store", str(tmp_path / "store.db"),
         "--ready-file", str(ready), "--greet-interval", "0.3"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert daemon.poll() is None, "the daemon exited before it was ready"
            assert time.monotonic() < deadline, "the daemon never wrote its ready file"
            time.sleep(0.1)
        report = tmp_path / "report.json"
        result = CliRunner().invoke(app, [
            "swarm", "--daemon", str(ready), "--requests", "600", "--peers", "8",
            "--channels", "3", "--concurrency", "4", "--churn", "0.1", "--no-progress",
            "--json", str(report),
            "--plot", "",
        ])
        assert result.exit_code == 0, result.output
        data = json.loads(report.read_text())
        assert data["config"]["transport"] == "nats"
        assert data["requests"] == 600 and all(data["invariants"].values())
        # Over NATS a leave is silence; a peer that waited out its expiry probes it, and
        # such probes (when the run lasted long enough) were all refused.
        assert data["presence"]["leaves"] > 0
        probes = data["bad_requests"].get("expired_peer", {"sent": 0,
                                                           "rejected_as_expected": 0})
        assert probes["rejected_as_expected"] == probes["sent"]
        # left_peer cannot be sent over NATS, and the report says why.
        assert "left_peer" not in data["bad_requests"]
        assert "a leave is silence" in data["unsent_bad_kinds"]["left_peer"]
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=20)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait(timeout=10)
