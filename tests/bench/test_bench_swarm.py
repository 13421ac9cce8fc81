"""`task-ingress bench --swarm`: the swarm in-process and over NATS side by side (figures are
not asserted: only that each side ran, and that the ratios are the figures' ratios)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from task_ingress.bench.swarm_side import (
    SIDES,
    VS_REVOKE,
    VS_SILENCE,
    SideRun,
    SwarmBench,
    SwarmRound,
    like_for_like,
    round_order,
    sides,
)
from task_ingress.runtime.cli import app
from typer.testing import CliRunner


def _run(side: str, throughput: float, ok: bool = True) -> SideRun:
    return SideRun(side=side, transport="inproc", throughput=throughput, p50_ms=1.0, ok=ok,
                   problem="" if ok else "invariant(s) broken: x")


def test_rounds_alternate_their_order_so_drift_falls_on_every_side() -> None:
    assert round_order(1, 0.02) == SIDES
    assert round_order(2, 0.02) == tuple(reversed(SIDES))
    assert round_order(3, 0.0) == ("inproc-revoke", "nats")
    assert round_order(4, 0.0) == ("nats", "inproc-revoke")


def test_without_churn_no_peer_leaves_so_one_in_process_swarm_is_like_for_like() -> None:
    assert sides(0.0) == ("inproc-revoke", "nats") and like_for_like(0.0) == VS_REVOKE
    assert sides(0.02) == SIDES and like_for_like(0.02) == VS_SILENCE


def test_a_failed_swarm_gives_no_ratio_and_is_listed() -> None:
    good = SwarmRound(index=1, order=SIDES, load=0.1, runs={
        "inproc-revoke": _run("inproc-revoke", 1000), "inproc-silence": _run(
            "inproc-silence", 600), "nats": _run("nats", 450)})
    bad = SwarmRound(index=2, order=SIDES, load=0.1, runs={
        "inproc-revoke": _run("inproc-revoke", 900), "inproc-silence": _run(
            "inproc-silence", 0, ok=False), "nats": _run("nats", 500)})
    assert good.ratio(VS_SILENCE) == pytest.approx(0.75)
    assert bad.ratio(VS_SILENCE) is None
    bench = SwarmBench(requests=10, seed=1, churn=0.02, rounds=[good, bad])
    assert bench.median(VS_SILENCE) == pytest.approx(0.75)
    assert bench.median(VS_REVOKE) == pytest.approx((0.45 + 500 / 900) / 2)
    assert bench.failures == ["round 2 inproc-silence: invariant(s) broken: x"]
    assert bench.median_cpu("inproc-silence") == (0.0, None)  # the failed run is left out
    assert bench.median_cpu("absent") is None
    data = bench.to_json()
    assert data["like_for_like"] == "nats_x_inproc_silence"
    assert data["rounds"][1]["nats_x_inproc_silence"] is None


def test_bench_swarm_runs_each_swarm_and_reports_the_ratios_of_its_figures(
    tmp_path: Path,
) -> None:
    out = tmp_path / "swarm-bench.json"
    result = CliRunner().invoke(app, ["bench", "--swarm", "--rounds", "1", "--requests",
                                      "300", "--churn", "0.05", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "nats x inproc-silence" in result.output
    data = json.loads(out.read_text())
    runs = data["rounds"][0]["runs"]
    assert set(runs) == set(SIDES)
    for run in runs.values():
        assert run["ok"] is True and run["throughput"] > 0, run
    assert [runs[s]["transport"] for s in SIDES] == ["inproc", "inproc", "nats"]
    # CPU: this process for every side; serve's tree only over NATS (it is a child then).
    assert all(runs[s]["cpu_ms"] > 0 for s in SIDES)
    assert runs["inproc-revoke"]["daemon_cpu_ms"] is None
    assert runs["nats"]["daemon_cpu_ms"] > 0
    assert "CPU per request, ms" in result.output
    ratio = runs["nats"]["throughput"] / runs["inproc-silence"]["throughput"]
    assert data["median"]["nats_x_inproc_silence"] == pytest.approx(ratio)
    assert data["failures"] == []


@pytest.mark.parametrize("argv, told", [
    (["--swarm", "--cluster"], "two different benches"),
    (["--swarm", "--rounds", "0"], "--rounds 1..20"),
    (["--swarm", "--churn", "2"], "--churn is a fraction"),
    (["--swarm", "--systems", "baseline"], "--systems: not used with --swarm"),
    (["--rounds", "0"], "--rounds 1..20"),
    (["--rounds", "21"], "--rounds 1..20"),
    (["--cluster", "--database", "postgresql://nowhere/x", "--rounds", "2"],
     "--rounds: not used with --cluster"),
    (["--churn", "0.1"], "--churn: only for --swarm"),
])
def test_bench_swarm_usage_problems_are_one_line_and_exit_2(argv: list[str], told: str
                                                           ) -> None:
    result = CliRunner().invoke(app, ["bench", *argv])
    assert result.exit_code == 2, result.output
    assert told in result.output


def test_a_swarm_stopped_by_ctrl_c_stops_the_bench(monkeypatch: pytest.MonkeyPatch) -> None:
    # The swarm turns Ctrl-C into an interrupted result (its report is still written); the
    # bench must not go on to its next swarm as if nothing happened.
    from types import SimpleNamespace

    from task_ingress.bench import swarm_side
    from task_ingress.runtime.swarm import runner

    ran: list[str] = []

    def interrupted_swarm(cfg: object, *args: object) -> object:
        ran.append("swarm")
        return SimpleNamespace(interrupted=True)

    monkeypatch.setattr(runner, "run_swarm", interrupted_swarm)
    with pytest.raises(KeyboardInterrupt):
        swarm_side.run_swarm_bench(requests=10, rounds=2, seed=1, churn=0.0)
    assert ran == ["swarm"]


def test_a_serve_that_cannot_start_fails_its_side_with_what_it_said(tmp_path: Path) -> None:
    # The side's temp directory (and serve's log in it) is gone once the bench reports, so
    # the problem must carry serve's own last words. A bad event-loop choice stops serve at
    # once (exit 2) with one line.
    from task_ingress.bench.daemon import ServeChild

    with pytest.raises(RuntimeError, match=r"serve exited with status 2: .*EVENT_LOOP"):
        ServeChild(str(tmp_path / "s.db"), ["--log-level", "warning"],
                   {"TASK_INGRESS_EVENT_LOOP": "no-such-loop"})
