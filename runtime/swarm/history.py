"""The swarm's own presence history, and the rule that attributes a write to a greet.

Every greet and leave the swarm makes is recorded with two times from one monotonic
clock: `sent` (just before the transport call) and `returned` (just after it came back).
The runtime applies the change at some instant inside [sent, returned]; a request is
stamped by the runtime at some instant inside [its send, its reply]. So only orderings
that hold for *every* possible instant are evidence.

Attribution (the `writes_by_visible_capable_peers` invariant). An accepted write W of
peer P in (workspace, channel), sent at `W.sent` and answered at `W.returned`, is
justified when there is a greet G of P in that (workspace, channel) whose card grants
`task.write`, such that

1. G may have taken effect before W committed: `G.sent < W.returned`;
2. G had not surely expired when W was sent: `W.sent < G.returned + expiry`, where
   expiry = 2 x greet_interval (the runtime stamps G no later than `G.returned` and W
   no earlier than `W.sent`, so `W.sent >= G.returned + expiry` means expired for sure);
3. no revoking event R surely lies between them: there is no R with
   `R.sent >= G.returned` (surely after G) and `R.returned <= W.sent` (surely before W).
   Revoking events are greets whose card does not grant `task.write`, and leaves when
   the transport's leave revokes at once (in-process; over NATS a leave is silence).

When the transport's leave does not revoke (NATS: `leave` means "stop heartbeating"),
the transport itself re-greets between the swarm's greet and its leave, so in rule 2 a
greet's expiry runs from the return of the first leave after it instead (no leave yet:
no expiry).

A write with no such greet is a violation: it was sent after a revocation returned, or
after expiry by the clock, or with no greet at all. Overlapping calls are never counted
against the runtime, so the check has no false alarms under concurrency.
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass, field

PresenceKey = tuple[str, str, str]
"""(workspace, channel, peer_id)."""


@dataclass(frozen=True)
class PresenceEvent:
    """One greet or leave as the swarm made it."""

    kind: str
    """'greet' or 'leave'."""
    writer: bool
    """For greets: the card granted task.write (capability + non-empty proof)."""
    sent: float
    returned: float


@dataclass
class PresenceHistory:
    """Thread-safe record of every greet/leave, per (workspace, channel, peer)."""

    expiry: float
    """2 x greet_interval, seconds."""
    leave_revokes: bool = True
    events: dict[PresenceKey, list[PresenceEvent]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, key: PresenceKey, event: PresenceEvent) -> None:
        """Add one event (callers record after the transport call returned)."""
        with self._lock:
            self.events.setdefault(key, []).append(event)

    def count(self) -> int:
        """Number of recorded events."""
        with self._lock:
            return sum(len(v) for v in self.events.values())

    def snapshot(self) -> dict[PresenceKey, list[PresenceEvent]]:
        """A copy of every event, per key, sorted by `sent`."""
        with self._lock:
            return {k: sorted(v, key=lambda e: e.sent) for k, v in self.events.items()}

    def justified(self, key: PresenceKey, sent: float, returned: float) -> bool:
        """True when an accepted write [sent, returned] of `key` is attributable to a greet."""
        with self._lock:
            events = sorted(self.events.get(key, ()), key=lambda e: e.sent)
        return write_justified(events, sent, returned, self.expiry, self.leave_revokes)


def _revokes(event: PresenceEvent, leave_revokes: bool) -> bool:
    if event.kind == "leave":
        return leave_revokes
    return not event.writer


def write_justified(
    events: list[PresenceEvent], sent: float, returned: float, expiry: float,
    leave_revokes: bool = True,
) -> bool:
    """The attribution rule of this module's docstring; `events` sorted by `sent`."""
    revocations = [e for e in events if _revokes(e, leave_revokes)]
    end = bisect.bisect_left([e.sent for e in events], returned)  # rule 1: G.sent < W.returned
    for greet in reversed(events[:end]):
        if greet.kind != "greet" or not greet.writer:
            continue
        if sent >= _alive_until(events, greet, leave_revokes) + expiry:  # rule 2
            continue
        if any(r.sent >= greet.returned and r.returned <= sent for r in revocations):  # rule 3
            continue
        return True
    return False


def _alive_until(events: list[PresenceEvent], greet: PresenceEvent, leave_revokes: bool) -> float:
    """When the greet's expiry clock starts: its return, or (heartbeating transports) the
    return of the first leave after it."""
    if leave_revokes:
        return greet.returned
    leaves = [e.returned for e in events if e.kind == "leave" and e.sent >= greet.sent]
    return min(leaves) if leaves else float("inf")
