"""`task-ingress audit verify|show --database URL`: the audit of a cluster database.

psycopg (the `cluster` extra) is imported here only, when such a command runs, so the base
install's `audit` commands work without it. Exit codes as SPEC §9: 0 every shard verifies,
1 a shard fails verification, 2 a usage error (no key) or a database that cannot be read.
"""

from __future__ import annotations

import json
import os
from typing import Any

import typer
from task_ingress.actors.storage.auditlog import KEY_ENV
from task_ingress.runtime.audit.query import AuditFilter, format_line

EXIT_OK, EXIT_BAD, EXIT_USAGE = 0, 1, 2


def _error(message: str) -> int:
    typer.echo(f"error: {message}", err=True)
    return EXIT_USAGE


def _key(explicit: str | None) -> bytes | str:
    """The key's bytes, or why there is none (a usage error: a database has no key file)."""
    text = (explicit or os.environ.get(KEY_ENV, "")).strip()
    if not text:
        return f"--database needs the audit key: --key HEX or ${KEY_ENV}"
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    return raw or ("--key must be the audit key in hex" if explicit
                   else f"${KEY_ENV} must be the audit key in hex; fix or unset it")


def verify_database_command(url: str, key: str | None, as_json: bool) -> int:
    """Verify every shard's chain of the database at `url`; print; return the exit code."""
    raw = _key(key)
    if isinstance(raw, str):
        return _error(raw)
    try:
        import psycopg
        from task_ingress.runtime.audit.pg_verify import verify_database
    except ImportError:
        return _error("--database needs psycopg: pip install 'task-ingress[cluster]'")
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            verdicts = verify_database(conn, raw)
    except psycopg.Error as exc:
        return _error(f"cannot read the cluster database: {' '.join(str(exc).split())[:300]}")
    ok = all(v.ok for v in verdicts)
    if as_json:
        typer.echo(json.dumps({"ok": ok, "shards": [v.to_dict() for v in verdicts]}, indent=2))
        return EXIT_OK if ok else EXIT_BAD
    for v in verdicts:
        state = "OK" if v.ok else "FAILED"
        typer.echo(f"shard {v.shard}: {state}: {v.records} records, head seq {v.head_seq}, "
                   f"{v.accepted_requests} accepted requests, {v.pending_outbox} pending "
                   "outbox rows")
        for problem in v.problems:
            typer.echo(f"shard {v.shard}: problem: {problem}")
    if not verdicts:
        typer.echo("no shards: not a cluster database?")
    total = sum(v.records for v in verdicts)
    if ok:
        typer.echo(f"OK: every shard's keyed chain, head row and store agree; audit records:\n"
                   f"{total}")
        return EXIT_OK
    bad = [v.shard for v in verdicts if not v.ok]
    typer.echo(f"FAILED: shard(s) {', '.join(map(str, bad))} do not verify")
    return EXIT_BAD


def show_database_command(url: str, flt: AuditFilter, limit: int | None) -> int:
    """Matching records of every shard, newest `limit` per shard, one line each."""
    try:
        import psycopg
        from task_ingress.actors.storage.auditlog import AUDIT_COLUMNS, record_from_row
    except ImportError:
        return _error("--database needs psycopg: pip install 'task-ingress[cluster]'")
    where, params = flt.where()
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            rows: list[Any] = conn.execute(
                f"SELECT shard, {AUDIT_COLUMNS} FROM audit WHERE {where.replace('?', '%s')} "
                "ORDER BY shard, seq", params).fetchall()
    except psycopg.Error as exc:
        return _error(f"cannot read the cluster database: {' '.join(str(exc).split())[:300]}")
    by_shard: dict[int, list[str]] = {}
    for row in rows:
        by_shard.setdefault(int(row[0]), []).append(format_line(record_from_row(tuple(row[1:]))))
    count = 0
    for shard, lines in sorted(by_shard.items()):
        shown = lines[-limit:] if limit else lines
        count += len(shown)
        for line in shown:
            typer.echo(f"[shard {shard}] {line}")
    typer.echo(f"{count} record(s)")
    return EXIT_OK
