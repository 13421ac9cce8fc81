"""`task-ingress swarm`: the typer command (SPEC §9). Heavy imports happen inside it.

Exit status: 0 every invariant held and the run did something; 1 an invariant broke, or
the run proves nothing (no request sent, every greet failed); 2 could not start (bad
options, unwritable paths, no daemon); 130 interrupted (the report is still written).
"""

from __future__ import annotations

from typing import Annotated

import typer
from task_ingress.runtime.cli_exit import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    UsageProblem,
    check_event_loop_choice,
)
from task_ingress.runtime.preflight import check_actor_base, check_store_writable, check_writable
from task_ingress.runtime.swarm.config import SwarmConfig

EXIT_INVARIANT = EXIT_FAILED
"""An invariant broke, or the run sent nothing."""
EXIT_SETUP = EXIT_USAGE
"""The swarm could not start (bad options, transport unavailable)."""
REPORTS_DIR = "reports"
"""Default folder of the JSON report and the plot (git-ignored in this repository)."""


class SwarmSetupError(UsageProblem):
    """The swarm cannot start: say why in one line (not: an invariant failed)."""


def nats_factory(cfg: SwarmConfig, workdir: str) -> tuple[object, str | None]:
    """`run_swarm`'s transport factory for a swarm over NATS against the daemon of
    `cfg.daemon` (its ready file); SwarmSetupError when that daemon cannot be used."""
    try:
        from task_ingress.runtime.nats.swarm_transport import NatsSwarmTransport
    except ImportError as exc:
        raise SwarmSetupError(
            f"--transport nats needs task_ingress.runtime.nats.swarm_transport, which is "
            f"not available ({exc}); run the default in-process swarm instead") from exc
    workspace = "default"
    if cfg.daemon:
        workspace = _live_daemon(cfg.daemon)
    if not cfg.daemon:
        # The ready file names the daemon's handle and store: without them no request can
        # be addressed and no invariant checked (--nats-url alone used to fail as "cannot
        # reach the daemon over NATS: ValueError(…)" without trying to reach anything).
        raise SwarmSetupError("--transport nats needs --daemon READY_FILE (the daemon's "
                              "handle and store are in it); --nats-url only overrides its "
                              "NATS URL")
    try:
        transport = NatsSwarmTransport(ready_file=cfg.daemon, nats_url=cfg.nats_url,
                                       workspace=workspace)
    except Exception as exc:
        raise SwarmSetupError(f"cannot reach the daemon over NATS: {exc!r}") from exc
    if not transport.store_path():
        transport.close()
        raise SwarmSetupError("the NATS transport does not know the daemon's store file "
                              "(give --daemon READY_FILE): the invariants need it")
    return transport, None


def _live_daemon(ready_file: str) -> str:
    """The workspace the daemon of `ready_file` serves; SwarmSetupError when the file cannot
    be read or its daemon is not running (a stale file: no point waiting for answers)."""
    from task_ingress.runtime.nats.ready import cluster_node, read_live_ready_file

    node = cluster_node(ready_file)
    if node is not None:
        # Its peers would not be trusted (the policy is in the database) and the invariants
        # would look for a store file: a failed run (exit 1) for what is a usage error.
        raise SwarmSetupError(f"--daemon {ready_file}: the daemon is cluster node {node}; "
                              "the swarm drives a single `task-ingress serve` and reads its "
                              "store file; load a cluster with `task-ingress bench --cluster`")
    try:
        return read_live_ready_file(ready_file).workspace
    except FileNotFoundError:
        raise SwarmSetupError(f"--daemon {ready_file}: no such ready file; start the daemon "
                              f"with `task-ingress serve --ready-file {ready_file}`") from None
    except (OSError, ValueError) as exc:
        raise SwarmSetupError(str(exc) if type(exc).__name__ == "DaemonNotRunning" else
                              f"cannot read the daemon's ready file {ready_file}: "
                              f"{exc}") from None


def swarm_command(
    requests: Annotated[int, typer.Option(help="Requests to send (the run ends at this "
                                          "count or --duration).")] = 5000,
    duration: Annotated[float, typer.Option(help="Longest run time, seconds.")] = 60.0,
    peers: Annotated[int, typer.Option(help="Simulated peers.")] = 32,
    channels: Annotated[int, typer.Option(help="Channels per workspace.")] = 8,
    workspaces: Annotated[int, typer.Option(help="Workspaces (NATS: the daemon's one).")] = 1,
    concurrency: Annotated[int, typer.Option(help="Worker threads (at most one per peer).")
                           ] = 16,
    churn: Annotated[float, typer.Option(help="Per request slot, chance a peer leaves or "
                                         "goes silent until it expires.")] = 0.02,
    bad_share: Annotated[float, typer.Option("--bad-share", help="Share of deliberately bad "
                                             "requests.")] = 0.1,
    actor_base: Annotated[str, typer.Option("--actor-base", help="Thespian system base "
                                            "(in-process).")] = "simpleSystemBase",
    process_mode: Annotated[str, typer.Option("--process-mode", help="In-process runtime: "
                                              "inprocess (actors on a thread of this "
                                              "process) or pipeline (in a process of their "
                                              "own).")] = "inprocess",
    store: Annotated[str | None, typer.Option(help="SQLite store file, kept (default: a "
                                              "durable temp file, removed afterwards).")
                     ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the workload mix.")] = 1,
    json_path: Annotated[str, typer.Option("--json", help="JSON report path ('' = none).")
                         ] = f"{REPORTS_DIR}/swarm-report.json",
    plot: Annotated[str, typer.Option(help="PNG plot path ('' = none).")
                    ] = f"{REPORTS_DIR}/swarm-report.png",
    transport: Annotated[str, typer.Option(help="inproc or nats.")] = "inproc",
    nats_url: Annotated[str | None, typer.Option("--nats-url", help="With --daemon: reach "
                                                 "it at this NATS URL instead of its ready "
                                                 "file's.")] = None,
    daemon: Annotated[str | None, typer.Option(help="Ready file of a running daemon "
                                               "(implies --transport nats).")] = None,
    ack_log: Annotated[str | None, typer.Option("--ack-log", help="Append one JSON line per "
                                                "reply here, flushed.")] = None,
    greet_interval: Annotated[float, typer.Option("--greet-interval", help="In-process "
                                                  "runtime's greet interval, seconds.")] = 1.0,
    leave: Annotated[str | None, typer.Option(help="How a churning peer leaves: revoke (a "
                                              "leave message) or silence (it stops "
                                              "greeting and expires, as over NATS). "
                                              "Default: revoke in-process, silence over "
                                              "NATS.")] = None,
    progress: Annotated[bool, typer.Option(help="Live progress display.")] = True,
) -> None:
    """Run a simulated peer swarm, show live progress, print a report, check invariants.

    Exit 0 only when every invariant held and requests were answered; 1 an invariant
    broke or the run sent nothing; 2 could not start; 130 interrupted (report still
    written).
    """
    from rich.console import Console
    from rich.live import Live
    from task_ingress.runtime.swarm import report
    from task_ingress.runtime.swarm.runner import make_inproc, run_swarm
    from task_ingress.runtime.swarm.stats import Snapshot

    out = Console()
    err = Console(stderr=True)
    if daemon:
        transport = "nats"
    try:
        cfg = SwarmConfig(
            requests=requests, duration=duration, peers=peers, channels=channels,
            workspaces=workspaces, concurrency=concurrency, churn=churn, bad_share=bad_share,
            actor_base=actor_base, process_mode=process_mode, store=store, seed=seed,
            json_path=json_path or None,
            plot_path=plot or None, ack_log=ack_log, transport=transport, nats_url=nats_url,
            daemon=daemon, greet_interval=greet_interval, leave=leave, progress=progress,
        )
    except ValueError as exc:
        raise SwarmSetupError(str(exc)) from None
    _preflight(cfg)
    if cfg.transport == "nats":
        check_event_loop_choice()
    factory = nats_factory if cfg.transport == "nats" else make_inproc
    live = Live(console=err, refresh_per_second=4, transient=False) if progress else None

    def tick(snap: Snapshot) -> None:
        if live is not None:
            live.update(report.live_view(snap, cfg.requests))

    if live is not None:
        live.start()
    try:
        result = run_swarm(cfg, factory, tick)  # type: ignore[arg-type]
    finally:
        if live is not None:
            live.stop()
    report.print_summary(result, out)
    if cfg.json_path:
        report.write_json(result, cfg.json_path)
        out.print(f"JSON report: {cfg.json_path}", highlight=False)
    if cfg.plot_path:
        report.write_plot(result, cfg.plot_path)
        out.print(f"plot: {cfg.plot_path}", highlight=False)
    # soft_wrap: a long path stays whole, so it can be copied.
    out.print(_where_the_store_went(cfg, result.store_path), highlight=False, soft_wrap=True)
    if result.interrupted:
        err.print(f"[red]swarm: interrupted after {result.stats.requests:,} of "
                  f"{cfg.requests:,} requests[/red] (the report covers what was sent)",
                  highlight=False)
        raise typer.Exit(EXIT_INTERRUPTED)
    if result.run_problems:
        err.print(f"[red]swarm: FAILED: {'; '.join(result.run_problems)}", highlight=False)
        raise typer.Exit(EXIT_INVARIANT)
    if not result.ok:
        broken = ", ".join(c.name for c in result.checks if not c.ok)
        err.print(f"[red]swarm: invariant(s) broken: {broken}", highlight=False)
        raise typer.Exit(EXIT_INVARIANT)
    out.print("[green]every invariant held")


def _preflight(cfg: SwarmConfig) -> None:
    """Everything that can be refused before anything starts or is written."""
    if cfg.transport == "inproc":
        check_actor_base(cfg.actor_base)
        if cfg.store:
            check_store_writable(cfg.store)
    elif cfg.daemon:
        _live_daemon(cfg.daemon)
    for option, path in (("--json", cfg.json_path), ("--plot", cfg.plot_path),
                         ("--ack-log", cfg.ack_log)):
        if path:
            check_writable(path, option, create_dir=True)


def _where_the_store_went(cfg: SwarmConfig, store_path: str) -> str:
    if cfg.transport == "nats":
        return (f"store: the daemon's, {store_path}; check it with\n"
                f"  task-ingress audit verify --store {store_path}")
    if cfg.store:
        return (f"store kept: {cfg.store}; check it with\n"
                f"  task-ingress audit verify --store {cfg.store}")
    return ("temp store removed; to keep it, pass --store FILE and check it afterwards with\n"
            "  task-ingress audit verify --store FILE")
