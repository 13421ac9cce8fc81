"""A small swarm passes every invariant, and the command's report has SPEC §9's shape."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from task_ingress.runtime.cli import app
from task_ingress.runtime.swarm.invariants import check_all
from task_ingress.runtime.swarm.runner import run_swarm
from typer.testing import CliRunner

from tests.swarm.swarm_support import run_kept, small_config

SPEC_KEYS = {"requests", "accepted", "rejected", "throughput", "latency_ms", "reasons",
             "invariants", "rss_start_mb", "rss_end_mb"}


def test_small_swarm_holds_every_invariant_and_sends_every_bad_kind(tmp_path: Path) -> None:
    run = run_kept(str(tmp_path))
    checks = check_all(run.evidence())
    assert [c.name for c in checks if not c.ok] == []
    stats = run.swarm.stats
    assert stats.requests == 600
    assert stats.accepted > 0 and stats.rejected > 0
    # Every deliberately bad kind was sent and rejected with the reason it should get.
    kinds = {"unknown_peer", "foreign_channel", "malformed_id", "garbage", "oversized",
             "no_capability", "left_peer", "expired_peer"}
    assert kinds <= set(stats.bad_sent)
    assert stats.bad_as_expected == stats.bad_sent
    assert stats.leaves > 0


def test_run_swarm_removes_its_temp_store_and_reports_success(tmp_path: Path) -> None:
    cfg = small_config("", requests=200)
    cfg = type(cfg)(**{**cfg.__dict__, "store": None})
    result = run_swarm(cfg)
    assert result.ok, [c for c in result.checks if not c.ok]
    assert not os.path.exists(result.store_path)


def test_swarm_command_prints_report_and_writes_json_plot_and_ack_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    ack = tmp_path / "acks.jsonl"
    result = CliRunner().invoke(app, [
        "swarm", "--requests", "300", "--peers", "6", "--channels", "2", "--concurrency",
        "3", "--greet-interval", "0.3", "--seed", "3", "--no-progress",
        "--ack-log", str(ack),
    ])
    assert result.exit_code == 0, result.output
    assert "every invariant held" in result.output
    report = json.loads((tmp_path / "reports" / "swarm-report.json").read_text())
    assert set(report) >= SPEC_KEYS
    assert set(report["latency_ms"]) == {"p50", "p90", "p99", "p999", "max"}
    assert report["requests"] == 300
    assert report["accepted"] + report["rejected"] == 300
    assert all(report["invariants"].values()) and len(report["invariants"]) == 7
    assert (tmp_path / "reports" / "swarm-report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = [json.loads(line) for line in ack.read_text().splitlines()]
    assert len(lines) == 300
    assert set(lines[0]) == {"workspace", "channel", "peer_id", "request_id", "accepted",
                             "reason", "task_id", "run_id"}


def test_swarm_command_without_nats_transport_module_exits_with_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "task_ingress.runtime.nats.swarm_transport", None)
    result = CliRunner().invoke(app, ["swarm", "--transport", "nats", "--nats-url",
                                      "nats://127.0.0.1:1", "--no-progress", "--json", "",
                                      "--plot", ""])
    assert result.exit_code == 2
    assert "task_ingress.runtime.nats.swarm_transport" in result.output


def test_swarm_command_exits_nonzero_when_an_invariant_breaks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from task_ingress.runtime.swarm import runner
    from task_ingress.runtime.swarm.invariants import Check, check_all

    real = check_all

    def one_broken(evidence: object) -> list[Check]:
        checks = real(evidence)  # type: ignore[arg-type]  # RunEvidence at run time
        return [*checks[:-1], Check(checks[-1].name, False, "forced by the test")]

    monkeypatch.setattr(runner, "check_all", one_broken)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["swarm", "--requests", "100", "--peers", "4",
                                      "--channels", "2", "--no-progress"])
    assert result.exit_code == 1
    assert "every_request_answered" in result.output
    report = json.loads((tmp_path / "reports" / "swarm-report.json").read_text())
    assert report["invariants"]["every_request_answered"] is False


def test_swarm_command_runs_the_runtime_in_a_pipeline_process_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, [
        "swarm", "--requests", "200", "--peers", "6", "--channels", "2", "--concurrency",
        "3", "--greet-interval", "0.3", "--process-mode", "pipeline", "--no-progress",
    ])
    assert result.exit_code == 0, result.output
    assert "every invariant held" in result.output
    report = json.loads((tmp_path / "reports" / "swarm-report.json").read_text())
    assert report["config"]["process_mode"] == "pipeline" and report["requests"] == 200
