"""The daemon's own limits against hostile traffic (issue 13); docs/operating.md lists them
with their settings (`TASK_INGRESS_<NAME>`)."""

from __future__ import annotations

from dataclasses import dataclass

PENDING_MSGS_LIMIT = 8192
"""Messages one subscription holds while every handler slot is busy; beyond it the NATS
client drops them (slow consumer, counted and audited in aggregate by the handler). The
same for the single daemon and each cluster daemon."""
PENDING_BYTES_LIMIT = 16 * 1024 * 1024


@dataclass(frozen=True)
class HandlerLimits:
    """The daemon's own limits against hostile traffic (docs/operating.md lists them)."""

    unproven_rate: float = 200.0
    """Unproven messages per second that get work (an audit row, presence, an answer)."""
    unproven_burst: float = 1000.0
    """... held at most (a rate of 0: only this many, ever)."""
    report_interval: float = 10.0
    """Seconds between the aggregated audit records of dropped messages."""
    max_in_flight: int = 256
    """Messages judged at once; beyond it NATS's pending limits push back."""
    replay_capacity: int = 100_000
    """Judged request IDs remembered in all; beyond it new ids are refused `overloaded`."""
    replay_per_peer: int = 10_000
    """... of one (workspace, channel, peer)."""
    greet_capacity: int = 100_000
    """Peers whose last applied greet is remembered; beyond it new peers' greets are
    refused (`full`) until marks expire."""
    greet_file: str | None = None
    """Where the last applied verified greets survive restarts; None: memory only."""
