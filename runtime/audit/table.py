"""`audit show`'s table, laid out for the terminal's width (80 columns when piped).

Each record is one line of short fixed-width cells (seq, time without the year, action,
outcome), then its details (peer and channel, request ID, task and run IDs) folded onto
indented lines. Lines break only between words; only a single word longer than a whole
line (a very long request ID) is ever split.
"""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime

from task_ingress.messages.audit import AuditRecord

TIME_FORMAT = "%m-%d %H:%M:%S"
ACTION_WIDTH = 16
"""len('task.run.enqueue'), the longest action."""
PROVEN = ("verified", "embedded")
"""Trust values that prove the sender is the peer it names."""


def short_time(at: float) -> str:
    """A record time as MM-DD HH:MM:SS, UTC (the header says so)."""
    return datetime.fromtimestamp(at, UTC).strftime(TIME_FORMAT)


def peer_label(rec: AuditRecord) -> str:
    """The record's peer ID, marked with its trust when the identity was only claimed
    (anyone can claim a peer ID): `peer-b (unverified)`."""
    if rec.trust in PROVEN:
        return rec.peer_id
    return f"{rec.peer_id} ({rec.trust or 'unproven'})"


def table_lines(records: list[AuditRecord], width: int) -> list[str]:
    """The table: a header line, then each record's main line and its folded details."""
    seq_width = max([3, *(len(str(r.seq)) for r in records)])
    indent = " " * (seq_width + 2)
    header = f"{'seq':>{seq_width}}  {'time (UTC)':<14}  {'action':<{ACTION_WIDTH}}  outcome"
    lines = [header]
    for rec in records:
        outcome = rec.outcome if rec.reason is None else f"{rec.outcome} {rec.reason.value}"
        main = (f"{rec.seq:>{seq_width}}  {short_time(rec.at)}  "
                f"{rec.action.value:<{ACTION_WIDTH}}  {outcome}")
        lines += _fold(main, width, indent)
        details = [f"{peer_label(rec)} in {rec.workspace}/{rec.channel}",
                   f"req={rec.request_id}"]
        details += [f"task={rec.task_id}"] if rec.task_id else []
        details += [f"run={rec.run_id}"] if rec.run_id else []
        details += ["(replay)"] if rec.replay else []
        lines += _fold("  ".join(details), width, indent, indent)
    return lines


def _fold(text: str, width: int, subsequent: str, initial: str = "") -> list[str]:
    return textwrap.wrap(text, width=max(width, len(subsequent) + 20), initial_indent=initial,
                         subsequent_indent=subsequent, break_on_hyphens=False) or [initial]
