"""The daemon's budget for unproven traffic, and the tally of what it dropped (issue 13).

Unproven traffic is every message whose sender's key is not one the operator vouches for:
bytes that are no envelope, envelopes without a verified identity (no proof, every v0
envelope, a forged or stripped proof), and verified keys the trust policy does not allow.
None of it can ever write, yet each message that gets work (an audited rejection, a
presence change, an answer) costs the daemon an fsync'd audit row or a worker. One global
token bucket pays for that work; when it is empty a message is dropped before it is
judged and counted by subject, and the daemon writes one aggregated audit record per
subject and interval instead of one per message, so every outcome is still audited.

Pure bookkeeping: time comes from the injectable clock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from task_ingress.runtime.flow import TokenBucket, refill

MAX_TALLY_KEYS = 64
"""Distinct subjects counted per interval; more (a flood over many channels) are folded
into channel `*`, so a tally never grows with the attacker's imagination."""
UNPROVEN = "unproven"
SLOW_CONSUMER = "slow-consumer"
"""Messages the NATS client dropped because the daemon's pending queue was full: never
judged, proven or not."""


class UnprovenBudget:
    """A token bucket of `rate` messages per second up to `burst` (rate 0: no refill)."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float]) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self._bucket = TokenBucket(tokens=burst, stamp=clock())

    def take(self) -> bool:
        """Spend one token; False when the budget is spent."""
        self._bucket = refill(self._bucket, self.clock(), self.rate, self.burst)
        if self._bucket.tokens < 1.0:
            return False
        self._bucket.tokens -= 1.0
        return True


@dataclass(frozen=True)
class DropKey:
    """Where dropped messages arrived: workspace, channel, `v0|v1`, `broadcast|peer`."""

    cause: str
    workspace: str
    channel: str
    protocol: str
    where: str

    def request_id(self, count: int) -> str:
        """The aggregated record's request ID, e.g. `dropped:unproven:v1.peer:5321`."""
        return f"dropped:{self.cause}:{self.protocol}.{self.where}:{count}"


@dataclass(frozen=True)
class Dropped:
    """`count` messages of `size` bytes in total dropped at `key` in one interval."""

    key: DropKey
    count: int
    size: int


class DropTally:
    """Dropped messages by subject since the last report; bounded by MAX_TALLY_KEYS."""

    def __init__(self) -> None:
        self._counts: dict[DropKey, list[int]] = {}

    def add(self, key: DropKey, size: int) -> None:
        """Count one dropped message of `size` bytes."""
        if key not in self._counts and len(self._counts) >= MAX_TALLY_KEYS:
            key = DropKey(key.cause, key.workspace, "*", key.protocol, key.where)
        entry = self._counts.setdefault(key, [0, 0])
        entry[0] += 1
        entry[1] += size

    def take_all(self) -> list[Dropped]:
        """Everything counted so far (and start counting afresh)."""
        counts, self._counts = self._counts, {}
        return [Dropped(key, count, size) for key, (count, size) in counts.items()]

    def __len__(self) -> int:
        return sum(count for count, _size in self._counts.values())
