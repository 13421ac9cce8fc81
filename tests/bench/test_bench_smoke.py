"""`task-ingress bench` runs end to end on a tiny workload (figures are not asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from task_ingress.runtime.cli import app
from typer.testing import CliRunner


def _bench(tmp_path: Path, systems: str, rounds: int = 1) -> dict[str, object]:
    out = tmp_path / "task_ingress.bench.json"
    result = CliRunner().invoke(app, [
        "bench", "--requests", "60", "--threads", "4", "--peers", "8", "--channels", "2",
        "--systems", systems, "--ceiling-seconds", "0.2", "--json", str(out),
        "--rounds", str(rounds),
    ])
    assert result.exit_code == 0, result.output
    assert "SQLite durable ceiling" in result.output
    assert ("rounds (odd: systems in the order given" in result.output) is (rounds > 1)
    data: dict[str, object] = json.loads(out.read_text())
    return data


def test_bench_rounds_alternate_the_order_and_report_the_median_ratio(tmp_path: Path) -> None:
    data = _bench(tmp_path, "runtime-simple,baseline", rounds=3)
    rounds = data["rounds"]
    assert isinstance(rounds, list)
    assert [r["order"] for r in rounds] == [["runtime-simple", "baseline"],
                                            ["baseline", "runtime-simple"],
                                            ["runtime-simple", "baseline"]]
    per_round = [r["systems"]["runtime-simple"]["throughput_vs_baseline"] for r in rounds]
    assert all(isinstance(x, float) and x > 0 for x in per_round)
    systems = data["systems"]
    assert isinstance(systems, dict)
    entry = systems["runtime-simple"]
    assert entry["throughput_vs_baseline"] == pytest.approx(sorted(per_round)[1], abs=0.011)
    assert entry["peak"]["requests"] == 3 * 60 and entry["half_peak"]["requests"] == 3 * 30
    throughputs = sorted(r["systems"]["runtime-simple"]["peak"]["throughput"] for r in rounds)
    assert entry["peak"]["throughput"] == throughputs[1]


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
    # a runtime hands its actors at least one call a batch; the baseline has no batches
    assert systems["runtime-simple"]["peak"]["mean_batch"] >= 1.0
    assert systems["runtime-pipeline"]["half_peak"]["mean_batch"] >= 1.0
    assert systems["baseline"]["peak"]["mean_batch"] == 0.0
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
