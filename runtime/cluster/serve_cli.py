"""`task-ingress serve --cluster`: checks the cluster options, then runs a ClusterDaemon.

Called by runtime/serve_cli.py's `serve` once the common settings are parsed; a usage problem
exits 2, as does a daemon that cannot start (NATS or the database out of reach)."""

from __future__ import annotations

import json
import sys

import typer
from task_ingress.runtime.cli_exit import UsageProblem, one_line
from task_ingress.runtime.nats.settings import ServeSettings, mask_url

DEFAULT_SHARDS = 16


def serve_cluster(settings: ServeSettings, *, cluster: bool, database: str | None,
                  shards: int | None, lease_ttl: float | None, node_id: str | None,
                  workspaces: list[str]) -> None:
    """Validate the cluster options and serve until stopped; raises typer.Exit."""
    from task_ingress.actors.rules import gate
    from task_ingress.actors.rules.chain import ChainKey
    from task_ingress.actors.storage.auditlog import given_key
    from task_ingress.actors.storage.pg_auditlog import heads_verifying
    from task_ingress.runtime.preflight import check_actor_base, check_key_file, check_writable

    if not cluster:
        raise UsageProblem("--shards, --lease-ttl and --node-id need --cluster")
    if not database:
        raise UsageProblem("--cluster needs --database URL (or TASK_INGRESS_DATABASE)")
    if not settings.nats_url:
        raise UsageProblem("--cluster needs --nats-url: the daemons of a cluster share an "
                           "external NATS (a routed nats-server cluster; docs/cluster.md)")
    given = given_key()
    if given is None:
        raise UsageProblem("--cluster needs the cluster's audit key in TASK_INGRESS_AUDIT_KEY "
                           "(hex, the same on every daemon: each shard's chain is keyed "
                           "with it; `openssl rand -hex 32` makes one)")
    try:
        key = ChainKey.from_hex(given[0])
    except ValueError:
        # Every shard would refuse to start with it, again at every lease attempt.
        raise UsageProblem("TASK_INGRESS_AUDIT_KEY is not hex: give the cluster's audit key "
                           "as every daemon has it (`openssl rand -hex 32` made it)") from None
    if settings.key_file is None:
        # A key made per daemon would make each daemon a different AGH peer.
        raise UsageProblem("--cluster needs --key-file: the cluster's key, the same file on "
                           "every daemon (the first daemon creates it if it is missing)")
    for ws in workspaces:
        if not gate.is_workspace(ws):
            raise UsageProblem(f"malformed workspace {ws!r}")
    try:
        import psycopg  # the `cluster` extra
    except ImportError:
        raise UsageProblem("--cluster needs psycopg: pip install 'task-ingress[cluster]'") \
            from None
    from task_ingress.runtime.cluster.serve import ClusterDaemon, ClusterOptions

    options: dict[str, object] = {"database": database,
                                  "shards": shards if shards is not None else DEFAULT_SHARDS,
                                  "workspaces": tuple(dict.fromkeys(workspaces or ["default"]))}
    if lease_ttl is not None:
        options["lease_ttl"] = lease_ttl
    if node_id is not None:
        options["node_id"] = node_id
    try:
        opts = ClusterOptions(**options)  # type: ignore[arg-type]
    except ValueError as exc:
        raise UsageProblem(str(exc)) from None
    check_actor_base(settings.actor_base)
    check_key_file(settings.key_path)
    if settings.ready_file:
        check_writable(settings.ready_file, "--ready-file")
    try:
        # Before anything starts: a mistyped URL is one line, not the start-up's log lines
        # (the trust reader's, NATS's) followed by the same verdict.
        with psycopg.connect(opts.database, autocommit=True, connect_timeout=10) as conn:
            verifying, heads = heads_verifying(conn, key)
    except psycopg.Error as exc:
        raise UsageProblem(f"cannot use the cluster database {mask_url(opts.database)}: "
                           f"{one_line(str(exc), 300)}") from None
    if heads and not verifying:
        # Not one shard could be served: each would refuse its chain at every lease attempt,
        # forever. One shard that does not verify while others do is tampering, not this:
        # the daemon serves the rest and `audit verify --database` names it.
        raise UsageProblem(f"TASK_INGRESS_AUDIT_KEY does not match this cluster's audit "
                           f"chains (none of {heads} shard head rows verifies under it): give "
                           "the audit key every daemon of the cluster has")
    shown = {**settings.public(), "cluster": True, "database": mask_url(opts.database),
             "shards": opts.shards, "lease_ttl": opts.lease_ttl, "node_id": opts.node_id,
             "workspaces": list(opts.workspaces)}
    typer.echo("task-ingress serve: settings " + json.dumps(shown, sort_keys=True), err=True)
    status = ClusterDaemon(settings, opts, install_signals=True,
                           announce=lambda line: typer.echo("task-ingress serve: " + line,
                                                            err=True)).run_sync()
    sys.stderr.flush()
    raise typer.Exit(status)
