"""Admission control (SPEC §6 `overloaded`): bounded in-flight requests, per-peer request
rates and per-peer greet budgets.

Pure bookkeeping owned by the driver thread; time is passed in (the injectable clock), so
tests drive it deterministically. Excess is refused at once — never queued — and the
refusal is still audited by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from task_ingress.messages.reasons import Reason

ChannelKey = tuple[str, str]
PeerKey = tuple[str, str, str]
K = TypeVar("K")


@dataclass
class TokenBucket:
    """`tokens` available at `stamp`; refills at `rate`/s up to `burst`."""

    tokens: float
    stamp: float


def refill(bucket: TokenBucket, now: float, rate: float, burst: float) -> TokenBucket:
    """The bucket as it stands at `now` (time never runs backwards for a bucket)."""
    elapsed = max(0.0, now - bucket.stamp)
    return TokenBucket(tokens=min(burst, bucket.tokens + elapsed * rate),
                       stamp=max(bucket.stamp, now))


@dataclass(frozen=True)
class FlowLimits:
    """Caps; a rate of 0 disables the per-peer rate limit. These defaults are RuntimeConfig's
    (README, "Bounded under load")."""

    max_total: int = 1024
    max_per_channel: int = 256
    max_per_peer: int = 128
    peer_rate: float = 5000.0
    peer_burst: float = 10000.0
    # Greets have their own, much smaller budget: a greet makes the runtime hold a card
    # (and maybe a channel actor) until expiry, while a request holds nothing once
    # answered; an AGH peer re-greets each of its channels every greet_interval / 2.
    greet_rate: float = 20.0
    greet_burst: float = 200.0


class FlowControl:
    """Counts admitted, unanswered requests and per-peer tokens; decides `overloaded`."""

    def __init__(self, limits: FlowLimits) -> None:
        self.limits = limits
        self.total = 0
        # Plain dicts, a missing key read as 0 with `get`: a Counter answers a missing key
        # through its Python-level `__missing__`, four calls per request here, as a
        # channel's counts are usually back to none between batches.
        self.per_channel: dict[ChannelKey, int] = {}
        self.per_peer: dict[PeerKey, int] = {}
        self.buckets: dict[PeerKey, TokenBucket] = {}
        self.greet_buckets: dict[PeerKey, TokenBucket] = {}

    def admit(self, peer: PeerKey, now: float) -> Reason | None:
        """Take a slot for a request of `peer` = (workspace, channel, peer_id), or refuse."""
        lim = self.limits
        channel = (peer[0], peer[1])
        in_channel = self.per_channel.get(channel, 0)
        of_peer = self.per_peer.get(peer, 0)
        if (self.total >= lim.max_total or in_channel >= lim.max_per_channel
                or of_peer >= lim.max_per_peer):
            return Reason.OVERLOADED
        if not _take(self.buckets, peer, now, lim.peer_rate, lim.peer_burst):
            return Reason.OVERLOADED
        self.total += 1
        self.per_channel[channel] = in_channel + 1
        self.per_peer[peer] = of_peer + 1
        return None

    def release(self, peer: PeerKey) -> None:
        """Free the slot of an answered (or abandoned) admitted request."""
        self.total -= 1
        _decrement(self.per_channel, (peer[0], peer[1]))
        _decrement(self.per_peer, peer)

    def admit_greet(self, peer: PeerKey, now: float) -> Reason | None:
        """Charge a greet of `peer` = (workspace, channel, peer_id) to the peer's greet
        budget, or refuse it (`overloaded`). Leaves are never charged."""
        lim = self.limits
        if not _take(self.greet_buckets, peer, now, lim.greet_rate, lim.greet_burst):
            return Reason.OVERLOADED
        return None

    def sweep(self, now: float) -> None:
        """Forget buckets that are full again: an idle peer costs no memory."""
        lim = self.limits
        for buckets, rate, burst in ((self.buckets, lim.peer_rate, lim.peer_burst),
                                     (self.greet_buckets, lim.greet_rate, lim.greet_burst)):
            full = [k for k, b in buckets.items() if refill(b, now, rate, burst).tokens >= burst]
            for key in full:
                del buckets[key]


def _take(buckets: dict[PeerKey, TokenBucket], peer: PeerKey, now: float, rate: float,
          burst: float) -> bool:
    """Take one token from the peer's bucket (per peer, across its channels); False when it
    is empty. A rate of 0 disables the bucket: always True.

    Refills the bucket in place, as `refill` computes it: this runs for every request, and
    building a new bucket (or a default one for `dict.get`) per call was ~2 % of the
    in-process runtime's CPU."""
    if rate <= 0:
        return True
    key = (peer[0], "", peer[2])
    bucket = buckets.get(key)
    if bucket is None:
        bucket = buckets[key] = TokenBucket(burst, now)
    elif now > bucket.stamp:  # time never runs backwards for a bucket
        bucket.tokens = min(burst, bucket.tokens + (now - bucket.stamp) * rate)
        bucket.stamp = now
    if bucket.tokens < 1.0:
        return False
    bucket.tokens -= 1.0
    return True


def _decrement(counter: dict[K, int], key: K) -> None:
    left = counter.get(key, 0) - 1
    if left > 0:
        counter[key] = left
    else:
        counter.pop(key, None)
