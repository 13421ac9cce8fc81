"""What `task-ingress bench` says when a system's peak phase does not count (exit 1), and
how it sums up rounds and batches."""

from __future__ import annotations

from dataclasses import replace

from task_ingress.bench.report import batch_line
from task_ingress.bench.runner import (
    BenchResult,
    BenchRound,
    PhaseFigures,
    SystemResult,
    combine,
    mean_batch,
    peak_error,
)
from task_ingress.bench.workload import Workload


def _peak(*, requests: int, failed: int, timed_out: bool) -> PhaseFigures:
    return PhaseFigures(requests=requests, accepted=requests - failed, failed=failed,
                        elapsed_s=30.0, throughput=requests / 30.0, p50_ms=1.0, p90_ms=2.0,
                        p99_ms=3.0, max_ms=4.0, timed_out=timed_out, cpu_ms_per_request=1.0)


def test_a_peak_phase_that_ran_out_of_time_says_so_not_that_nothing_failed() -> None:
    # It read "0 of 3987 requests failed (...) in the peak phase" beside exit 1.
    line = peak_error(_peak(requests=3987, failed=0, timed_out=True), 6000, 30.0)
    assert line == ("timed out: 3987 of 6000 requests sent within the 30 s --budget in the "
                    "peak phase")


def test_failed_requests_are_counted_and_a_timeout_added() -> None:
    assert peak_error(_peak(requests=100, failed=3, timed_out=False), 100, 30.0) == (
        "3 of 100 requests failed (task_ingress_failed/overloaded/timeout) in the peak phase")
    both = peak_error(_peak(requests=90, failed=3, timed_out=True), 100, 5.0)
    assert both.startswith("3 of 90 requests failed") and "timed out: 90 of 100" in both


def test_rounds_combine_into_medians_totals_and_every_rounds_error() -> None:
    rounds = [SystemResult("runtime-simple", peak=_peak(requests=100, failed=0, timed_out=False)),
              SystemResult("runtime-simple", peak=_peak(requests=90, failed=2, timed_out=True),
                           error="2 of 90 requests failed"),
              SystemResult("runtime-simple", peak=_peak(requests=120, failed=1, timed_out=False))]
    both = combine([*rounds, None])  # a round where the system did not run adds nothing
    assert both.peak is not None and both.half is None
    assert (both.peak.requests, both.peak.failed, both.peak.accepted) == (310, 3, 307)
    assert both.peak.throughput == 100 / 30.0  # the median round's, not a mean
    assert both.peak.timed_out and both.error == "round 2: 2 of 90 requests failed"
    assert combine([rounds[0]]) is rounds[0]


def test_a_round_ratio_needs_both_systems_to_have_run_cleanly() -> None:
    ok = _peak(requests=100, failed=0, timed_out=False)
    base = SystemResult("baseline", peak=_peak(requests=50, failed=0, timed_out=False))
    rnd = BenchRound(index=1, order=("a", "baseline"), load=0.0,
                     systems=(SystemResult("a", peak=ok), base,
                              SystemResult("b", peak=ok, error="did not finish")))
    assert rnd.ratio("a") == 2.0
    assert rnd.ratio("b") is None and rnd.ratio("c") is None
    result = BenchResult(Workload(), rounds=[rnd, replace(rnd, index=2)])
    assert result.median_ratio("a") == 2.0 and result.median_ratio("b") is None


def test_the_mean_batch_is_calls_over_hand_offs_between_two_readings() -> None:
    assert mean_batch((10, 2), (40, 5)) == 10.0
    assert mean_batch(None, None) == 0.0  # a system without statistics (the baseline)
    assert mean_batch((10, 2), (10, 2)) == 0.0  # nothing handed off in between


def test_the_batch_line_names_each_runtime_at_peak_and_half_peak_and_no_baseline() -> None:
    def phase(batch: float, cpu: float) -> PhaseFigures:
        return replace(_peak(requests=100, failed=0, timed_out=False), mean_batch=batch,
                       runtime_cpu_ms_per_request=cpu)

    result = BenchResult(Workload(), systems=[
        SystemResult("runtime-simple", peak=phase(11.6, 0.36), half=phase(2.6, 0.71)),
        SystemResult("baseline", peak=phase(0.0, 0.6), half=phase(0.0, 0.6))])
    line = batch_line(result)
    assert line.endswith("runtime-simple 11.6 -> 2.6 calls, 0.36 -> 0.71 ms")
    assert "baseline" not in line
    assert batch_line(BenchResult(Workload(), systems=result.systems[1:])) == ""
