"""The judged-id window: within its `ts` window a request ID that was judged is final.

SPEC 5: on the network a signed envelope is judged once; a repeat of a judged id gets the
recorded outcome, accepted or rejected, so a captured refusal (`peer_not_found`,
`capability_denied`, `overloaded`, ...) never becomes a write when replayed later.

An entry lives as long as its envelope could pass the `ts` window (until `ts` +
MAX_REPLAY_AGE, which is up to 600 s after judging for an envelope dated in the future),
and no longer. Memory is bounded without forgetting early: at `capacity` entries in all,
or `per_peer` of one (workspace, channel, peer), a new id is refused `overloaded` without
being judged, and that refusal is made final too by an overflow filter (a Bloom filter of
fixed size, two generations of `remember` seconds each, at least as long as any envelope
stays fresh: a replay of a refused id is always recognised; rarely a fresh id is taken for
one, and refused `overloaded` as well).
Used from the daemon's event loop only.
"""

from __future__ import annotations

import hashlib
import heapq
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from task_ingress.messages.audit import AuditRecord
from task_ingress.messages.outcomes import Outcome
from task_ingress.messages.reasons import Action, Reason

RequestKey = tuple[str, str, str, str]
"""(workspace, channel, peer ID, request ID)."""
CAPACITY = 100_000
PER_PEER = 10_000
FILTER_BITS = 1 << 22
FILTER_HASHES = 4


@dataclass(frozen=True)
class Verdict:
    """What was decided for a judged id: enough to answer its replays."""

    accepted: bool
    reason: Reason | None

    @classmethod
    def of(cls, outcome: Outcome) -> Verdict:
        """The verdict of an outcome."""
        return cls(outcome.accepted, outcome.reason)


OVERFLOWED = Verdict(False, Reason.OVERLOADED)
"""The verdict of an id refused because the window was full."""

JUDGED_TRUST = frozenset({"verified", "unverified"})
"""The trust of the senders whose requests the window holds (a forged envelope, trust
`rejected`, never enters it: it must not make a victim's id final)."""
TASK_ACTIONS = frozenset({Action.CREATE, Action.UPDATE, Action.CANCEL, Action.ENQUEUE})


def earlier_verdicts(records: Iterable[AuditRecord], memory: float, now: float
                     ) -> Iterator[tuple[RequestKey, Verdict, float]]:
    """(key, verdict, seconds left) of each request id an earlier run judged, from its
    audit records (oldest first), for as long as its envelope can still be fresh: `memory`
    seconds after it was judged, from `now` (unix seconds). Only what the window would have
    held: a task request of a verified or unverified sender, its first record (a replay's
    record repeats it); not a forged, dropped, malformed or presence record."""
    seen: set[RequestKey] = set()
    for r in records:
        if (r.trust not in JUDGED_TRUST or r.action not in TASK_ACTIONS or r.replay
                or not r.peer_id or not r.request_id):
            continue
        key = (r.workspace, r.channel, r.peer_id, r.request_id)
        left = r.at + memory - now
        if key in seen or left <= 0:
            continue
        seen.add(key)
        yield key, Verdict(r.outcome == "accepted", r.reason), left


def _digest(parts: tuple[str, ...]) -> bytes:
    return hashlib.blake2b("\x00".join(parts).encode("utf-8", "surrogatepass"),
                           digest_size=16).digest()


class OverflowFilter:
    """A two-generation Bloom filter: an added key is found for at least `window`
    seconds; lookups may find keys never added (false positives), never the reverse."""

    def __init__(self, window: float, clock: Callable[[], float], bits: int = FILTER_BITS,
                 hashes: int = FILTER_HASHES) -> None:
        self.window = window
        self.clock = clock
        self.bits = bits
        self.hashes = hashes
        self._current = bytearray(bits // 8)
        self._previous = bytearray(bits // 8)
        self._since = clock()
        self.added = 0

    def _positions(self, key: bytes) -> list[int]:
        digest = hashlib.blake2b(key, digest_size=4 * self.hashes).digest()
        return [int.from_bytes(digest[4 * i:4 * i + 4], "big") % self.bits
                for i in range(self.hashes)]

    def _rotate(self) -> None:
        now = self.clock()
        if now - self._since >= self.window:
            stale = now - self._since >= 2 * self.window
            self._previous = bytearray(self.bits // 8) if stale else self._current
            self._current = bytearray(self.bits // 8)
            self._since = now
            if stale:
                self.added = 0

    def add(self, key: bytes) -> None:
        """Remember `key` for at least one window."""
        self._rotate()
        for pos in self._positions(key):
            self._current[pos >> 3] |= 1 << (pos & 7)
        self.added += 1

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, bytes) or self.added == 0:
            return False
        self._rotate()
        positions = self._positions(key)
        return any(all(bits[p >> 3] & (1 << (p & 7)) for p in positions)
                   for bits in (self._current, self._previous))


class JudgedWindow:
    """Judged request IDs: in flight (a future of the outcome) or decided (a Verdict)."""

    def __init__(self, remember: float, *, capacity: int = CAPACITY, per_peer: int = PER_PEER,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = capacity
        self.per_peer = per_peer
        self.clock = clock
        self._entries: dict[bytes, tuple[float, Any]] = {}
        self._expiry: list[tuple[float, bytes, bytes]] = []
        self._per_peer: dict[bytes, int] = {}
        self.overflow = OverflowFilter(remember, clock)

    def lookup(self, key: RequestKey) -> Any:
        """The future or Verdict of a judged id, OVERFLOWED for an id refused because the
        window was full, or None when it was not judged within its window."""
        self._expire()
        digest = _digest(key)
        entry = self._entries.get(digest)
        if entry is not None:
            return entry[1]
        return OVERFLOWED if digest in self.overflow else None

    def admit(self, key: RequestKey) -> bool:
        """True when there is room to judge `key`; else it is remembered as refused."""
        self._expire()
        if (len(self._entries) < self.capacity
                and self._per_peer.get(_digest(key[:3]), 0) < self.per_peer):
            return True
        self.overflow.add(_digest(key))
        return False

    def start(self, key: RequestKey, pending: Any, lifetime: float) -> None:
        """Record `key` as being judged (`pending`: the future of its outcome) until
        `lifetime` seconds from now."""
        digest, peer = _digest(key), _digest(key[:3])
        deadline = self.clock() + max(lifetime, 0.0)
        if digest not in self._entries:
            self._per_peer[peer] = self._per_peer.get(peer, 0) + 1
        self._entries[digest] = (deadline, pending)
        heapq.heappush(self._expiry, (deadline, digest, peer))

    def finish(self, key: RequestKey, verdict: Verdict) -> None:
        """Replace the future by the decided verdict (a few bytes instead of an outcome)."""
        digest = _digest(key)
        entry = self._entries.get(digest)
        if entry is not None:
            self._entries[digest] = (entry[0], verdict)

    def seed(self, key: RequestKey, verdict: Verdict, lifetime: float) -> None:
        """Remember a verdict reached before this window existed (by an earlier run of the
        daemon) for `lifetime` seconds; the first verdict of an id stays. When the window
        is full the id goes to the overflow filter: its replays are refused, never judged."""
        if lifetime <= 0 or self.lookup(key) is not None:
            return
        if not self.admit(key):
            return
        self.start(key, verdict, lifetime)

    def discard(self, key: RequestKey) -> None:
        """Forget `key` (its judging failed before an outcome existed)."""
        digest = _digest(key)
        if self._entries.pop(digest, None) is not None:
            self._release(_digest(key[:3]))

    def _release(self, peer: bytes) -> None:
        left = self._per_peer.get(peer, 0) - 1
        if left > 0:
            self._per_peer[peer] = left
        else:
            self._per_peer.pop(peer, None)

    def _expire(self) -> None:
        now = self.clock()
        while self._expiry and self._expiry[0][0] <= now:
            deadline, digest, peer = heapq.heappop(self._expiry)
            entry = self._entries.get(digest)
            if entry is not None and entry[0] == deadline:
                del self._entries[digest]
                self._release(peer)

    def __len__(self) -> int:
        return len(self._entries)
