"""`task-ingress serve`: the daemon over NATS, alone or with --cluster (SPEC §9). Imports
stay cheap until it runs."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer


def serve(
    nats_url: str | None = typer.Option(None, help=(
        "NATS server URL (its operator decides who may publish and subscribe where: "
        "docs/operating.md); none: start a local nats-server on a free loopback port. "
        "Env: TASK_INGRESS_NATS_URL.")),
    nats_token: str | None = typer.Option(None, help=(
        "Token for --nats-url (none: the daemon connects as its key's nkey user). Env: "
        "TASK_INGRESS_NATS_TOKEN (preferred: not in ps).")),
    nats_auth: str | None = typer.Option(None, metavar="MODE", help=(
        "The local server's authorization: nkey (default) = each peer enrolled with its "
        "key (`trust add --pubkey`) is its own NATS user and reads only its own traffic; "
        "token = one shared token in the ready file: peers are not isolated from each "
        "other.")),
    nats_connect_timeout: float | None = typer.Option(None, help=(
        "Seconds to reach NATS at start before exiting 2 (default: 10).")),
    trust_poll_interval: float | None = typer.Option(None, help=(
        "Seconds between checks of the trust file for NATS users to add or remove "
        "(default: 0.5).")),
    store: str | None = typer.Option(None, help="SQLite store path (default: task-ingress.db)."),
    workspace: Annotated[list[str] | None, typer.Option("--workspace", help=(
        "Workspace served (default: default); with --cluster repeatable: the workspaces "
        "the cluster serves, each daemon those of the shards it holds."))] = None,
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
    process_mode: str | None = typer.Option(None, metavar="MODE", help=(
        "inprocess or pipeline: the runtime's actors in a thread of the daemon or in a "
        "process of their own (default: inprocess).")),
    drain_timeout: float | None = typer.Option(
        None, help="Seconds to answer in-flight (default: 10)."),
    peer_rate: float | None = typer.Option(None, help=(
        "Per-peer requests/second before `overloaded` (default: 500; 0 = no limit).")),
    peer_burst: float | None = typer.Option(None, help="Per-peer burst (default: 1000)."),
    max_in_flight_per_peer: int | None = typer.Option(None, help=(
        "Unanswered requests of one peer per channel (default: 16).")),
    log_level: str | None = typer.Option(None, metavar="LEVEL", help=(
        "Same as `task-ingress --log-level` (debug, info, warning, error; default warning: "
        "every outcome is in the audit log; info logs each one).")),
    log_format: str | None = typer.Option(None, metavar="FORMAT", help=(
        "Same as `task-ingress --log-format` (json or console; default: console on a "
        "terminal, json otherwise).")),
    cluster: bool = typer.Option(False, "--cluster", help=(
        "Cluster mode (docs/cluster.md): serve only the shards this daemon leases in "
        "--database; needs --nats-url (the NATS cluster) and the cluster's shared --key-file.")),
    database: str | None = typer.Option(None, envvar="TASK_INGRESS_DATABASE", help=(
        "--cluster: PostgreSQL URL (env TASK_INGRESS_DATABASE).")),
    shards: int | None = typer.Option(None, help=(
        "--cluster: number of shards, fixed when the database is set up (default: 16).")),
    lease_ttl: float | None = typer.Option(None, help=(
        "--cluster: seconds a shard lease lasts; renewed every TTL/3, a shard stops being "
        "served TTL/2 after its last good renew (default: 10).")),
    node_id: str | None = typer.Option(None, help=(
        "--cluster: this daemon's name in the lease table (default: hostname-pid).")),
) -> None:
    """Serve task ingress over NATS (AGH network v0 and v1) until SIGTERM/SIGINT/SIGHUP;
    then drain, exit 0 (exit 1 when its runtime stopped on its own, e.g. a killed pipeline
    process: a supervisor should restart it)."""
    import os

    from pydantic import ValidationError
    from task_ingress.actors import log
    from task_ingress.runtime.cli_exit import UsageProblem, check_event_loop_choice
    from task_ingress.runtime.nats.daemon import Daemon
    from task_ingress.runtime.nats.settings import ServeSettings
    from task_ingress.runtime.preflight import check_actor_base, check_key_file, check_writable

    for option, value, allowed, env in (("--log-level", log_level, log.LEVELS, log.LEVEL_ENV),
                                        ("--log-format", log_format, log.FORMATS,
                                         log.FORMAT_ENV)):
        if value is not None:
            if value.lower() not in allowed:
                raise typer.BadParameter(f"{value!r} is not one of {', '.join(allowed)}",
                                         param_hint=option)
            os.environ[env] = value.lower()
    log.configure()

    given: dict[str, Any] = {
        "nats_url": nats_url, "nats_token": nats_token, "nats_auth": nats_auth,
        "nats_connect_timeout": nats_connect_timeout,
        "trust_poll_interval": trust_poll_interval, "store": store,
        "workspace": workspace[0] if workspace else None, "channels": channel or None,
        "peer_id": peer_id,
        "trust_file": trust_file, "nickname": nickname, "key_file": key_file,
        "metrics_port": metrics_port, "ready_file": ready_file,
        "greet_interval": greet_interval, "actor_base": actor_base,
        "process_mode": process_mode,
        "drain_timeout": drain_timeout, "peer_rate": peer_rate, "peer_burst": peer_burst,
        "max_in_flight_per_peer": max_in_flight_per_peer,
    }
    try:
        settings = ServeSettings(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(x) for x in e['loc']) or 'settings'}: {e['msg']}"
                             for e in exc.errors())
        raise UsageProblem(f"invalid settings: {problems}") from None
    check_event_loop_choice()
    # --database alone does not mean cluster mode: TASK_INGRESS_DATABASE may be set for
    # other commands (cluster status, trust --database).
    if cluster or any(v is not None for v in (shards, lease_ttl, node_id)):
        from task_ingress.runtime.cluster.serve_cli import serve_cluster

        serve_cluster(settings, cluster=cluster, database=database, shards=shards,
                      lease_ttl=lease_ttl, node_id=node_id, workspaces=workspace or [])
        return
    if workspace and len(workspace) > 1:
        raise UsageProblem("--workspace is given once without --cluster")
    check_actor_base(settings.actor_base)
    check_writable(settings.store, "--store")
    check_writable(settings.trust_path, "--trust-file")
    check_key_file(settings.key_path)
    if settings.ready_file:
        check_writable(settings.ready_file, "--ready-file")
    typer.echo("task-ingress serve: settings " + json.dumps(settings.public(), sort_keys=True),
               err=True)
    status = Daemon(settings, install_signals=True,
                    announce=lambda line: typer.echo("task-ingress serve: " + line,
                                                     err=True)).run_sync()
    sys.stderr.flush()
    raise typer.Exit(status)

