"""The bench's side-by-side table."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from task_ingress.bench.runner import BenchResult
from task_ingress.bench.swarm_side import SideRun, SwarmBench, pairs, sides


def print_bench(result: BenchResult, console: Console) -> None:
    """Throughput, p50/p99 at peak and at half peak, ratios to the baseline, the ceiling."""
    w = result.workload
    n = len(result.rounds)
    table = Table(title=(f"task-ingress bench: {w.requests:,} requests, {w.threads} threads, "
                         f"{w.peers} peers, {w.channels} channels, durable file stores"
                         + (f"; medians of {n} rounds" if n > 1 else "")))
    table.add_column("system", no_wrap=True, min_width=17)
    for col in ("req/s", "x base", "p50", "p99", "half req/s", "half p50", "half p99",
                "CPU/req", "runtime CPU/req", "failed"):
        table.add_column(col, justify="right")
    table.caption = ("latencies and CPU per request in ms (CPU: every process; runtime "
                     "CPU: without the bench's client work); half = open loop at half the "
                     "peak rate, latency from the scheduled send"
                     + ("; x base: the median of each round's ratio, failed: all rounds'"
                        if n > 1 else ""))
    for s in result.systems:
        if s.peak is None:
            table.add_row(s.name, "[red]" + (s.error or "no result"), *[""] * 9)
            continue
        p, h = s.peak, s.half
        median = result.median_ratio(s.name)
        ratio = "-" if median is None else f"{median:.2f}"
        table.add_row(
            s.name, f"{p.throughput:,.0f}" + (" (timed out)" if p.timed_out else ""), ratio,
            f"{p.p50_ms:.2f}", f"{p.p99_ms:.2f}",
            f"{h.throughput:,.0f}" if h else "-", f"{h.p50_ms:.2f}" if h else "-",
            f"{h.p99_ms:.2f}" if h else "-", f"{p.cpu_ms_per_request:.2f}",
            f"{p.runtime_cpu_ms_per_request:.2f}",
            str(p.failed + (h.failed if h else 0)),
        )
    console.print(table)
    batches = batch_line(result)
    if batches:
        console.print(batches)
    if n > 1:
        console.print(_rounds_table(result))
    for s in result.systems:
        if s.error:
            console.print(f"[red]{s.name}: {s.error}")
    if result.ceiling:
        c = result.ceiling
        console.print(f"SQLite durable ceiling (WAL, synchronous=FULL): "
                      f"{c.single_commits_per_s:,.0f} commits/s one row per transaction; "
                      f"{c.batched_rows_per_s:,.0f} rows/s in batches of {c.batch_size}")


def batch_line(result: BenchResult) -> str:
    """Each runtime's mean batch and runtime CPU per request, at peak and at half peak: a
    batching runtime's cost per request grows as its batches shrink, so half of the peak
    rate can ask more than half of its capacity ('' when no system reported batches)."""
    parts = [f"{s.name} {s.peak.mean_batch:.1f} -> {s.half.mean_batch:.1f} calls, "
             f"{s.peak.runtime_cpu_ms_per_request:.2f} -> "
             f"{s.half.runtime_cpu_ms_per_request:.2f} ms"
             for s in result.systems
             if s.peak is not None and s.half is not None and s.peak.mean_batch > 0]
    if not parts:
        return ""
    return ("mean batch (calls per hand-off to the actors) and runtime CPU/req, peak -> "
            "half peak: " + "; ".join(parts))


def _rounds_table(result: BenchResult) -> Table:
    """Each round's peak req/s per system and its ratio to the baseline of the same round."""
    names = [s.name for s in result.systems]
    table = Table(title="rounds (odd: systems in the order given, even: reversed)",
                  caption="load: 1-minute load average when the round began (the bench's "
                  "own earlier rounds count in it)")
    table.add_column("round", justify="right")
    table.add_column("load", justify="right")
    for name in names:  # "runtime-" left out: seven full names do not fit 132 columns
        table.add_column(f"{name.removeprefix('runtime-')}\nreq/s", justify="right")
    ratios = [name for name in names if name != "baseline"]
    for name in ratios:
        table.add_column(f"{name.removeprefix('runtime-')}\nx base", justify="right")
    for rnd in result.rounds:
        cells = []
        for name in names:
            ran = rnd.by_name(name)
            cells.append("-" if ran is None or ran.peak is None else
                         f"{ran.peak.throughput:,.0f}" + (" [red]failed" if ran.error else ""))
        for name in ratios:
            ratio = rnd.ratio(name)
            cells.append("-" if ratio is None else f"{ratio:.2f}")
        table.add_row(str(rnd.index), f"{rnd.load:.1f}", *cells)
    return table


def print_swarm_bench(bench: SwarmBench, console: Console) -> None:
    """Each round's swarms (req/s), the ratios per round and their medians."""
    churned = bench.churn > 0

    def label(side: str) -> str:  # without churn the one in-process swarm needs no qualifier
        return side if churned else side.removesuffix("-revoke")

    table = Table(title=(f"task-ingress bench --swarm: {bench.requests:,} requests per swarm, "
                         f"churn {bench.churn:g}, seed {bench.seed}, swarm defaults "
                         f"otherwise"))
    table.add_column("round", justify="right")
    table.add_column("load", justify="right")
    shown = sides(bench.churn)
    for side in shown:
        table.add_column(f"{label(side)} req/s", justify="right")
    ratios = pairs(bench.churn)
    for a, b in ratios:
        table.add_column(f"{a} x {label(b)}", justify="right")
    table.caption = (
        "like for like: nats x inproc-silence (both swarms' peers sit out their expiry "
        "after a leave, which caps both: see bench/swarm_side.py); nats x inproc-revoke "
        "compares two different workloads; load: 1-minute load average at the round's start"
        if churned else "the same workload on both sides (churn 0: no peer leaves); load: "
        "1-minute load average at the round's start")

    def cell(run: SideRun | None) -> str:
        if run is None:
            return "-"
        return f"{run.throughput:,.0f}" if run.ok else f"[red]{run.throughput:,.0f} FAILED"

    def ratio(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    for rnd in bench.rounds:
        table.add_row(str(rnd.index), f"{rnd.load:.1f}",
                      *[cell(rnd.runs.get(side)) for side in shown],
                      *[ratio(rnd.ratio(pair)) for pair in ratios])
    table.add_row("median", "", *[""] * len(shown),
                  *[ratio(bench.median(pair)) for pair in ratios], style="bold")
    console.print(table)
    cpu = []
    for side in shown:
        got = bench.median_cpu(side)
        if got is not None:
            own, daemon = got
            cpu.append(f"{side} {own:.2f}" if daemon is None else
                       f"{side}: client {own:.2f} + serve and its nats-server {daemon:.2f}")
    if cpu:
        console.print("CPU per request, ms (medians; whole runs: start, swarm, checks): "
                      + "; ".join(cpu), highlight=False)
    for failure in bench.failures:
        console.print(f"[red]{failure}", highlight=False)
