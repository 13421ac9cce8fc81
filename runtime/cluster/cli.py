"""`task-ingress cluster status`: one row per shard — owner, epoch, lease age (SPEC §9);
`task-ingress cluster adopt-roster`: pin the audit chains of a database without a roster.

Only this module knows typer; psycopg (the `cluster` extra) is imported when the command
runs, so the base install's command line works without it.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from task_ingress.runtime.cli_exit import EXIT_USAGE, UsageProblem

cluster_app = typer.Typer(
    help="Cluster mode (PostgreSQL leases): inspect shards and their owners.",
    no_args_is_help=True,
    add_completion=False,
)

EXIT_UNREACHABLE = EXIT_USAGE
"""The database cannot be reached, is not a cluster database, or psycopg is missing."""

DatabaseOpt = Annotated[str, typer.Option(
    "--database", envvar="TASK_INGRESS_DATABASE",
    help="PostgreSQL URL, e.g. postgresql://user@host/db (env TASK_INGRESS_DATABASE).")]


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s"


@cluster_app.command("status")
def status_command(
    database: DatabaseOpt,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
) -> None:
    """Every shard's lease: owner node (none when free or expired), fencing epoch, how long
    it has been held, when it was last renewed and when it expires."""
    # UsageProblem: one line `task-ingress cluster status: …`, exit 2 (EXIT_UNREACHABLE).
    try:
        import psycopg
        from task_ingress.runtime.cluster import pg_leases
    except ImportError:
        raise UsageProblem("needs psycopg: pip install 'task-ingress[cluster]'") from None
    try:
        with psycopg.connect(database, autocommit=True, connect_timeout=10) as conn:
            shards = pg_leases.shard_count(conn)
            rows = pg_leases.status(conn) if shards is not None else []
    except psycopg.Error as exc:
        raise UsageProblem(f"cannot read the cluster database: {exc}") from None
    if shards is None:
        raise UsageProblem("not a cluster database (no shard leases): start a cluster daemon "
                           "against it")
    if as_json:
        out: dict[str, Any] = {"shards": shards, "checked_at": rows[0].checked_at.isoformat()
                               if rows else None, "leases": [
            {"shard": r.shard, "owner": r.owner, "epoch": r.epoch, "held_for_s": r.held_for,
             "renewed_ago_s": r.renewed_ago, "expires_in_s": r.expires_in} for r in rows]}
        typer.echo(json.dumps(out))
        return
    typer.echo(f"{'shard':>5}  {'owner':<24} {'epoch':>6}  {'held for':>9}  "
               f"{'renewed':>9}  {'expires in':>10}")
    for r in rows:
        typer.echo(f"{r.shard:>5}  {r.owner or '(free)':<24} {r.epoch:>6}  "
                   f"{_seconds(r.held_for):>9}  {_seconds(r.renewed_ago):>9}  "
                   f"{_seconds(r.expires_in):>10}")
    held = sum(1 for r in rows if r.owner is not None)
    typer.echo(f"{held} of {shards} shards held by {len({r.owner for r in rows if r.owner})} "
               "node(s)")


@cluster_app.command("adopt-roster")
def adopt_roster_command(
    database: DatabaseOpt,
    key: Annotated[str | None, typer.Option(
        "--key", help="The cluster's audit key, hex (default: $TASK_INGRESS_AUDIT_KEY).")]
    = None,
    anchors: Annotated[str | None, typer.Option(
        "--anchors", help="Head lines kept outside the database (`audit head --database`): "
        "checked before anything is adopted.")] = None,
) -> None:
    """Pin the audit chains of a cluster database that has no roster (written before the
    roster existed, or its roster deleted), once, deliberately: only when everything else
    verifies under the key. Exit 0 pinned (or a roster already there), 1 not adopted (the
    database does not verify), 2 usage. A shard emptied whole before this runs cannot be
    told from one never written: check the database against anchors kept elsewhere."""
    from task_ingress.actors.storage.chainstart import ChainRefused
    from task_ingress.runtime.audit.pg_cli import database_key, read_anchors

    raw = database_key(key)
    if isinstance(raw, str):
        raise UsageProblem(raw)
    kept = read_anchors(anchors)
    if isinstance(kept, str):
        raise UsageProblem(kept)
    try:
        import psycopg
        from task_ingress.actors.storage import pg_roster
        from task_ingress.runtime.cluster import pg_leases
        from task_ingress.runtime.cluster.adopt import adopt_roster
    except ImportError:
        raise UsageProblem("needs psycopg: pip install 'task-ingress[cluster]'") from None
    try:
        with psycopg.connect(database, autocommit=True, connect_timeout=10) as conn:
            if pg_leases.shard_count(conn) is None:
                raise UsageProblem("not a cluster database (no shard leases)")
            if pg_roster.read_roster(conn) is not None:
                typer.echo("a roster is already there: nothing adopted")
                return
            roster = adopt_roster(conn, raw, tuple(kept))
    except psycopg.Error as exc:
        raise UsageProblem(f"cannot use the cluster database: {exc}") from None
    except ChainRefused as exc:
        typer.echo(f"task-ingress cluster adopt-roster: not adopted: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"roster written: the chains of {len(roster.chain_ids)} shards pinned under "
               "the key; `task-ingress audit verify --database URL` checks them from now on")
