"""What `task-ingress bench` says when a system's peak phase does not count (exit 1)."""

from __future__ import annotations

from task_ingress.bench.runner import PhaseFigures, peak_error


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
