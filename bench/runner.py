"""`task-ingress bench`: one fixed workload against the runtime (two actor bases) and the
lock-based baseline, all on durable file stores in one temp dir, plus the SQLite ceiling.

Per system: a peak phase (closed loop, every thread sends as fast as replies come), then
a half-peak phase (open loop at half the peak rate, latency from the scheduled send time).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any

import psutil
from task_ingress.bench.ceiling import Ceiling, measure_ceiling
from task_ingress.bench.workload import (
    PhaseResult,
    System,
    Workload,
    greet_all,
    peers_for,
    run_phase,
)

SYSTEMS = ("runtime-simple", "runtime-pipeline", "runtime-multiproc", "baseline",
           "daemon-nats", "daemon-nats-pipeline")
DEFAULT_SYSTEMS = ("runtime-simple", "runtime-pipeline", "runtime-multiproc", "baseline")
"""What `bench` runs unless --systems says otherwise (the daemon systems are opt-in)."""
BASES = {"runtime-simple": "simpleSystemBase", "runtime-pipeline": "simpleSystemBase",
         "runtime-multiproc": "multiprocQueueBase"}
MODES = {"runtime-pipeline": "pipeline", "daemon-nats-pipeline": "pipeline"}
"""RuntimeConfig.process_mode per system (default: in-process)."""
DAEMONS = ("daemon-nats", "daemon-nats-pipeline")
"""`task-ingress serve` over NATS on loopback, driven through the swarm's NATS transport."""


@dataclass(frozen=True)
class PhaseFigures:
    """Throughput and latency of one phase."""

    requests: int
    accepted: int
    failed: int
    elapsed_s: float
    throughput: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    timed_out: bool
    cpu_ms_per_request: float
    """CPU (all threads, actor processes included) per request: load-independent cost."""
    runtime_cpu_ms_per_request: float = 0.0
    """The same less the bench's own client work (`PhaseResult.runtime_cpu_s`): what the
    system under test spends per request."""
    mean_batch: float = 0.0
    """Calls per hand-off from the runtime's driver to its actors in this phase
    (`RuntimeStatistics`); 0 for a system without them (the baseline, a daemon)."""


@dataclass
class SystemResult:
    """One system's figures (error set when it could not run)."""

    name: str
    peak: PhaseFigures | None = None
    half: PhaseFigures | None = None
    half_rate: float = 0.0
    error: str | None = None


@dataclass(frozen=True)
class BenchRound:
    """Every system once, one after the other (odd rounds in the order asked, even rounds
    reversed, so a machine that slows down or speeds up during the bench favours no
    system), and the machine's 1-minute load average when the round began."""

    index: int
    order: tuple[str, ...]
    load: float
    systems: tuple[SystemResult, ...]

    def by_name(self, name: str) -> SystemResult | None:
        """The result of one system in this round, if it ran."""
        return next((s for s in self.systems if s.name == name), None)

    def ratio(self, name: str) -> float | None:
        """The system's peak throughput over the baseline's in this round; None when
        either did not run, failed, or the baseline answered nothing."""
        mine, base = self.by_name(name), self.by_name("baseline")
        if (mine is None or base is None or mine.peak is None or base.peak is None
                or mine.error or base.error or base.peak.throughput <= 0):
            return None
        return mine.peak.throughput / base.peak.throughput


@dataclass
class BenchResult:
    """Everything `bench` prints and writes: each round, and per system its figures over
    all rounds (`combine`)."""

    workload: Workload
    systems: list[SystemResult] = field(default_factory=list)
    ceiling: Ceiling | None = None
    rounds: list[BenchRound] = field(default_factory=list)

    def by_name(self, name: str) -> SystemResult | None:
        """The result of one system, if it ran."""
        return next((s for s in self.systems if s.name == name), None)

    def median_ratio(self, name: str) -> float | None:
        """The median over the rounds of the system's throughput over the baseline's in
        the same round (None: no round gave one)."""
        values = [r for r in (rnd.ratio(name) for rnd in self.rounds) if r is not None]
        return statistics.median(values) if values else None


Totals = tuple[int, int]
"""(calls, batches) a runtime's driver has dispatched since it started."""


def dispatch_totals(system: System) -> Totals | None:
    """What the runtime under test has dispatched so far; None for a system without
    `statistics()` (the baseline, a daemon over NATS)."""
    read = getattr(system, "statistics", None)
    if read is None:
        return None
    stats = read()
    return int(stats.calls_dispatched), int(stats.batches_dispatched)


def mean_batch(before: Totals | None, after: Totals | None) -> float:
    """Calls per batch between two readings of `dispatch_totals` (0: none to tell)."""
    if before is None or after is None or after[1] <= before[1]:
        return 0.0
    return (after[0] - before[0]) / (after[1] - before[1])


def figures(phase: PhaseResult, batch: float = 0.0) -> PhaseFigures:
    """Percentiles (HDR histogram) and rates of a phase; `batch` its mean batch."""
    from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]  # no stubs

    hist = HdrHistogram(1, 120_000_000, 3)
    for latency in phase.latencies:
        hist.record_value(max(1, int(latency * 1e6)))
    n = len(phase.latencies)

    def pct(q: float) -> float:
        return float(hist.get_value_at_percentile(q)) / 1000.0 if n else 0.0

    answered = n - phase.failed  # failed/overloaded replies are not throughput
    return PhaseFigures(
        requests=n, accepted=phase.accepted, failed=phase.failed,
        elapsed_s=round(phase.elapsed, 3),
        throughput=answered / phase.elapsed if phase.elapsed else 0.0,
        p50_ms=pct(50), p90_ms=pct(90), p99_ms=pct(99),
        max_ms=float(hist.get_max_value()) / 1000.0 if n else 0.0, timed_out=phase.timed_out,
        cpu_ms_per_request=phase.cpu_s * 1000.0 / n if n else 0.0,
        runtime_cpu_ms_per_request=phase.runtime_cpu_s * 1000.0 / n if n else 0.0,
        mean_batch=batch,
    )


def _open_system(name: str, store: str, key: str) -> tuple[System, Callable[[], None]]:
    if name == "baseline":
        from task_ingress.bench.baseline import LockBaseline

        baseline = LockBaseline(store, audit_key=key)
        baseline.start()
        return baseline, baseline.close
    if name in DAEMONS:
        from task_ingress.bench.daemon import DaemonSystem

        daemon = DaemonSystem(store, key, process_mode=MODES.get(name, "inprocess"))
        return daemon, daemon.close
    from task_ingress.runtime.config import RuntimeConfig
    from task_ingress.runtime.facade import IngressRuntime

    rt = IngressRuntime(RuntimeConfig(store_path=store, durable=True, actor_base=BASES[name],
                                      process_mode=MODES.get(name, "inprocess"),
                                      audit_key=key, request_timeout=10.0))
    rt.start()
    return rt, rt.close


def peak_error(peak: PhaseFigures, planned: int, budget: float) -> str:
    """Why a system's peak phase does not count: its failed requests and, when it ran out of
    time, that it did (a slow system used to read `0 of N requests failed`)."""
    why = [f"{peak.failed} of {peak.requests} requests failed "
           "(task_ingress_failed/overloaded/timeout)"] if peak.failed else []
    if peak.timed_out:
        why.append(f"timed out: {peak.requests} of {planned} requests sent within the "
                   f"{budget:g} s --budget")
    return "; ".join(why) + " in the peak phase"


def bench_system(name: str, w: Workload, directory: str, budget: float,
                 half_peak: bool = True, on_phase: Callable[[str], None] | None = None
                 ) -> SystemResult:
    """Run both phases on a fresh store; a system that fails to start is reported, not raised."""
    result = SystemResult(name)
    store = os.path.join(directory, f"{name}.db")
    before = {p.pid for p in _descendants()}
    try:
        system, close = _open_system(name, store, secrets.token_hex(32))
    except Exception as exc:
        result.error = f"did not start: {exc!r:.200}"
        return result
    try:
        peers = peers_for(w)
        greet_all(system, peers)
        if on_phase:
            on_phase(f"{name}: peak")
        start = dispatch_totals(system)
        peak = run_phase(system, w, peers, "peak", w.requests, None, budget)
        middle = dispatch_totals(system)
        result.peak = figures(peak, mean_batch(start, middle))
        if result.peak.failed or result.peak.timed_out:
            result.error = peak_error(result.peak, w.requests, budget)
        elif half_peak and result.peak.throughput > 0:
            result.half_rate = result.peak.throughput / 2
            if on_phase:
                on_phase(f"{name}: half peak ({result.half_rate:,.0f} req/s)")
            half = run_phase(system, w, peers, "half", max(w.requests // 2, 1),
                             result.half_rate, budget)
            result.half = figures(half, mean_batch(middle, dispatch_totals(system)))
    except Exception as exc:
        result.error = f"failed: {exc!r:.200}"
    finally:
        spawned = [p for p in _descendants() if p.pid not in before]
        # the actor processes of a multiprocess base are not our descendants (daemonized)
        for pid in getattr(system, "actor_pids", list)():
            with contextlib.suppress(psutil.Error):
                spawned.append(psutil.Process(pid))
        close()
        _reap(spawned)
    return result


def _descendants() -> list[psutil.Process]:
    """Actor processes this bench started (children and their children)."""
    try:
        return list(psutil.Process().children(recursive=True))
    except psutil.Error:
        return []


def _reap(procs: list[psutil.Process]) -> None:
    """Kill what a hung actor system left behind (re-parented actors included)."""
    _, alive = psutil.wait_procs(procs, timeout=3)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=3)


def run_bench(w: Workload, systems: tuple[str, ...] = DEFAULT_SYSTEMS, budget: float = 60.0,
              half_peak: bool = True, ceiling_seconds: float = 1.5,
              on_phase: Callable[[str], None] | None = None, rounds: int = 1) -> BenchResult:
    """The whole benchmark in one temp dir (removed afterwards): the ceiling once, then
    `rounds` rounds of every system (`BenchRound`), each system on a fresh store."""
    directory = tempfile.mkdtemp(prefix="task-ingress-bench-")
    out = BenchResult(w)
    try:
        if ceiling_seconds > 0:
            if on_phase:
                on_phase("SQLite durable commit ceiling")
            out.ceiling = measure_ceiling(directory, ceiling_seconds)
        for index in range(1, rounds + 1):
            order = systems if index % 2 else tuple(reversed(systems))
            load = os.getloadavg()[0]
            where = os.path.join(directory, f"round-{index}")
            os.mkdir(where)
            prefix = f"round {index}/{rounds}: " if rounds > 1 else ""
            tell = None if on_phase is None else _prefixed(on_phase, prefix)
            ran = [bench_system(name, w, where, budget, half_peak, tell) for name in order]
            out.rounds.append(BenchRound(index=index, order=order, load=round(load, 2),
                                         systems=tuple(ran)))
        out.systems = [combine([r.by_name(name) for r in out.rounds]) for name in systems]
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return out


def _prefixed(on_phase: Callable[[str], None], prefix: str) -> Callable[[str], None]:
    return lambda what: on_phase(prefix + what)


_COUNTS = ("requests", "accepted", "failed", "elapsed_s")
"""PhaseFigures fields summed over the rounds (every failed request shows); the rest are
medians, `timed_out` true when any round's was."""


def combine(results: list[SystemResult | None]) -> SystemResult:
    """One system's figures over all rounds: medians of its rates, latencies and CPU, totals
    of its counts, and every round's error ("round N: ..."). One round: that round."""
    ran = [r for r in results if r is not None]
    if len(ran) == 1:
        return ran[0]
    errors = [f"round {i}: {r.error}" for i, r in enumerate(results, 1)
              if r is not None and r.error]
    peaks = [r.peak for r in ran if r.peak is not None]
    halves = [r.half for r in ran if r.half is not None]
    return SystemResult(ran[0].name, peak=_combine_phases(peaks), half=_combine_phases(halves),
                        half_rate=statistics.median(r.half_rate for r in ran),
                        error="; ".join(errors) or None)


def _combine_phases(phases: list[PhaseFigures]) -> PhaseFigures | None:
    if not phases:
        return None
    values: dict[str, Any] = {}
    for f in fields(PhaseFigures):
        column = [getattr(p, f.name) for p in phases]
        values[f.name] = (any(column) if f.name == "timed_out" else
                          sum(column) if f.name in _COUNTS else statistics.median(column))
    return replace(phases[0], **values)


def to_json(result: BenchResult) -> dict[str, Any]:
    """The JSON form: figures per system over all rounds (medians; counts summed), each
    system's median ratio to the baseline, every round's figures, the ceiling."""
    from dataclasses import asdict

    def entry(s: SystemResult) -> dict[str, Any]:
        return {"error": s.error, "half_rate": round(s.half_rate, 1),
                "peak": asdict(s.peak) if s.peak else None,
                "half_peak": asdict(s.half) if s.half else None}

    def rounded(ratio: float | None) -> float | None:
        return None if ratio is None else round(ratio, 2)

    systems = {}
    for s in result.systems:
        systems[s.name] = entry(s)
        ratio = rounded(result.median_ratio(s.name))
        if ratio is not None:
            systems[s.name]["throughput_vs_baseline"] = ratio
    return {
        "workload": asdict(result.workload),
        "systems": systems,
        "rounds": [{"round": r.index, "order": list(r.order), "load": r.load,
                    "systems": {s.name: {**entry(s),
                                         "throughput_vs_baseline": rounded(r.ratio(s.name))}
                                for s in r.systems}}
                   for r in result.rounds],
        "ceiling": asdict(result.ceiling) if result.ceiling else None,
    }
