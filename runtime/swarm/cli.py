"""`task-ingress swarm`: the typer command (SPEC §9). Heavy imports happen inside it."""

from __future__ import annotations

import os
from typing import Annotated

import typer

EXIT_INVARIANT = 1
"""An invariant broke."""
EXIT_SETUP = 2
"""The swarm could not start (bad options, transport unavailable)."""


class SwarmSetupError(Exception):
    """The swarm cannot start: say why in one line (not: an invariant failed)."""


def _nats_factory(cfg: object, workdir: str) -> tuple[object, str | None]:
    from task_ingress.runtime.swarm.config import SwarmConfig

    assert isinstance(cfg, SwarmConfig)
    try:
        from task_ingress.runtime.nats.swarm_transport import NatsSwarmTransport
    except ImportError as exc:
        raise SwarmSetupError(
            f"--transport nats needs runtime.nats.swarm_transport, which is not available "
            f"({exc}); run the default in-process swarm instead") from exc
    workspace = "default"
    if cfg.daemon:
        from task_ingress.runtime.nats.ready import read_ready_file

        try:
            workspace = read_ready_file(cfg.daemon).workspace
        except (OSError, ValueError) as exc:
            raise SwarmSetupError(f"cannot read the daemon's ready file {cfg.daemon}: "
                                  f"{exc}") from exc
    if not cfg.daemon and not cfg.nats_url:
        raise SwarmSetupError("--transport nats needs --daemon READY_FILE or --nats-url URL")
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
    store: Annotated[str | None, typer.Option(help="SQLite store file (default: a durable "
                                              "temp file, removed afterwards).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the workload mix.")] = 1,
    json_path: Annotated[str, typer.Option("--json", help="JSON report path ('' = none).")
                         ] = "swarm-report.json",
    plot: Annotated[str, typer.Option(help="PNG plot path ('' = none).")] = "swarm-report.png",
    transport: Annotated[str, typer.Option(help="inproc or nats.")] = "inproc",
    nats_url: Annotated[str | None, typer.Option("--nats-url", help="NATS server of a "
                                                 "running daemon.")] = None,
    daemon: Annotated[str | None, typer.Option(help="Ready file of a running daemon "
                                               "(implies --transport nats).")] = None,
    ack_log: Annotated[str | None, typer.Option("--ack-log", help="Append one JSON line per "
                                                "reply here, flushed.")] = None,
    greet_interval: Annotated[float, typer.Option("--greet-interval", help="In-process "
                                                  "runtime's greet interval, seconds.")] = 1.0,
    progress: Annotated[bool, typer.Option(help="Live progress display.")] = True,
) -> None:
    """Run a simulated peer swarm, show live progress, print a report, check invariants.

    Exit 0 only when every invariant held (1: an invariant broke, 2: could not start).
    """
    os.environ.setdefault("TASK_INGRESS_LOG_LEVEL", "warning")
    from rich.console import Console
    from rich.live import Live
    from task_ingress.actors.log import configure
    from task_ingress.runtime.swarm import report
    from task_ingress.runtime.swarm.config import SwarmConfig
    from task_ingress.runtime.swarm.runner import make_inproc, run_swarm
    from task_ingress.runtime.swarm.stats import Snapshot

    configure()
    out = Console()
    err = Console(stderr=True)
    if daemon:
        transport = "nats"
    try:
        cfg = SwarmConfig(
            requests=requests, duration=duration, peers=peers, channels=channels,
            workspaces=workspaces, concurrency=concurrency, churn=churn, bad_share=bad_share,
            actor_base=actor_base, store=store, seed=seed, json_path=json_path or None,
            plot_path=plot or None, ack_log=ack_log, transport=transport, nats_url=nats_url,
            daemon=daemon, greet_interval=greet_interval, progress=progress,
        )
    except ValueError as exc:
        err.print(f"[red]swarm: {exc}")
        raise typer.Exit(EXIT_SETUP) from exc
    factory = _nats_factory if cfg.transport == "nats" else make_inproc
    live = Live(console=err, refresh_per_second=4, transient=False) if progress else None

    def tick(snap: Snapshot) -> None:
        if live is not None:
            live.update(report.live_view(snap, cfg.requests))

    try:
        if live is not None:
            live.start()
        try:
            result = run_swarm(cfg, factory, tick)  # type: ignore[arg-type]
        finally:
            if live is not None:
                live.stop()
    except SwarmSetupError as exc:
        err.print(f"[red]swarm: {exc}")
        raise typer.Exit(EXIT_SETUP) from exc
    report.print_summary(result, out)
    if cfg.json_path:
        report.write_json(result, cfg.json_path)
        out.print(f"JSON report: {cfg.json_path}")
    if cfg.plot_path:
        report.write_plot(result, cfg.plot_path)
        out.print(f"plot: {cfg.plot_path}")
    if not result.ok:
        broken = ", ".join(c.name for c in result.checks if not c.ok)
        err.print(f"[red]swarm: invariant(s) broken: {broken}")
        raise typer.Exit(EXIT_INVARIANT)
    out.print("[green]every invariant held")
