"""`task-ingress bench` runs end to end on a tiny workload (figures are not asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from task_ingress.runtime.cli import app
from typer.testing import CliRunner


def _bench(tmp_path: Path, systems: str) -> dict[str, object]:
    out = tmp_path / "task_ingress.bench.json"
    result = CliRunner().invoke(app, [
        "bench", "--requests", "60", "--threads", "4", "--peers", "8", "--channels", "2",
        "--systems", systems, "--ceiling-seconds", "0.2", "--json", str(out),
    ])
    assert result.exit_code == 0, result.output
    assert "SQLite durable ceiling" in result.output
    data: dict[str, object] = json.loads(out.read_text())
    return data


def test_bench_runs_runtime_and_baseline_side_by_side(tmp_path: Path) -> None:
    data = _bench(tmp_path, "runtime-simple,runtime-pipeline,baseline")
    systems = data["systems"]
    assert isinstance(systems, dict)
    assert set(systems) == {"runtime-simple", "runtime-pipeline", "baseline"}
    for entry in systems.values():
        assert entry["error"] is None
        assert entry["peak"]["requests"] == 60 and entry["half_peak"]["requests"] == 30
        assert entry["peak"]["failed"] == 0
        assert "throughput_vs_baseline" in entry
    ceiling = data["ceiling"]
    assert isinstance(ceiling, dict) and ceiling["single_commits_per_s"] > 0


@pytest.mark.multiproc
def test_bench_runs_the_runtime_on_a_multiprocess_base(tmp_path: Path) -> None:
    data = _bench(tmp_path, "runtime-multiproc")
    systems = data["systems"]
    assert isinstance(systems, dict)
    entry = systems["runtime-multiproc"]
    assert entry["error"] is None and entry["peak"]["requests"] == 60


def test_bench_runs_serve_over_nats_beside_the_runtime_and_leaves_nothing_running(
        tmp_path: Path) -> None:
    from tests.conftest import _children, _new_children

    before = _children()
    data = _bench(tmp_path, "runtime-simple,daemon-nats,daemon-nats-pipeline")
    systems = data["systems"]
    assert isinstance(systems, dict)
    for name in ("daemon-nats", "daemon-nats-pipeline"):
        entry = systems[name]
        assert entry["error"] is None, entry["error"]
        assert entry["peak"]["requests"] == 60 and entry["peak"]["failed"] == 0
        assert entry["peak"]["accepted"] > 0
    assert not _new_children(before)
