"""`task-ingress audit`: verify, show, tail and export the audit log of a store file.

Every command opens the store read-only (`file:...?mode=ro` URI), so it can run beside a
live daemon and never changes what it inspects. Only this module knows typer: the logic
(`read`, `verify`, `query`) raises its own errors, turned into exit codes and usage
errors here.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from collections.abc import Callable
from typing import Annotated, TextIO

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from task_ingress.messages.audit import AuditRecord
from task_ingress.runtime.audit.query import (
    AuditFilter,
    BadQuery,
    export_line,
    format_line,
    iso,
    make_filter,
    query_records,
)
from task_ingress.runtime.audit.read import StoreUnreadable, open_readonly
from task_ingress.runtime.audit.verify import VerifyResult, verify_store

audit_app = typer.Typer(
    help="Inspect the hash-chained audit log of a store file (read-only).",
    no_args_is_help=True,
    add_completion=False,
)

EXIT_BAD = 1
"""`verify`: the store fails verification."""
EXIT_UNREADABLE = 2
"""Any command: the store file is missing or unreadable."""
FOLLOW_POLL = 0.5
PROVEN = ("verified", "embedded")

StoreOpt = Annotated[str, typer.Option("--store", help="Path of the SQLite store file.")]
PeerOpt = Annotated[str | None, typer.Option("--peer", help="Only this peer ID.")]
ChannelOpt = Annotated[str | None, typer.Option("--channel", help="Only this channel.")]
WorkspaceOpt = Annotated[str | None, typer.Option("--workspace", help="Only this workspace.")]
ReasonOpt = Annotated[str | None, typer.Option("--reason", help="Only this reason code.")]
OutcomeOpt = Annotated[str | None, typer.Option("--outcome", help="accepted or rejected.")]
ActionOpt = Annotated[str | None, typer.Option("--action", help="e.g. task.create.")]
SinceOpt = Annotated[str | None, typer.Option(
    "--since", help="From this time: ISO 8601 (naive = UTC), unix seconds, or an age "
    "such as 90s, 15m, 2h, 1d.")]
UntilOpt = Annotated[str | None, typer.Option("--until", help="Up to this time (as --since).")]


def _filter(
    peer: str | None = None, channel: str | None = None, workspace: str | None = None,
    reason: str | None = None, outcome: str | None = None, action: str | None = None,
    since: str | None = None, until: str | None = None, proven_only: bool = False,
) -> AuditFilter:
    try:
        return make_filter(peer, channel, workspace, reason, outcome, action, since, until,
                           proven_only)
    except BadQuery as exc:
        raise typer.BadParameter(str(exc)) from exc


def _unreadable(exc: Exception) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(EXIT_UNREADABLE)


# ---- commands ------------------------------------------------------------------------


@audit_app.command()
def verify(
    store: StoreOpt,
    key: Annotated[str | None, typer.Option(
        "--key", help="Hex checkpoint key (default: $TASK_INGRESS_AUDIT_KEY, else "
        "<store>.key).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Recompute the hash chain, check it against the checkpoint and the store.

    Exit 0 and print the record count last when all agree; exit 1 naming the first bad
    record otherwise (2: the store cannot be read). Pending outbox rows (accepted writes a
    crash left for Audit to chain on its next start) are reported, not errors.
    """
    try:
        result = verify_store(store, key=key)
    except StoreUnreadable as exc:
        raise _unreadable(exc) from exc
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        raise typer.Exit(0 if result.ok else EXIT_BAD)
    _print_verify(result)
    raise typer.Exit(0 if result.ok else EXIT_BAD)


def _print_verify(result: VerifyResult) -> None:
    cp = result.checkpoint
    typer.echo(f"chain head: seq {result.head_seq} {result.head_hash or '-'}")
    typer.echo("checkpoint: " + (f"seq {cp.seq} written {iso(cp.at)}" if cp else "none"))
    typer.echo(f"store: {result.tasks} tasks, {result.runs} runs, "
               f"{result.pending_outbox} pending outbox rows")
    for note in result.notes:
        typer.echo(f"note: {note}")
    first = result.first_problem
    if first is not None:
        for problem in result.problems:
            typer.echo(f"problem: {problem}")
        where = f"record seq {first.seq}" if first.seq is not None else "the store"
        typer.echo(f"FAILED: first bad record: {where}: {first.detail}")
        return
    typer.echo("OK: chain, checkpoint and store agree; audit records:")
    typer.echo(str(result.records))


@audit_app.command()
def show(
    store: StoreOpt,
    peer: PeerOpt = None,
    channel: ChannelOpt = None,
    workspace: WorkspaceOpt = None,
    reason: ReasonOpt = None,
    outcome: OutcomeOpt = None,
    action: ActionOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="Newest N matches (0: all).")]
    = 100,
    include_unproven: Annotated[bool, typer.Option(
        "--include-unproven", help="With --peer: also records whose sender only claimed "
        "the peer ID (trust unverified or rejected, or none recorded).")] = False,
) -> None:
    """Matching records as a table (newest `--limit`, oldest first). With `--peer`, only
    records whose identity was proven (trust verified or embedded) unless
    `--include-unproven`: anyone can claim a peer ID, and rejections of a forger look
    like the peer's own."""
    flt = _filter(peer, channel, workspace, reason, outcome, action, since, until,
                  proven_only=peer is not None and not include_unproven)
    table = Table(title=f"audit of {store}")
    for col in ("seq", "time (UTC)", "ws/channel", "peer", "action", "outcome", "task / run",
                "request"):
        table.add_column(col, overflow="fold")
    try:
        with open_readonly(store) as conn:
            rows = list(query_records(conn, flt, last=limit or None))
    except (StoreUnreadable, sqlite3.Error, ValidationError) as exc:
        raise _unreadable(exc) from exc
    for rec in rows:
        verdict = "[green]accepted" if rec.outcome == "accepted" else "[red]rejected"
        if rec.reason is not None:
            verdict += f" {rec.reason.value}"
        ids = " ".join(i for i in (rec.task_id, rec.run_id) if i)
        table.add_row(
            str(rec.seq), iso(rec.at).replace("T", " ").rstrip("Z"),
            f"{rec.workspace}/{rec.channel}",
            rec.peer_id + ("" if rec.trust in PROVEN else f" ({rec.trust or 'unproven'})"),
            rec.action.value, verdict, ids,
            rec.request_id + (" (replay)" if rec.replay else ""),
        )
    console = Console()
    console.print(table)
    console.print(f"{len(rows)} record(s)")


@audit_app.command()
def tail(
    store: StoreOpt,
    lines: Annotated[int, typer.Option("-n", "--lines", help="Show the newest N.")] = 10,
    follow: Annotated[bool, typer.Option("-f", "--follow", help="Keep printing new records.")]
    = False,
    as_json: Annotated[bool, typer.Option("--json", help="JSON Lines (as export).")] = False,
    for_seconds: Annotated[float | None, typer.Option(
        "--for", help="With -f: stop after this many seconds (default: until Ctrl-C).")] = None,
    peer: PeerOpt = None,
    channel: ChannelOpt = None,
    workspace: WorkspaceOpt = None,
    reason: ReasonOpt = None,
    outcome: OutcomeOpt = None,
) -> None:
    """The newest records, one per line; with -f, follow the log as it grows."""
    flt = _filter(peer, channel, workspace, reason, outcome)
    fmt: Callable[[AuditRecord], str] = export_line if as_json else format_line
    try:
        last_seq = _emit(store, flt, 0, lines, fmt)
    except (StoreUnreadable, sqlite3.Error, ValidationError) as exc:
        raise _unreadable(exc) from exc
    if not follow:
        return
    deadline = None if for_seconds is None else time.monotonic() + for_seconds
    try:
        while deadline is None or time.monotonic() < deadline:
            time.sleep(FOLLOW_POLL)
            try:
                # Reopened each poll: a read-only connection opened before a writer
                # started would not see its WAL.
                last_seq = _emit(store, flt, last_seq, None, fmt)
            except (StoreUnreadable, sqlite3.Error, ValidationError):
                continue  # a writer mid-start or a rotated file: try again next poll
    except KeyboardInterrupt:
        return


def _emit(store: str, flt: AuditFilter, after_seq: int, last: int | None,
          fmt: Callable[[AuditRecord], str]) -> int:
    """Print matching records after `after_seq`; return the last seq printed (or seen)."""
    out: TextIO = sys.stdout
    with open_readonly(store) as conn:
        for rec in query_records(conn, flt, after_seq, last):
            out.write(fmt(rec) + "\n")
            after_seq = rec.seq
        if last is not None:
            # Start following at the true head even when the filter matched nothing.
            head = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM audit").fetchone()[0]
            after_seq = max(after_seq, int(head))
    out.flush()
    return after_seq


@audit_app.command()
def export(
    store: StoreOpt,
    output: Annotated[str | None, typer.Option(
        "--output", "-o", help="Write to this file instead of stdout.")] = None,
    peer: PeerOpt = None,
    channel: ChannelOpt = None,
    workspace: WorkspaceOpt = None,
    reason: ReasonOpt = None,
    outcome: OutcomeOpt = None,
    action: ActionOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
) -> None:
    """Matching records as JSON Lines, one record per line, SPEC §7 field names."""
    flt = _filter(peer, channel, workspace, reason, outcome, action, since, until)
    try:
        with open_readonly(store) as conn:
            if output is None:
                _write_export(conn, flt, sys.stdout)
            else:
                with open(output, "w", encoding="utf-8") as fh:
                    _write_export(conn, flt, fh)
    except (StoreUnreadable, sqlite3.Error, ValidationError) as exc:
        raise _unreadable(exc) from exc


def _write_export(conn: sqlite3.Connection, flt: AuditFilter, out: TextIO) -> None:
    for rec in query_records(conn, flt):
        out.write(export_line(rec) + "\n")
    out.flush()
