"""The bench's side-by-side table."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from task_ingress.bench.runner import BenchResult


def print_bench(result: BenchResult, console: Console) -> None:
    """Throughput, p50/p99 at peak and at half peak, ratios to the baseline, the ceiling."""
    w = result.workload
    base = result.by_name("baseline")
    base_tp = base.peak.throughput if base and base.peak else 0.0
    table = Table(title=(f"task-ingress bench: {w.requests:,} requests, {w.threads} threads, "
                         f"{w.peers} peers, {w.channels} channels, durable file stores"))
    table.add_column("system", no_wrap=True, min_width=17)
    for col in ("req/s", "x base", "p50", "p99", "half req/s", "half p50", "half p99",
                "CPU/req", "runtime CPU/req", "failed"):
        table.add_column(col, justify="right")
    table.caption = ("latencies and CPU per request in ms (CPU: every process; runtime "
                     "CPU: without the bench's client work); half = open loop at half the "
                     "peak rate, latency from the scheduled send")
    for s in result.systems:
        if s.peak is None:
            table.add_row(s.name, "[red]" + (s.error or "no result"), *[""] * 9)
            continue
        p, h = s.peak, s.half
        ratio = f"{p.throughput / base_tp:.2f}" if base_tp else "-"
        table.add_row(
            s.name, f"{p.throughput:,.0f}" + (" (timed out)" if p.timed_out else ""), ratio,
            f"{p.p50_ms:.2f}", f"{p.p99_ms:.2f}",
            f"{h.throughput:,.0f}" if h else "-", f"{h.p50_ms:.2f}" if h else "-",
            f"{h.p99_ms:.2f}" if h else "-", f"{p.cpu_ms_per_request:.2f}",
            f"{p.runtime_cpu_ms_per_request:.2f}",
            str(p.failed + (h.failed if h else 0)),
        )
    console.print(table)
    for s in result.systems:
        if s.error:
            console.print(f"[red]{s.name}: {s.error}")
    if result.ceiling:
        c = result.ceiling
        console.print(f"SQLite durable ceiling (WAL, synchronous=FULL): "
                      f"{c.single_commits_per_s:,.0f} commits/s one row per transaction; "
                      f"{c.batched_rows_per_s:,.0f} rows/s in batches of {c.batch_size}")
