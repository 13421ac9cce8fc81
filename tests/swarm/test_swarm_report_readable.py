"""The swarm's outputs read well on an 80-column terminal: the report breaks no word and
cuts nothing, the live line puts its figures first, its rate is the report's throughput,
and the plot of a short run has sub-second points on axes from 0."""

from __future__ import annotations

import dataclasses
import io
import re
from collections.abc import Iterator
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
from rich.console import Console
from task_ingress.runtime.swarm import report
from task_ingress.runtime.swarm.invariants import Check
from task_ingress.runtime.swarm.runner import ALL_BAD_KINDS, SwarmResult, run_swarm
from task_ingress.runtime.swarm.stats import (
    FINE_BUCKET,
    Snapshot,
    Stats,
    TimelinePoint,
    answered_rate,
    bucket_of,
    bucket_start,
)

from tests.swarm.swarm_support import small_config

WIDTH = 80


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SwarmResult,
                                                                           list[Snapshot]]]:
    """One small in-process swarm (its runtime is started and closed inside) and every
    progress snapshot it showed."""
    store = tmp_path_factory.mktemp("swarm") / "store.db"
    ticks: list[Snapshot] = []
    result = run_swarm(small_config(str(store), requests=800, churn=0.0), on_tick=ticks.append)
    yield result, ticks


def render(renderable: object, width: int = WIDTH) -> str:
    out = io.StringIO()
    Console(file=out, width=width, force_terminal=False, color_system=None).print(renderable)
    return out.getvalue()


def words(*texts: str) -> set[str]:
    """The words a reader must find whole (short ones could match by chance anywhere)."""
    return {w for text in texts for w in re.split(r"\s+", text) if len(w) >= 4}


def test_the_report_fits_80_columns_and_breaks_no_word(
        finished: tuple[SwarmResult, list[Snapshot]]) -> None:
    result, _ = finished
    long_example = ("seq 123: peer-0007 in ws-1/ch-2 was not visible with task.write when "
                    "s7-7-123 was sent")
    broken = Check("writes_by_visible_capable_peers", False, "1 of 487 accepted writes not "
                   "attributable", (long_example,))
    result = dataclasses.replace(
        result, checks=[*result.checks[:2], broken, *result.checks[3:]],
        unsent_notes={**result.unsent_notes, "left_peer": "over NATS a leave is silence, not "
                      "a revocation: the expired_peer probe tests it instead"})
    text = render(report.summary(result))
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= WIDTH
    assert "…" not in text
    expected = words(*(c.name for c in result.checks), *(c.detail for c in result.checks),
                     long_example, *result.unsent_notes.values(), *ALL_BAD_KINDS,
                     *result.stats.reasons, f"{result.config.actor_base}")
    cut = sorted(w for w in expected if w not in text)
    assert cut == [], f"words broken or missing at {WIDTH} columns: {cut}\n{text}"
    assert lines[0].strip().startswith("swarm: 800 requests in")  # a one-line title


def test_the_live_line_fits_80_columns_with_the_figures_first() -> None:
    busy = Snapshot(elapsed=1234.5, requests=123_456, accepted=100_000, rejected=23_456,
                    errors=12_345, rate=12_345.6, p50_ms=123.4, p99_ms=1_234.5,
                    greets=12_345, leaves=1_234)
    lines = render(report.live_view(busy, 500_000)).splitlines()
    assert len(lines) == 2 and max(len(line) for line in lines) <= WIDTH
    first = lines[0]
    for figure in ("1234.5s", "123,456/500,000", "12,346 req/s", "p50 123 ms",
                   "p99 1,234 ms", "12,345 errors"):
        assert figure in first
    for figure in ("accepted 100,000", "rejected 23,456", "greets 12,345", "leaves 1,234"):
        assert figure in lines[1]


def test_the_progress_rate_is_the_reports_throughput(
        finished: tuple[SwarmResult, list[Snapshot]]) -> None:
    result, ticks = finished
    last = ticks[-1]
    assert last.requests == result.stats.requests
    assert last.rate == pytest.approx(result.throughput, rel=1e-9)
    assert f"{result.throughput:,.0f} req/s" in render(report.summary(result))
    assert answered_rate(100, 10, 2.0) == 45.0


def test_a_short_run_is_plotted_in_sub_second_buckets_from_zero(
        finished: tuple[SwarmResult, list[Snapshot]], tmp_path: Path) -> None:
    result, _ = finished
    points = result.stats.timeline
    assert len(points) >= 2 and all(p.span <= FINE_BUCKET + 1e-9 for p in points)
    assert sum(p.requests for p in points) == result.stats.requests - result.stats.errors
    fig = report.draw_plot(result)
    try:
        top, bottom = fig.axes
        assert top.get_ylim()[0] == 0 and bottom.get_ylim()[0] == 0
        assert bottom.get_xlim()[0] == 0
    finally:
        plt.close(fig)
    report.write_plot(result, str(tmp_path / "deeper" / "plot.png"))
    assert (tmp_path / "deeper" / "plot.png").read_bytes()[:4] == b"\x89PNG"


def test_buckets_are_a_quarter_second_then_a_second() -> None:
    assert [bucket_start(i) for i in range(3)] == [0.0, 0.25, 0.5]
    assert bucket_of(0.3) == 1 and bucket_of(14.99) == 59
    assert bucket_start(60) == 15.0 and bucket_start(61) == 16.0 and bucket_of(15.5) == 60
    assert all(bucket_of(bucket_start(i)) == i for i in range(200))


def test_the_report_says_why_a_bad_kind_was_not_sent(
        finished: tuple[SwarmResult, list[Snapshot]]) -> None:
    result, _ = finished
    assert result.stats.bad_sent["left_peer"] == 0 and result.stats.bad_sent["expired_peer"] == 0
    assert result.unsent_notes["left_peer"] == "--churn is 0"
    assert result.unsent_notes["expired_peer"] == "--churn is 0"
    assert set(result.unsent_notes) <= set(ALL_BAD_KINDS)
    data = report.to_json(result)
    assert data["unsent_bad_kinds"] == result.unsent_notes
    assert data["run_problems"] == [] and data["interrupted"] is False and data["ok"]


def test_answers_in_a_last_bucket_of_a_few_ms_still_count_in_the_timeline() -> None:
    stats = Stats(start=0.0)
    stats.record(0.10, 0.002, True, None)
    stats.record(0.251, 0.002, True, None)   # the next bucket, 1 ms before the end
    stats.finish(0.252)
    assert sum(p.requests for p in stats.timeline) == 2
    assert stats.timeline[-1].span < TimelinePoint.RATE_MIN_SPAN
