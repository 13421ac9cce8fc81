"""`task-ingress serve`: the daemon over NATS (SPEC §9). Imports stay cheap until it runs."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer


def serve(
    nats_url: str | None = typer.Option(None, help=(
        "NATS server URL; none: start a local nats-server on a free loopback port "
        "with a generated token. Env: TASK_INGRESS_NATS_URL.")),
    nats_token: str | None = typer.Option(None, help=(
        "Token for --nats-url. Env: TASK_INGRESS_NATS_TOKEN (preferred: not in ps).")),
    store: str | None = typer.Option(None, help="SQLite store path (default: task-ingress.db)."),
    workspace: str | None = typer.Option(None, help="Workspace served (default: default)."),
    channel: Annotated[list[str] | None, typer.Option("--channel", help=(
        "Channel to serve (repeatable); none: every channel of the workspace."))] = None,
    peer_id: str | None = typer.Option(None, help="The daemon's peer ID (default: task-ingress)."),
    nickname: str | None = typer.Option(None, help=(
        "Nickname of the daemon's verified handle (default: task-ingress).")),
    key_file: str | None = typer.Option(None, help=(
        "The daemon's Ed25519 key, created if missing (default: <store>.peer.key).")),
    trust_file: str | None = typer.Option(None, help=(
        "Trust policy: verified handles allowed task.write (default: <store>.trust.json).")),
    metrics_port: int | None = typer.Option(None, help=(
        "Serve /metrics and /ready on this loopback port (default: 0 = off).")),
    ready_file: str | None = typer.Option(None, help="Write this JSON file once serving."),
    greet_interval: float | None = typer.Option(None, help="Seconds (default: 30); expiry at 2x."),
    actor_base: str | None = typer.Option(None, help="Thespian base (default: simpleSystemBase)."),
    drain_timeout: float | None = typer.Option(
        None, help="Seconds to answer in-flight (default: 10)."),
    peer_rate: float | None = typer.Option(None, help=(
        "Per-peer requests/second before `overloaded` (default: 500; 0 = no limit).")),
    peer_burst: float | None = typer.Option(None, help="Per-peer burst (default: 1000)."),
    max_in_flight_per_peer: int | None = typer.Option(None, help=(
        "Unanswered requests of one peer per channel (default: 16).")),
    log_level: str | None = typer.Option(None, help=(
        "JSON log level on stderr (default: env TASK_INGRESS_LOG_LEVEL, else warning; "
        "info logs every outcome).")),
) -> None:
    """Serve task ingress over NATS (AGH network v0 and v1) until SIGTERM/SIGINT; drain, exit 0."""
    import os

    # Every outcome is in the audit log; one info line per request would flood a terminal.
    if log_level:
        os.environ["TASK_INGRESS_LOG_LEVEL"] = log_level
    else:
        os.environ.setdefault("TASK_INGRESS_LOG_LEVEL", "warning")
    from pydantic import ValidationError
    from task_ingress.runtime.nats.daemon import Daemon
    from task_ingress.runtime.nats.settings import ServeSettings

    given: dict[str, Any] = {
        "nats_url": nats_url, "nats_token": nats_token, "store": store,
        "workspace": workspace, "channels": channel or None, "peer_id": peer_id,
        "trust_file": trust_file, "nickname": nickname, "key_file": key_file,
        "metrics_port": metrics_port, "ready_file": ready_file,
        "greet_interval": greet_interval, "actor_base": actor_base,
        "drain_timeout": drain_timeout, "peer_rate": peer_rate, "peer_burst": peer_burst,
        "max_in_flight_per_peer": max_in_flight_per_peer,
    }
    try:
        settings = ServeSettings(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:
        typer.echo(f"invalid settings: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo("task-ingress serve: settings " + json.dumps(settings.public(), sort_keys=True),
               err=True)
    status = Daemon(settings, install_signals=True,
                    announce=lambda line: typer.echo("task-ingress serve: " + line,
                                                     err=True)).run_sync()
    sys.stderr.flush()
    raise typer.Exit(status)
