"""Queries over the audit table: filters, time parsing, and the one-line and JSON-line forms
of a record that `audit show | tail | export` print."""

from __future__ import annotations

import difflib
import json
import re
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from task_ingress.actors.storage.auditlog import readable_columns, record_from_row
from task_ingress.messages.audit import AuditRecord
from task_ingress.messages.reasons import Action, Reason


class BadQuery(ValueError):
    """A filter value that cannot be used (a time that does not parse, an unknown reason
    code): a usage error."""


@dataclass(frozen=True)
class AuditFilter:
    """Which records a query returns; None means any."""

    peer: str | None = None
    channel: str | None = None
    workspace: str | None = None
    reason: str | None = None
    outcome: str | None = None
    action: str | None = None
    since: float | None = None
    until: float | None = None
    proven_only: bool = False
    """Only records whose sender's identity was proven: `verified` or `embedded` trust."""

    def where(self, after_seq: int = 0) -> tuple[str, list[object]]:
        """SQL WHERE clause and parameters for this filter (and seq > after_seq)."""
        clauses: list[str] = ["seq > ?"]
        params: list[object] = [after_seq]
        for column, value in (
            ("peer_id", self.peer), ("channel", self.channel), ("workspace", self.workspace),
            ("reason", self.reason), ("outcome", self.outcome), ("action", self.action),
        ):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if self.since is not None:
            clauses.append("at >= ?")
            params.append(self.since)
        if self.until is not None:
            clauses.append("at <= ?")
            params.append(self.until)
        if self.proven_only:
            clauses.append("trust IN ('verified', 'embedded')")
        return " AND ".join(clauses), params


_AGE_RE = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_AGE_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_time(text: str, now: float | None = None) -> float:
    """Unix time from ISO 8601 (naive means UTC), unix seconds, or an age like '15m'."""
    value = text.strip()
    age = _AGE_RE.fullmatch(value)
    if age:
        base = time.time() if now is None else now
        return base - float(age.group(1)) * _AGE_UNITS[age.group(2)]
    try:
        return float(value)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise BadQuery(f"not a time: {text!r} (ISO 8601, unix seconds or 15m)") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def make_filter(
    peer: str | None = None, channel: str | None = None, workspace: str | None = None,
    reason: str | None = None, outcome: str | None = None, action: str | None = None,
    since: str | None = None, until: str | None = None, proven_only: bool = False,
) -> AuditFilter:
    """An AuditFilter from command-line option values; BadQuery names a value that is not
    (a reason, action or outcome outside its closed set, a time that does not parse, a
    range that ends before it starts): a filter that cannot match is a mistake, never an
    empty answer."""
    if outcome is not None and outcome not in ("accepted", "rejected"):
        raise BadQuery("--outcome must be 'accepted' or 'rejected'")
    _closed("--reason", reason, [r.value for r in Reason])
    _closed("--action", action, [a.value for a in Action])
    start = None if since is None else parse_time(since)
    end = None if until is None else parse_time(until)
    if start is not None and end is not None and start > end:
        raise BadQuery(f"--since ({iso(start)}) is after --until ({iso(end)}): nothing can "
                       "match; swap them")
    return AuditFilter(
        peer=peer, channel=channel, workspace=workspace, reason=reason, outcome=outcome,
        action=action, since=start, until=end, proven_only=proven_only,
    )


def _closed(option: str, value: str | None, allowed: list[str]) -> None:
    """BadQuery, suggesting the nearest allowed value, when `value` is not one of them."""
    if value is None or value in allowed:
        return
    near = difflib.get_close_matches(value, allowed, n=1)
    hint = f"did you mean {near[0]}?" if near else "use one of " + ", ".join(allowed)
    raise BadQuery(f"{option} {value!r} is not a known code; {hint}")


def query_records(
    conn: sqlite3.Connection, flt: AuditFilter, after_seq: int = 0, last: int | None = None
) -> Iterator[AuditRecord]:
    """Matching records in seq order; with `last`, only the newest `last` of them."""
    where, params = flt.where(after_seq)
    columns = readable_columns(conn)
    if last is None:
        sql = f"SELECT {columns} FROM audit WHERE {where} ORDER BY seq"
    else:
        sql = (f"SELECT * FROM (SELECT {columns} FROM audit WHERE {where} "
               "ORDER BY seq DESC LIMIT ?) ORDER BY seq")
        params = [*params, max(last, 0)]
    for row in conn.execute(sql, params):
        yield record_from_row(row)


def iso(at: float) -> str:
    """A record time as ISO 8601 UTC with milliseconds."""
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def format_line(rec: AuditRecord) -> str:
    """One record as a single human-readable line (for `audit tail`)."""
    verdict = rec.outcome if rec.reason is None else f"{rec.outcome}:{rec.reason.value}"
    ids = f" task={rec.task_id}" if rec.task_id else ""
    ids += f" run={rec.run_id}" if rec.run_id else ""
    replay = " replay" if rec.replay else ""
    return (f"{iso(rec.at)} #{rec.seq} {rec.workspace}/{rec.channel} {rec.peer_id} "
            f"{rec.action.value} {verdict}{ids}{replay} req={rec.request_id}")


def export_line(rec: AuditRecord) -> str:
    """One record as a JSON line with the SPEC §7 AuditRecord field names."""
    return json.dumps(rec.model_dump(mode="json"), separators=(",", ":"))
