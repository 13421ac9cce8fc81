"""`task-ingress audit verify|head|show|tail|export --database URL`: the audit of a cluster
database.

psycopg (the `cluster` extra) is imported here only, when such a command runs, so the base
install's `audit` commands work without it. Exit codes as SPEC §9: 0 every shard verifies,
1 a shard fails verification, 2 a usage error (no key) or a database that cannot be read.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, TextIO

import typer
from task_ingress.actors.rules.chain import ChainKey, genesis_hash
from task_ingress.actors.storage.auditlog import KEY_ENV, given_key
from task_ingress.messages.audit import AuditRecord
from task_ingress.runtime.audit.anchor import Anchor, BadAnchor, head_line, parse_head_line
from task_ingress.runtime.audit.query import AuditFilter, format_line
from task_ingress.runtime.audit.table import table_lines
from task_ingress.runtime.cli_exit import one_line

EXIT_OK, EXIT_BAD, EXIT_USAGE = 0, 1, 2


def _error(message: str) -> int:
    typer.echo(f"error: {message}", err=True)
    return EXIT_USAGE


NO_PSYCOPG = "--database needs psycopg: pip install 'task-ingress[cluster]'"


def _unreadable(exc: Exception) -> str:
    return f"cannot read the cluster database: {one_line(str(exc), 300)}"


def database_key(explicit: str | None) -> bytes | str:
    """The key's bytes, or why there is none (a usage error: a database has no key file)."""
    given = given_key(explicit)
    if given is None:
        return f"--database needs the audit key: --key HEX or ${KEY_ENV}"
    try:
        raw = bytes.fromhex(given[0])
    except ValueError:
        raw = b""
    return raw or ("--key must be the audit key in hex" if explicit
                   else f"${KEY_ENV} must be the audit key in hex; fix or unset it")


def read_anchors(path: str | None) -> list[Anchor] | str:
    """The head lines in the file (blank lines skipped), or why they cannot be read."""
    if path is None:
        return []
    try:
        with open(path, encoding="utf-8") as fh:
            return [parse_head_line(line) for line in fh if line.strip()]
    except OSError as exc:
        return f"--anchors {path}: cannot read it ({exc.strerror or exc})"
    except BadAnchor as exc:
        return f"--anchors {path}: {exc}"


def _verified(url: str, key: str | None, anchors_file: str | None = None
              ) -> tuple[Any, bytes] | int:
    """(the database's verdict, the key), or the exit code of a usage problem."""
    raw = database_key(key)
    if isinstance(raw, str):
        return _error(raw)
    anchors = read_anchors(anchors_file)
    if isinstance(anchors, str):
        return _error(anchors)
    try:
        import psycopg
        from task_ingress.runtime.audit.pg_verify import verify_database
    except ImportError:
        return _error(NO_PSYCOPG)
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            return verify_database(conn, raw, anchors), raw
    except psycopg.Error as exc:
        return _error(_unreadable(exc))


def verify_database_command(url: str, key: str | None, as_json: bool,
                            anchors_file: str | None = None) -> int:
    """Verify every shard's chain of the database at `url` (and the anchors in
    `anchors_file`); print; return the exit code."""
    found = _verified(url, key, anchors_file)
    if isinstance(found, int):
        return found
    result = found[0]
    verdicts, ok = result.shards, result.ok
    if as_json:
        typer.echo(json.dumps({"ok": ok, "shards": [v.to_dict() for v in verdicts],
                               "problems": [str(p) for p in result.problems]}, indent=2))
        return EXIT_OK if ok else EXIT_BAD
    for problem in result.problems:
        typer.echo(f"problem: {problem}")
    for v in verdicts:
        state = "OK" if v.ok else "FAILED"
        typer.echo(f"shard {v.shard}: {state}: {v.records} records, head seq {v.head_seq}, "
                   f"{v.accepted_requests} accepted requests, {v.pending_outbox} pending "
                   "outbox rows")
        for problem in v.problems:
            typer.echo(f"shard {v.shard}: problem: {problem}")
    total = sum(v.records for v in verdicts)
    if ok:
        typer.echo(f"OK: every shard's keyed chain, head row and store agree; audit records:\n"
                   f"{total}")
        return EXIT_OK
    bad = [v.shard for v in verdicts if not v.ok]
    typer.echo(f"FAILED: shard(s) {', '.join(map(str, bad))} do not verify" if bad
               else "FAILED: an anchored chain is gone" if verdicts else "FAILED: no shards")
    return EXIT_BAD


def head_database_command(url: str, key: str | None) -> int:
    """Verify every shard, then print each shard chain's head as a signed line (to keep
    outside the database; `audit verify --database URL --anchors FILE` checks them)."""
    found = _verified(url, key)
    if isinstance(found, int):
        return found
    result, raw = found
    if not result.ok:
        typer.echo("FAILED: the database does not verify (see `task-ingress audit verify "
                   "--database URL`)", err=True)
        return EXIT_BAD
    chain_key = ChainKey(raw)
    for v in result.shards:
        if v.chain_id is None:
            continue  # a shard nobody has written: no chain to anchor yet
        head = v.head_hash if v.head_seq else genesis_hash(v.chain_id)
        typer.echo(head_line(chain_key, v.chain_id, v.head_seq, head))
    return EXIT_OK


def show_database_command(url: str, flt: AuditFilter, limit: int | None, width: int) -> int:
    """Matching records of every shard, newest `limit` per shard: a `[shard N]` line, then
    that shard's records as `audit show --store`'s table, `width` columns wide."""
    found = _shard_records(url, flt)
    if isinstance(found, str):
        return _error(found)
    by_shard: dict[int, list[AuditRecord]] = {}
    for shard, rec in found[0]:
        by_shard.setdefault(shard, []).append(rec)
    count = 0
    for shard, records in sorted(by_shard.items()):
        shown = records[-limit:] if limit else records
        count += len(shown)
        typer.echo(f"[shard {shard}]")
        for line in table_lines(shown, width):
            typer.echo(line)
    typer.echo(f"{count} record(s)")
    return EXIT_OK


def _shard_records(url: str, flt: AuditFilter, *, after: dict[int, int] | None = None,
                   newest: int | None = None
                   ) -> tuple[list[tuple[int, AuditRecord]], dict[int, int]] | str:
    """The matching records as (shard, record) in (shard, seq) order, and each shard's head
    seq when they were read. For `tail` (`after` or `newest` given) only each shard's range
    (after, head] — a record committed after the heads were read is left for the next read,
    never skipped — and only the newest `newest` across shards by time; otherwise every
    matching record there is. Or why the database cannot be read."""
    try:
        import psycopg
        from task_ingress.actors.storage.auditlog import AUDIT_COLUMNS, record_from_row
        from task_ingress.actors.storage.pg_schema import configured_shards
    except ImportError:
        return NO_PSYCOPG
    where, params = flt.where()
    sql = f"SELECT shard, {AUDIT_COLUMNS} FROM audit WHERE {where.replace('?', '%s')}"
    args: list[object] = list(params)
    heads: dict[int, int] = {}
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            if after is not None or newest is not None:
                # Each shard's newest seq by the (shard, seq) key, one index probe per
                # shard: not a scan of every record at each poll of `tail -f`.
                heads = {int(s): int(n) for s, n in conn.execute(
                    "SELECT s, (SELECT max(seq) FROM audit WHERE shard = s) "
                    "FROM generate_series(0, %s - 1) AS s", (configured_shards(conn) or 0,)
                ).fetchall() if n is not None}
                sql += (" AND seq > COALESCE((%s::jsonb ->> shard::text)::bigint, 0)"
                        " AND seq <= COALESCE((%s::jsonb ->> shard::text)::bigint, 0)")
                args += [json.dumps({str(k): n for k, n in (after or {}).items()}),
                         json.dumps({str(k): n for k, n in heads.items()})]
            if newest is not None:
                sql = f"SELECT * FROM ({sql} ORDER BY at DESC, shard, seq DESC LIMIT %s) AS n"
                args.append(newest)
            rows: list[Any] = conn.execute(sql + " ORDER BY shard, seq", args).fetchall()
    except psycopg.Error as exc:
        return _unreadable(exc)
    return [(int(row[0]), record_from_row(tuple(row[1:]))) for row in rows], heads

def shard_export_line(shard: int, rec: AuditRecord) -> str:
    """`export_line` with the record's shard: seq counts per shard, so (shard, seq) names a
    record of a cluster."""
    return json.dumps({"shard": shard, **rec.model_dump(mode="json")}, separators=(",", ":"))


def export_database_command(url: str, flt: AuditFilter, out: TextIO) -> int:
    """Every shard's matching records as JSON Lines (with `shard`), shard by shard in
    chain order, to `out`."""
    found = _shard_records(url, flt)
    if isinstance(found, str):
        return _error(found)
    for shard, rec in found[0]:
        out.write(shard_export_line(shard, rec) + "\n")
    out.flush()
    return EXIT_OK


def tail_database_command(url: str, flt: AuditFilter, lines: int, as_json: bool,
                          go_on: Callable[[], bool] | None, poll: float) -> int:
    """The newest `lines` matching records across shards (by time), one per line; with
    `go_on`, then each shard's new records as they commit, while `go_on()` is true. A
    database that cannot be read while following is tried again at the next poll (it may
    be restarting or failing over)."""
    def line(shard: int, rec: AuditRecord) -> str:
        return shard_export_line(shard, rec) if as_json \
            else f"[shard {shard}] {format_line(rec)}"

    found = _shard_records(url, flt, newest=lines)
    if isinstance(found, str):
        return _error(found)
    shown, after = found
    for shard, rec in sorted(shown, key=lambda sr: (sr[1].at, sr[0], sr[1].seq)):
        typer.echo(line(shard, rec))
    while go_on is not None and go_on():
        time.sleep(poll)
        found = _shard_records(url, flt, after=after)
        if isinstance(found, str):
            continue
        for shard, rec in found[0]:
            typer.echo(line(shard, rec))
        after = {**after, **found[1]}
    return EXIT_OK
