"""Live counters, an HDR latency histogram and a timeline (thread-safe, bounded).

Memory stays flat however long the run: the histogram has a fixed size, the current
bucket's latencies are folded into one timeline point when the bucket ends, and only
counters (no per-request objects) are kept. Buckets are a quarter second for the first
15 s (a default run lasts a few seconds and still gets a readable curve), then a second.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]  # no stubs

MAX_LATENCY_US = 120_000_000
MAX_EXAMPLES = 20
FINE_BUCKET = 0.25
"""Seconds per timeline bucket during the first FINE_FOR seconds."""
FINE_FOR = 15.0
COARSE_BUCKET = 1.0
_FINE_COUNT = round(FINE_FOR / FINE_BUCKET)


def bucket_of(t: float) -> int:
    """The timeline bucket holding `t` seconds into the run."""
    if t < FINE_FOR:
        return int(t / FINE_BUCKET)
    return _FINE_COUNT + int((t - FINE_FOR) / COARSE_BUCKET)


def bucket_start(index: int) -> float:
    """Seconds into the run at which bucket `index` starts."""
    if index < _FINE_COUNT:
        return index * FINE_BUCKET
    return FINE_FOR + (index - _FINE_COUNT) * COARSE_BUCKET


def answered_rate(requests: int, errors: int, elapsed: float) -> float:
    """Requests answered per second of run time: the live display's rate and the report's
    throughput are this one figure."""
    return (requests - errors) / max(elapsed, 1e-9)


@dataclass(frozen=True)
class TimelinePoint:
    """One bucket of the run (see the module docstring for the widths)."""

    RATE_MIN_SPAN = 0.05
    """A bucket shorter than this (the run's last, cut short) has no meaningful rate."""

    start: float
    """Seconds into the run at which the bucket starts."""
    span: float
    """Seconds covered (the bucket's width, less for the run's last, partial bucket)."""
    requests: int
    accepted: int
    p50_ms: float
    p99_ms: float
    max_ms: float


@dataclass(frozen=True)
class Snapshot:
    """What the live display shows."""

    elapsed: float
    requests: int
    accepted: int
    rejected: int
    errors: int
    rate: float
    """Requests answered per second so far (`answered_rate`: the report's throughput)."""
    p50_ms: float
    p99_ms: float
    greets: int
    leaves: int


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


@dataclass
class Stats:
    """Everything counted during a run. `start` is on the runner's monotonic clock."""

    start: float
    histogram: HdrHistogram = field(default_factory=lambda: HdrHistogram(1, MAX_LATENCY_US, 3))
    requests: int = 0
    accepted: int = 0
    rejected: int = 0
    errors: int = 0
    greets: int = 0
    leaves: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    bad_sent: Counter[str] = field(default_factory=Counter)
    bad_as_expected: Counter[str] = field(default_factory=Counter)
    bad_accepted: list[str] = field(default_factory=list)
    bad_accepted_count: int = 0
    error_examples: list[str] = field(default_factory=list)
    presence_errors: int = 0
    presence_error_examples: list[str] = field(default_factory=list)
    timeline: list[TimelinePoint] = field(default_factory=list)
    _bucket_index: int = 0
    _bucket: list[float] = field(default_factory=list)
    _bucket_accepted: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, now: float, latency: float, accepted: bool | None, reason: str | None,
               bad: str = "", expect: tuple[str, ...] = (), what: str = "") -> None:
        """One request's fate; `accepted` None means no reply (transport error)."""
        with self._lock:
            self._roll(now)
            self.requests += 1
            if bad:
                self.bad_sent[bad] += 1
            if accepted is None:
                self.errors += 1
                if len(self.error_examples) < MAX_EXAMPLES:
                    self.error_examples.append(what)
                return
            ms = latency * 1000.0
            self.histogram.record_value(max(1, int(latency * 1e6)))
            self._bucket.append(ms)
            if accepted:
                self.accepted += 1
                self._bucket_accepted += 1
                if bad:
                    self.bad_accepted_count += 1
                    if len(self.bad_accepted) < MAX_EXAMPLES:
                        self.bad_accepted.append(what)
            else:
                self.rejected += 1
                self.reasons[reason or "?"] += 1
                if bad and reason in expect:
                    self.bad_as_expected[bad] += 1

    def presence(self, kind: str) -> None:
        """Count a greet or leave."""
        with self._lock:
            if kind == "greet":
                self.greets += 1
            else:
                self.leaves += 1

    def presence_failed(self, what: str) -> None:
        """A greet or leave raised (the transport refused it or timed out)."""
        with self._lock:
            self.presence_errors += 1
            if len(self.presence_error_examples) < MAX_EXAMPLES:
                self.presence_error_examples.append(what)

    def _roll(self, now: float) -> None:
        index = bucket_of(now - self.start)
        while index > self._bucket_index:
            self._close_bucket()
            self._bucket_index += 1

    def _close_bucket(self, span: float | None = None) -> None:
        start = bucket_start(self._bucket_index)
        width = bucket_start(self._bucket_index + 1) - start
        values = sorted(self._bucket)
        self.timeline.append(TimelinePoint(
            start=start, span=width if span is None else span, requests=len(values),
            accepted=self._bucket_accepted, p50_ms=_percentile(values, 0.50),
            p99_ms=_percentile(values, 0.99), max_ms=values[-1] if values else 0.0,
        ))
        self._bucket = []
        self._bucket_accepted = 0

    def finish(self, now: float) -> None:
        """Close the last (partial) bucket, however short: its answers count in the timeline
        (the plot leaves a bucket this short out of its rate curve, not out of the totals)."""
        with self._lock:
            self._roll(now)
            span = now - self.start - bucket_start(self._bucket_index)
            if self._bucket:
                self._close_bucket(max(span, 1e-6))

    def snapshot(self, now: float) -> Snapshot:
        """Counters for the live display."""
        with self._lock:
            self._roll(now)
            elapsed = max(1e-9, now - self.start)
            return Snapshot(
                elapsed=elapsed, requests=self.requests, accepted=self.accepted,
                rejected=self.rejected, errors=self.errors,
                rate=answered_rate(self.requests, self.errors, elapsed),
                p50_ms=self.percentile_ms(50), p99_ms=self.percentile_ms(99),
                greets=self.greets, leaves=self.leaves,
            )

    def percentile_ms(self, q: float) -> float:
        """A latency percentile in ms from the HDR histogram (0 when empty)."""
        if self.histogram.get_total_count() == 0:
            return 0.0
        return float(self.histogram.get_value_at_percentile(q)) / 1000.0

    def max_ms(self) -> float:
        """The largest latency recorded, ms."""
        if self.histogram.get_total_count() == 0:
            return 0.0
        return float(self.histogram.get_max_value()) / 1000.0
