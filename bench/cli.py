"""`task-ingress bench`: the typer command and its side-by-side table."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from rich.console import Console


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
    swarm: Annotated[bool, typer.Option("--swarm", help="Bench the swarm instead "
                                        "(bench/swarm_side.py): in-process and over NATS "
                                        "(serve on loopback) side by side, --rounds times; "
                                        "uses --requests (per swarm), --seed and --json.")
                     ] = False,
    rounds: Annotated[int, typer.Option(help="Rounds, each running every system (with "
                                        "--swarm: every swarm) once, alternating their "
                                        "order; ratios are the medians of the rounds'.")
                      ] = 3,
    churn: Annotated[float, typer.Option(help="--swarm: the swarms' churn (0: the paths "
                                         "themselves; above 0 the expiry waits of leaving "
                                         "peers hold both sides back).")] = 0.0,
) -> None:
    """Side-by-side benchmark: runtime (simple, pipeline, multiproc) vs the lock baseline,
    durable; with --cluster, 1..N cluster daemons side by side; with --swarm, the swarm
    in-process and over NATS side by side."""
    mode = _mode(cluster, swarm)
    _refuse_the_other_modes_options(mode, locals())
    if not 1 <= rounds <= MAX_ROUNDS:  # the default bench's and --swarm's (cluster: refused)
        from task_ingress.runtime.cli_exit import UsageProblem

        raise UsageProblem(f"--rounds 1..{MAX_ROUNDS}")
    if swarm:
        _swarm_bench(requests, rounds, seed, churn, json_path)
        return
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
                       on_phase=lambda what: err.print(f"[dim]bench: {what} ..."),
                       rounds=rounds)
    print_bench(result, out)
    if json_path:
        _write_json(json_path, to_json(result), out)
    if any(s.error for s in result.systems):
        raise typer.Exit(1)


def _write_json(path: str, data: object, out: Console) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2)
        fh.write("\n")
    out.print(f"JSON: {path}")


_USED_BY = {
    "requests": ("single", "swarm"), "threads": ("single", "cluster"), "channels": ("single",),
    "peers": ("single",), "seed": ("single", "swarm"), "systems": ("single",),
    "budget": ("single",), "half_peak": ("single",), "ceiling_seconds": ("single",),
    "daemons": ("cluster",), "seconds": ("cluster",), "rounds": ("single", "swarm"),
    "churn": ("swarm",),
}
"""Which modes use each option (--json: all; --database is not checked, it may come from
the environment)."""
_FLAGS = {"requests": "--requests", "threads": "--threads", "channels": "--channels",
          "peers": "--peers", "seed": "--seed", "systems": "--systems", "budget": "--budget",
          "half_peak": "--no-half-peak", "ceiling_seconds": "--ceiling-seconds",
          "daemons": "--daemons", "seconds": "--seconds", "rounds": "--rounds",
          "churn": "--churn"}
_MODE_FLAG = {"cluster": "--cluster", "swarm": "--swarm"}
MAX_ROUNDS = 20
"""A round of the default bench runs every system once (~50 s at the defaults on 2 cores);
one of --swarm runs two swarms (three with churn): 15-40 s."""


def _mode(cluster: bool, swarm: bool) -> str:
    from task_ingress.runtime.cli_exit import UsageProblem

    if cluster and swarm:
        raise UsageProblem("--cluster and --swarm are two different benches: give one")
    return "cluster" if cluster else "swarm" if swarm else "single"


def _refuse_the_other_modes_options(mode: str, given: dict[str, object]) -> None:
    """Raise UsageProblem for an option the chosen mode ignores: the run would not measure
    what was asked, and say so only minutes later (serve refuses --shards without --cluster
    the same way). An option is taken as given when it differs from its default."""
    import inspect

    from task_ingress.runtime.cli_exit import UsageProblem

    defaults = {name: p.default for name, p in inspect.signature(bench_command).parameters.items()}
    stray = [name for name, modes in _USED_BY.items()
             if mode not in modes and given[name] != defaults[name]]
    if not stray:
        return
    flags = ", ".join(_FLAGS[name] for name in stray)
    them = "it" if len(stray) == 1 else "them"
    if mode in _MODE_FLAG:
        raise UsageProblem(f"{flags}: not used with {_MODE_FLAG[mode]}; drop {them} or run "
                           f"without {_MODE_FLAG[mode]}")
    modes = " or ".join(sorted({_MODE_FLAG[m] for name in stray for m in _USED_BY[name]
                                if m in _MODE_FLAG}))
    raise UsageProblem(f"{flags}: only for {modes}; drop {them} or add {modes}")


def _swarm_bench(requests: int, rounds: int, seed: int, churn: float,
                 json_path: str | None) -> None:
    """`bench --swarm`: run the rounds, print the table, write the JSON; exit 1 when a swarm
    failed (its invariants, or it could not run)."""
    from rich.console import Console
    from task_ingress.bench.report import print_swarm_bench
    from task_ingress.bench.swarm_side import run_swarm_bench
    from task_ingress.runtime.cli_exit import UsageProblem, check_event_loop_choice
    from task_ingress.runtime.preflight import check_writable

    if requests < 1:
        raise UsageProblem("--requests must be at least 1")
    if not 0.0 <= churn <= 1.0:
        raise UsageProblem("--churn is a fraction in 0..1")
    check_event_loop_choice()
    if json_path:
        check_writable(json_path, "--json")
    out = Console(width=max(Console().width, 132))  # the side-by-side table is wide
    err = Console(stderr=True)
    bench = run_swarm_bench(requests, rounds, seed, churn,
                            on_phase=lambda what: err.print(f"[dim]bench --swarm: {what} ..."))
    print_swarm_bench(bench, out)
    if json_path:
        _write_json(json_path, bench.to_json(), out)
    if bench.failures:
        raise typer.Exit(1)
