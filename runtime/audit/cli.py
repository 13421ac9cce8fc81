"""`task-ingress audit`: verify, head, show, tail and export the audit log of a store file.

Every command opens the store read-only (`file:...?mode=ro` URI), so it can run beside a
live daemon and never changes what it inspects. Only this module knows typer: the logic
(`read`, `verify`, `query`, `anchor`, `table`) raises its own errors, turned into exit
codes here (SPEC §9): 0 ok, 1 the log failed verification (tampering, nothing else),
2 a usage error or a store that cannot be read, 130 interrupted. Every error is one line
on stderr naming the problem and what to do.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from typing import Annotated, ParamSpec, TextIO, TypeVar

import typer
from pydantic import ValidationError
from task_ingress.actors.rules.chain import ChainKey, genesis_hash
from task_ingress.messages.audit import AuditRecord
from task_ingress.runtime.audit.anchor import BadAnchor, head_line, make_anchor
from task_ingress.runtime.audit.query import (
    AuditFilter,
    BadQuery,
    export_line,
    format_line,
    iso,
    make_filter,
    query_records,
)
from task_ingress.runtime.audit.read import BadKey, StoreUnreadable, load_key, open_readonly
from task_ingress.runtime.audit.table import table_lines
from task_ingress.runtime.audit.verify import Problem, VerifyResult, verify_store
from task_ingress.runtime.cli_exit import UsageProblem, one_line

audit_app = typer.Typer(
    help="Verify and inspect the keyed, chained audit log of a store file (read-only).",
    no_args_is_help=True,
    add_completion=False,
)

EXIT_BAD = 1
"""`verify`, `head`: the log fails verification."""
EXIT_USAGE = 2
"""Any command: a usage error, or the store file is missing or unreadable."""
EXIT_INTERRUPTED = 130
FOLLOW_POLL = 0.5
PIPED_WIDTH = 80

P = ParamSpec("P")
R = TypeVar("R")

StoreOpt = Annotated[str | None, typer.Option(
    "--store", help="Path of the SQLite store file (or --database URL, a cluster's).")]
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
    return make_filter(peer, channel, workspace, reason, outcome, action, since, until,
                       proven_only)


def _fail_usage(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(EXIT_USAGE)


def _exits(command: Callable[P, R]) -> Callable[P, R]:
    """Turn the logic's errors into one line on stderr and SPEC §9 exit codes."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except (BadQuery, BadKey, BadAnchor, StoreUnreadable) as exc:
            raise _fail_usage(str(exc)) from None
        except (sqlite3.Error, ValidationError) as exc:
            raise _fail_usage("not a readable task-ingress store: "
                              f"{one_line(str(exc), 300)}") from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except BrokenPipeError:
            # The reader went away (`audit export | head -1`): nothing failed. stdout is
            # pointed at /dev/null so the interpreter's last flush does not raise again.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
            raise typer.Exit(0) from None

    return run


def _one_source(store: str | None, database: str | None) -> None:
    if (store is None) == (database is None):
        raise UsageProblem("give exactly one of --store PATH and --database URL")


def _at_least(option: str, value: float | None, least: float) -> None:
    if value is not None and value < least:
        raise BadQuery(f"{option} must be {least:g} or more, got {value:g}")


# ---- commands ------------------------------------------------------------------------

KeyOpt = Annotated[str | None, typer.Option(
    "--key", help="Hex audit key (default: $TASK_INGRESS_AUDIT_KEY, else <store>.key).")]


DatabaseOpt = Annotated[str | None, typer.Option(
    "--database", help="A cluster's PostgreSQL URL instead of --store: every shard's chain "
    "(the key from --key or $TASK_INGRESS_AUDIT_KEY).")]


@audit_app.command()
@_exits
def verify(
    store: StoreOpt = None,
    database: DatabaseOpt = None,
    key: KeyOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    expect_seq: Annotated[int | None, typer.Option(
        "--expect-seq", help="Fail unless the log still reaches this seq (an anchor you "
        "kept outside the store).")] = None,
    expect_head: Annotated[str | None, typer.Option(
        "--expect-head", help="Fail unless the log still holds this record hash (at "
        "--expect-seq, if given), or the line `audit head` printed.")] = None,
    allow_legacy: Annotated[bool, typer.Option(
        "--allow-legacy", help="Check a legacy store's unkeyed chain (schema 3 or older) by "
        "the old rules instead of failing it.")] = False,
    anchors: Annotated[str | None, typer.Option(
        "--anchors", help="With --database: a file of head lines `audit head --database` "
        "printed; fail unless every shard chain still reaches them.")] = None,
) -> None:
    """Check the keyed chain, the checkpoint, anchors and the store against each other.

    Exit 0 and print the record count last when all agree; exit 1 naming the first bad
    record (or what else is wrong) otherwise; exit 2 for a usage error or a store that
    cannot be read. Pending outbox rows (accepted writes a crash left for Audit to chain on
    its next start) are reported, not errors.

    With --database (a cluster): every shard's chain, its head row and the store, one
    line per shard; exit 1 when any shard fails.
    """
    _one_source(store, database)
    if database is not None:
        if expect_seq is not None or expect_head is not None or allow_legacy:
            raise UsageProblem("--expect-seq, --expect-head and --allow-legacy apply to "
                               "--store only")
        from task_ingress.runtime.audit.pg_cli import verify_database_command

        raise typer.Exit(verify_database_command(database, key, as_json, anchors))
    if anchors is not None:
        raise UsageProblem("--anchors applies to --database; with --store use --expect-head")
    assert store is not None
    anchor = make_anchor(expect_seq, expect_head)
    result = verify_store(store, key=key, anchor=anchor, allow_legacy=allow_legacy)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
    else:
        _print_verify(result)
    raise typer.Exit(0 if result.ok else EXIT_BAD)


def _print_verify(result: VerifyResult) -> None:
    cp = result.checkpoint
    if result.store_id:
        typer.echo(f"store id: {result.store_id}")
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
        typer.echo(_failed(first))
        return
    typer.echo("OK: keyed chain, checkpoint and store agree; audit records:")
    typer.echo(str(result.records))


def _failed(first: Problem) -> str:
    """The last line of a failed verification: the first bad record, or what else failed."""
    if first.seq is not None:
        return f"FAILED: first bad record: record seq {first.seq}: {first.detail}"
    return f"FAILED: {first.kind}: {first.detail}"


@audit_app.command()
@_exits
def head(
    store: StoreOpt = None,
    key: KeyOpt = None,
    database: Annotated[str | None, typer.Option(
        "--database", help="A cluster's PostgreSQL URL instead of --store: one line per "
        "shard chain.")] = None,
) -> None:
    """Verify the log, then print its head as one signed line to keep outside the store.

    Ship the line elsewhere (a log host, a ticket) and later pass it to
    `audit verify --expect-head LINE`: a log rolled back, truncated or replaced since then
    fails. Exit 1 (and nothing on stdout) when the log does not verify. With --database,
    one line per shard chain, for `audit verify --database URL --anchors FILE`.
    """
    _one_source(store, database)
    if database is not None:
        from task_ingress.runtime.audit.pg_cli import head_database_command

        raise typer.Exit(head_database_command(database, key))
    assert store is not None
    result = verify_store(store, key=key)
    raw, _ = load_key(store, key)
    if not result.ok or raw is None or result.store_id is None:
        first = result.first_problem
        why = _failed(first) if first else "FAILED: key: no audit key"
        typer.echo(f"{why} (see `task-ingress audit verify --store {store}`)", err=True)
        raise typer.Exit(EXIT_BAD)
    head_hash = result.head_hash if result.head_seq else genesis_hash(result.store_id)
    typer.echo(head_line(ChainKey(raw), result.store_id, result.head_seq, head_hash))


@audit_app.command()
@_exits
def show(
    store: StoreOpt = None,
    database: Annotated[str | None, typer.Option(
        "--database", help="A cluster's PostgreSQL URL instead of --store: records of "
        "every shard, newest --limit per shard, each shard's table under a [shard N] "
        "line.")] = None,
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
    """Matching records as a table (newest `--limit`, oldest first), as wide as the
    terminal (80 columns when piped). With `--peer`, only records whose identity was proven
    (trust verified or embedded) unless `--include-unproven`: anyone can claim a peer ID,
    and rejections of a forger look like the peer's own."""
    _at_least("-n/--limit", limit, 0)
    flt = _filter(peer, channel, workspace, reason, outcome, action, since, until,
                  proven_only=peer is not None and not include_unproven)
    _one_source(store, database)
    width = shutil.get_terminal_size((PIPED_WIDTH, 24)).columns
    if database is not None:
        from task_ingress.runtime.audit.pg_cli import show_database_command

        raise typer.Exit(show_database_command(database, flt, limit or None, width))
    assert store is not None
    with open_readonly(store) as conn:
        rows = list(query_records(conn, flt, last=limit or None))
    typer.echo(f"audit of {store}")
    for line in table_lines(rows, width):
        typer.echo(line)
    typer.echo(f"{len(rows)} record(s)")


@audit_app.command()
@_exits
def tail(
    store: StoreOpt = None,
    database: Annotated[str | None, typer.Option(
        "--database", help="A cluster's PostgreSQL URL instead of --store: the newest "
        "records across shards by time, each line starting [shard N]; -f follows every "
        "shard.")] = None,
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
    """The newest records, one per line; with -f, follow the log as it grows (Ctrl-C:
    exit 130)."""
    _at_least("-n/--lines", lines, 0)
    _at_least("--for", for_seconds, 0)
    flt = _filter(peer, channel, workspace, reason, outcome)
    _one_source(store, database)
    deadline = None if for_seconds is None else time.monotonic() + for_seconds
    if database is not None:
        from task_ingress.runtime.audit.pg_cli import tail_database_command

        def go_on() -> bool:
            return deadline is None or time.monotonic() < deadline

        raise typer.Exit(tail_database_command(database, flt, lines, as_json,
                                               go_on if follow else None, FOLLOW_POLL))
    assert store is not None
    fmt: Callable[[AuditRecord], str] = export_line if as_json else format_line
    last_seq = _emit(store, flt, 0, lines, fmt)
    if not follow:
        return
    while deadline is None or time.monotonic() < deadline:
        time.sleep(FOLLOW_POLL)
        try:
            # Reopened each poll: a read-only connection opened before a writer
            # started would not see its WAL.
            last_seq = _emit(store, flt, last_seq, None, fmt)
        except (StoreUnreadable, sqlite3.Error, ValidationError):
            continue  # a writer mid-start or a rotated file: try again next poll


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
@_exits
def export(
    store: StoreOpt = None,
    database: Annotated[str | None, typer.Option(
        "--database", help="A cluster's PostgreSQL URL instead of --store: every shard's "
        "records, shard by shard in chain order, each line with its `shard`.")] = None,
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
    _one_source(store, database)
    if database is not None:
        from task_ingress.runtime.audit.pg_cli import export_database_command

        with _output(output) as out:
            raise typer.Exit(export_database_command(database, flt, out))
    assert store is not None
    with open_readonly(store) as conn, _output(output) as out:
        _write_export(conn, flt, out)


@contextlib.contextmanager
def _output(path: str | None) -> Iterator[TextIO]:
    """stdout, or the file at `path` (a usage error when it cannot be written)."""
    if path is None:
        yield sys.stdout
        return
    try:
        fh = open(path, "w", encoding="utf-8")  # noqa: SIM115  (closed below)
    except OSError as exc:
        raise _fail_usage(f"cannot write {path}: {exc.strerror or exc}; check that "
                          "its directory exists and is writable") from None
    with fh:
        yield fh


def _write_export(conn: sqlite3.Connection, flt: AuditFilter, out: TextIO) -> None:
    for rec in query_records(conn, flt):
        out.write(export_line(rec) + "\n")
    out.flush()
