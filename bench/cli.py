"""`task-ingress bench`: the typer command and its side-by-side table."""

from __future__ import annotations

import json
from typing import Annotated

import typer


def bench_command(
    requests: Annotated[int, typer.Option(help="Requests per system in the peak phase "
                                          "(half as many at half peak).")] = 6000,
    threads: Annotated[int, typer.Option(help="Client threads.")] = 16,
    channels: Annotated[int, typer.Option(help="Channels.")] = 8,
    peers: Annotated[int, typer.Option(help="Writer peers (spread over the channels).")] = 32,
    seed: Annotated[int, typer.Option(help="Seed of the request stream.")] = 1,
    systems: Annotated[str, typer.Option(help="Comma list of runtime-simple, "
                                         "runtime-pipeline, runtime-multiproc, baseline, "
                                         "daemon-nats (serve over NATS on loopback), "
                                         "daemon-nats-pipeline (its runtime in pipeline "
                                         "mode).")
                       ] = "runtime-simple,runtime-pipeline,runtime-multiproc,baseline",
    budget: Annotated[float, typer.Option(help="Longest phase, seconds (then it stops and "
                                          "is marked timed out).")] = 30.0,
    half_peak: Annotated[bool, typer.Option(help="Also run the half-peak latency phase.")
                         ] = True,
    ceiling_seconds: Annotated[float, typer.Option("--ceiling-seconds", help="Seconds per "
                                                   "SQLite ceiling measurement (0 = skip).")
                               ] = 1.5,
    json_path: Annotated[str | None, typer.Option("--json", help="Write the JSON here.")
                         ] = None,
    cluster: Annotated[bool, typer.Option("--cluster", help="Bench cluster daemons instead "
                                          "(bench/cluster_cli.py): accepted/s for each "
                                          "--daemons count; uses --threads and --json.")
                       ] = False,
    database: Annotated[str | None, typer.Option(
        envvar="TASK_INGRESS_DATABASE", help="--cluster: a PostgreSQL server URL where this "
        "user may CREATE DATABASE (one fresh database per daemon count).")] = None,
    daemons: Annotated[str, typer.Option(help="--cluster: daemon counts, comma list.")
                       ] = "1,2,3",
    seconds: Annotated[float, typer.Option(help="--cluster: seconds of load per count.")
                       ] = 10.0,
) -> None:
    """Side-by-side benchmark: runtime (simple, multiproc) vs the lock baseline, durable;
    or, with --cluster, 1..N cluster daemons side by side."""
    _refuse_the_other_modes_options(cluster, locals())
    if cluster:
        from task_ingress.bench.cluster_cli import cluster_bench

        cluster_bench(database, daemons, seconds, threads, json_path)
        return
    from rich.console import Console
    from task_ingress.bench.report import print_bench
    from task_ingress.bench.runner import SYSTEMS, run_bench, to_json
    from task_ingress.bench.workload import Workload
    from task_ingress.runtime.cli_exit import UsageProblem, check_event_loop_choice
    from task_ingress.runtime.preflight import check_writable

    out = Console(width=max(Console().width, 132))  # the side-by-side table is wide
    err = Console(stderr=True)
    chosen = tuple(s.strip() for s in systems.split(",") if s.strip())
    unknown = [s for s in chosen if s not in SYSTEMS]
    if unknown or not chosen:
        raise UsageProblem(f"--systems {systems!r}: unknown system(s) "
                           f"{', '.join(unknown) or '(none given)'}; give a comma list of "
                           f"{', '.join(SYSTEMS)}")
    if min(requests, threads, channels, peers) < 1:
        raise UsageProblem("--requests, --threads, --channels and --peers must be at least 1")
    if any(s.startswith("daemon-") for s in chosen):
        check_event_loop_choice()
    if json_path:
        check_writable(json_path, "--json")
    w = Workload(requests=requests, threads=threads, channels=channels, peers=peers, seed=seed)
    result = run_bench(w, chosen, budget, half_peak, ceiling_seconds,
                       on_phase=lambda what: err.print(f"[dim]bench: {what} ..."))
    print_bench(result, out)
    if json_path:
        with open(json_path, "w", encoding="utf-8") as fh:
            json.dump(to_json(result), fh, indent=2)
            fh.write("\n")
        out.print(f"JSON: {json_path}")
    if any(s.error for s in result.systems):
        raise typer.Exit(1)


_SINGLE_ONLY = {"requests": "--requests", "channels": "--channels", "peers": "--peers",
                "seed": "--seed", "systems": "--systems", "budget": "--budget",
                "half_peak": "--no-half-peak", "ceiling_seconds": "--ceiling-seconds"}
_CLUSTER_ONLY = {"daemons": "--daemons", "seconds": "--seconds"}


def _refuse_the_other_modes_options(cluster: bool, given: dict[str, object]) -> None:
    """Raise UsageProblem for an option the chosen mode ignores: the run would not measure
    what was asked, and say so only minutes later (serve refuses --shards without --cluster
    the same way). An option is taken as given when it differs from its default."""
    import inspect

    from task_ingress.runtime.cli_exit import UsageProblem

    defaults = {name: p.default for name, p in inspect.signature(bench_command).parameters.items()}
    options = _SINGLE_ONLY if cluster else _CLUSTER_ONLY
    stray = [flag for name, flag in options.items() if given[name] != defaults[name]]
    if stray:
        where = "not used with --cluster" if cluster else "only for --cluster"
        fix = "run without --cluster" if cluster else "add --cluster"
        raise UsageProblem(f"{', '.join(stray)}: {where}; drop "
                           f"{'it' if len(stray) == 1 else 'them'} or {fix}")
