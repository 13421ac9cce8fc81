"""The swarm's outputs: the end-of-run table, the JSON report and the PNG plot."""

from __future__ import annotations

import json
import os
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from task_ingress.runtime.swarm.runner import ALL_BAD_KINDS, SwarmResult
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
            "bad_share": cfg.bad_share, "actor_base": cfg.actor_base,
            "process_mode": cfg.process_mode, "seed": cfg.seed,
            "transport": result.transport, "greet_interval": result.greet_interval,
            "store": cfg.store, "leave": "revoke" if result.leave_revokes else "silence",
        },
        "unsent_bad_kinds": dict(result.unsent_notes),
        "run_problems": result.run_problems,
        "interrupted": result.interrupted,
        "ok": result.ok,
    }


def _parent(path: str) -> None:
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)


def write_json(result: SwarmResult, path: str) -> None:
    """Write the JSON report (its folder is created if missing)."""
    _parent(path)
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(to_json(result), fh, indent=2)
        fh.write("\n")


LIVE_BAR = 12
"""Columns of the live progress bar: the figures come first and the whole display fits
80 columns."""


def live_view(snap: Snapshot, total: int) -> Group:
    """The live progress display, two lines that fit 80 columns: the figures (time, sent,
    rate, latency, errors), then a short bar and the outcome counts."""
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    figures = Text.assemble(
        (f"{snap.elapsed:5.1f}s", "bold"), f"  {snap.requests:,}/{total:,}",
        (f"  {snap.rate:,.0f} req/s", "cyan"),
        f"  p50 {_ms(snap.p50_ms)}  p99 {_ms(snap.p99_ms)}",
        (f"  {snap.errors:,} errors", "red" if snap.errors else ""),
    )
    counts = Text.assemble(
        (f" accepted {snap.accepted:,}", "green"), (f"  rejected {snap.rejected:,}", "yellow"),
        f"  greets {snap.greets:,}  leaves {snap.leaves:,}",
    )
    row = Table.grid()
    row.add_column(width=LIVE_BAR)
    row.add_column()
    row.add_row(ProgressBar(total=max(total, 1), completed=min(snap.requests, total),
                            width=LIVE_BAR), counts)
    return Group(figures, row)


def _ms(value: float) -> str:
    """A latency, short: one decimal below 100 ms."""
    return f"{value:.1f} ms" if value < 100 else f"{value:,.0f} ms"


def _figures(result: SwarmResult) -> Table:
    s = result.stats
    cfg = result.config
    ws = "workspace" if cfg.workspaces == 1 else "workspaces"
    table = Table(title=f"swarm: {s.requests:,} requests in {result.elapsed:.1f} s",
                  show_header=False, title_justify="left")
    table.add_column("figure", no_wrap=True)
    table.add_column("value", justify="right")
    q = s.percentile_ms
    rows = [
        ("peers", f"{cfg.peers} in {cfg.channels} channels, {cfg.workspaces} {ws}"),
        ("workers", f"{result.workers}"),
        ("runtime", f"{result.transport}, {cfg.actor_base}"
                    + (f", {cfg.process_mode}" if result.transport == "inproc" else "")),
        ("accepted / rejected", f"{s.accepted:,} / {s.rejected:,}"),
        ("no reply (errors)", f"{s.errors:,}"),
        ("throughput", f"{result.throughput:,.0f} req/s"),
        ("latency p50 / p90 / p99", f"{q(50):.2f} / {q(90):.2f} / {q(99):.2f} ms"),
        ("latency p99.9 / max", f"{q(99.9):.2f} / {s.max_ms():.2f} ms"),
        ("greets / leaves / failed", f"{s.greets:,} / {s.leaves:,} / {s.presence_errors:,}"
                                     + ("" if result.leave_revokes else " (leave = silence)")),
        ("RSS start -> end", f"{result.rss_start_mb:.0f} -> {result.rss_end_mb:.0f} MB"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table


def _reasons(result: SwarmResult) -> Table:
    s = result.stats
    table = Table(title="outcomes", title_justify="left")
    table.add_column("outcome", no_wrap=True)
    table.add_column("count", justify="right")
    table.add_row("[green]accepted", f"{s.accepted:,}")
    for reason, count in sorted(s.reasons.items(), key=lambda kv: -kv[1]):
        table.add_row(f"[yellow]{reason}", f"{count:,}")
    return table


def _bad(result: SwarmResult) -> Table:
    s = result.stats
    table = Table(title="deliberately bad requests", title_justify="left")
    table.add_column("kind", no_wrap=True)
    table.add_column("sent", justify="right")
    table.add_column("refused", justify="right")
    table.add_column("note")
    for kind in ALL_BAD_KINDS:
        sent = s.bad_sent[kind]
        note = result.unsent_notes.get(kind, "")
        if sent and s.bad_as_expected[kind] != sent:
            note = "some got another reason than expected"
        table.add_row(kind, f"{sent:,}", f"{s.bad_as_expected[kind]:,}", note)
    return table


def _invariants(result: SwarmResult) -> Table:
    table = Table(title="invariants", title_justify="left")
    table.add_column("held", no_wrap=True)
    table.add_column("invariant and detail")
    for c in result.checks:
        text = f"[bold]{c.name}[/bold]\n{c.detail}"
        if not c.ok:
            text += "".join(f"\n- {e}" for e in c.examples)
        table.add_row("[green]yes" if c.ok else "[red]NO", text)
    return table


def summary(result: SwarmResult) -> Group:
    """The end-of-run tables, each made for 80 columns: figures, outcomes by reason, the
    bad requests (with why a kind was not sent), the invariants (detail folded under the
    name)."""
    return Group(_figures(result), _reasons(result), _bad(result), _invariants(result))


def print_summary(result: SwarmResult, console: Console) -> None:
    """Print the end-of-run tables, and examples of calls that failed."""
    console.print(summary(result))
    s = result.stats
    for what in s.error_examples[:3] + s.presence_error_examples[:3]:
        console.print(f"[red]failed call:[/red] {what}", markup=True, highlight=False)


def draw_plot(result: SwarmResult) -> Any:
    """The plot as a matplotlib Figure (the caller closes it): throughput (top) and latency
    p50/p99 (bottom) per timeline bucket, both axes from 0 (quarter-second buckets in the
    first 15 s, so a short run still gets a curve)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = result.stats.timeline
    xs = [p.start + p.span for p in points]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    # A last bucket cut to a few ms would plot its handful of answers as a spike of rate.
    rated = [p for p in points if p.span >= p.RATE_MIN_SPAN]
    rated_xs = [p.start + p.span for p in rated]
    top.plot(rated_xs, [p.requests / p.span for p in rated], label="answered/s", marker=".")
    top.plot(rated_xs, [p.accepted / p.span for p in rated], label="accepted/s", marker=".")
    top.set_ylabel("requests / s")
    top.set_ylim(bottom=0)
    top.legend(loc="lower right")
    top.grid(alpha=0.3)
    bottom.plot(xs, [p.p50_ms for p in points], label="p50", marker=".")
    bottom.plot(xs, [p.p99_ms for p in points], label="p99", marker=".")
    bottom.set_ylabel("latency (ms)")
    bottom.set_ylim(bottom=0)
    bottom.set_xlim(left=0)
    bottom.set_xlabel("seconds into the run")
    bottom.legend(loc="upper right")
    bottom.grid(alpha=0.3)
    cfg = result.config
    fig.suptitle(f"task-ingress swarm: {result.stats.requests:,} requests, "
                 f"{result.throughput:,.0f} req/s, {cfg.actor_base}")
    fig.tight_layout()
    return fig


def write_plot(result: SwarmResult, path: str) -> None:
    """Write `draw_plot`'s figure as a PNG (its folder is created if missing)."""
    import matplotlib.pyplot as plt

    fig = draw_plot(result)
    try:
        _parent(path)
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
