"""The swarm's outputs: the end-of-run table, the JSON report and the PNG plot."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from task_ingress.runtime.swarm.runner import SwarmResult
from task_ingress.runtime.swarm.stats import Snapshot


def to_json(result: SwarmResult) -> dict[str, Any]:
    """The JSON report: SPEC §9's keys plus RSS, config and per-invariant detail."""
    s = result.stats
    cfg = result.config
    return {
        "requests": s.requests,
        "accepted": s.accepted,
        "rejected": s.rejected,
        "errors": s.errors,
        "throughput": round(result.throughput, 1),
        "elapsed_s": round(result.elapsed, 3),
        "latency_ms": {
            "p50": s.percentile_ms(50), "p90": s.percentile_ms(90),
            "p99": s.percentile_ms(99), "p999": s.percentile_ms(99.9), "max": s.max_ms(),
        },
        "reasons": dict(sorted(s.reasons.items())),
        "invariants": {c.name: c.ok for c in result.checks},
        "invariant_details": {c.name: {"ok": c.ok, "detail": c.detail,
                                       "examples": list(c.examples)} for c in result.checks},
        "bad_requests": {k: {"sent": v, "rejected_as_expected": s.bad_as_expected[k]}
                         for k, v in sorted(s.bad_sent.items())},
        "presence": {"greets": s.greets, "leaves": s.leaves, "failed": s.presence_errors,
                     "failed_examples": list(s.presence_error_examples)},
        "error_examples": list(s.error_examples),
        "rss_start_mb": round(result.rss_start_mb, 1),
        "rss_end_mb": round(result.rss_end_mb, 1),
        "rss_timeline": [list(p) for p in result.rss_timeline],
        "timeline": [vars(p) for p in s.timeline],
        "config": {
            "requests": cfg.requests, "duration": cfg.duration, "peers": cfg.peers,
            "channels": cfg.channels, "workspaces": cfg.workspaces,
            "concurrency": cfg.concurrency, "workers": result.workers, "churn": cfg.churn,
            "bad_share": cfg.bad_share, "actor_base": cfg.actor_base, "seed": cfg.seed,
            "transport": result.transport, "greet_interval": result.greet_interval,
            "store": cfg.store,
        },
        "ok": result.ok,
    }


def write_json(result: SwarmResult, path: str) -> None:
    """Write the JSON report."""
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(to_json(result), fh, indent=2)
        fh.write("\n")


def live_view(snap: Snapshot, total: int) -> Group:
    """The live progress display: a bar and one line of figures."""
    from rich.progress_bar import ProgressBar
    from rich.text import Text

    line = Text.assemble(
        (f"{snap.elapsed:5.1f}s ", "bold"), f"{snap.requests:,}/{total:,} sent  ",
        (f"{snap.rate:,.0f} req/s  ", "cyan"),
        f"p50 {snap.p50_ms:.1f} ms  p99 {snap.p99_ms:.1f} ms  ",
        (f"accepted {snap.accepted:,}  ", "green"), (f"rejected {snap.rejected:,}  ", "yellow"),
        (f"errors {snap.errors:,}  ", "red" if snap.errors else ""),
        f"greets {snap.greets:,} leaves {snap.leaves:,}",
    )
    return Group(ProgressBar(total=max(total, 1), completed=min(snap.requests, total),
                             width=60), line)


def summary(result: SwarmResult) -> Group:
    """The end-of-run tables: figures, outcomes by reason, bad requests, invariants."""
    s = result.stats
    cfg = result.config
    head = Table(title=(f"swarm: {cfg.peers} peers, {cfg.channels} channels, "
                        f"{cfg.workspaces} workspace(s), {result.workers} workers, "
                        f"{result.transport}/{cfg.actor_base}"))
    head.add_column("figure")
    head.add_column("value", justify="right")
    rows = [
        ("requests", f"{s.requests:,}"), ("accepted", f"{s.accepted:,}"),
        ("rejected", f"{s.rejected:,}"), ("errors (no reply)", f"{s.errors:,}"),
        ("elapsed", f"{result.elapsed:.2f} s"), ("throughput", f"{result.throughput:,.0f} req/s"),
        ("latency p50", f"{s.percentile_ms(50):.2f} ms"),
        ("latency p90", f"{s.percentile_ms(90):.2f} ms"),
        ("latency p99", f"{s.percentile_ms(99):.2f} ms"),
        ("latency p99.9", f"{s.percentile_ms(99.9):.2f} ms"),
        ("latency max", f"{s.max_ms():.2f} ms"),
        ("greets / leaves", f"{s.greets:,} / {s.leaves:,}"),
        ("greets/leaves failed", f"{s.presence_errors:,}"),
        ("RSS start -> end", f"{result.rss_start_mb:.1f} -> {result.rss_end_mb:.1f} MB"),
    ]
    for name, value in rows:
        head.add_row(name, value)
    reasons = Table(title="outcomes by reason")
    reasons.add_column("outcome")
    reasons.add_column("count", justify="right")
    reasons.add_row("[green]accepted", f"{s.accepted:,}")
    for reason, count in sorted(s.reasons.items(), key=lambda kv: -kv[1]):
        reasons.add_row(f"[yellow]{reason}", f"{count:,}")
    bad = Table(title="deliberately bad requests")
    for col in ("kind", "sent", "rejected as expected"):
        bad.add_column(col, justify="right" if col != "kind" else "left")
    for kind, sent in sorted(s.bad_sent.items()):
        bad.add_row(kind, f"{sent:,}", f"{s.bad_as_expected[kind]:,}")
    inv = Table(title="invariants")
    for col in ("invariant", "held", "detail"):
        inv.add_column(col)
    for c in result.checks:
        detail = c.detail + ("".join(f"\n  {e}" for e in c.examples) if not c.ok else "")
        inv.add_row(c.name, "[green]yes" if c.ok else "[red]NO", detail)
    return Group(head, reasons, bad, inv)


def print_summary(result: SwarmResult, console: Console) -> None:
    """Print the end-of-run tables, and examples of calls that failed."""
    console.print(summary(result))
    s = result.stats
    for what in s.error_examples[:3] + s.presence_error_examples[:3]:
        console.print(f"[red]failed call: {what}")


def write_plot(result: SwarmResult, path: str) -> None:
    """PNG: throughput (top) and latency p50/p99 (bottom) per second of the run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = result.stats.timeline
    xs = [p.second + p.span for p in points]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    try:
        top.plot(xs, [p.requests / p.span for p in points], label="answered/s", marker=".")
        top.plot(xs, [p.accepted / p.span for p in points], label="accepted/s", marker=".")
        top.set_ylabel("requests / s")
        top.legend(loc="lower right")
        top.grid(alpha=0.3)
        bottom.plot(xs, [p.p50_ms for p in points], label="p50", marker=".")
        bottom.plot(xs, [p.p99_ms for p in points], label="p99", marker=".")
        bottom.set_ylabel("latency (ms)")
        bottom.set_xlabel("seconds into the run")
        bottom.legend(loc="upper right")
        bottom.grid(alpha=0.3)
        cfg = result.config
        fig.suptitle(f"task-ingress swarm: {result.stats.requests:,} requests, "
                     f"{result.throughput:,.0f} req/s, {cfg.actor_base}")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
