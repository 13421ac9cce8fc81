"""Admission control (SPEC §6 `overloaded`): bounded in-flight requests and per-peer rates.

Pure bookkeeping owned by the driver thread; time is passed in (the injectable clock), so
tests drive it deterministically. Excess is refused at once — never queued — and the
refusal is still audited by the caller.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TypeVar

from task_ingress.actors.rules import gate
from task_ingress.messages.reasons import Reason
from task_ingress.messages.requests import IngressContext

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


def peer_key(ctx: IngressContext) -> PeerKey | None:
    """The admission key of a (normalized) well-formed context; None for one the router
    rejects anyway (it never reaches a channel, so it holds no slot)."""
    if gate.check_context(ctx) is None:
        return (ctx.workspace, ctx.channel, ctx.peer_id)
    return None


class FlowControl:
    """Counts admitted, unanswered requests and per-peer tokens; decides `overloaded`."""

    def __init__(self, limits: FlowLimits) -> None:
        self.limits = limits
        self.total = 0
        self.per_channel: Counter[ChannelKey] = Counter()
        self.per_peer: Counter[PeerKey] = Counter()
        self.buckets: dict[PeerKey, TokenBucket] = {}

    def admit(self, peer: PeerKey, now: float) -> Reason | None:
        """Take a slot for a request of `peer` = (workspace, channel, peer_id), or refuse."""
        lim = self.limits
        channel = (peer[0], peer[1])
        if (self.total >= lim.max_total or self.per_channel[channel] >= lim.max_per_channel
                or self.per_peer[peer] >= lim.max_per_peer):
            return Reason.OVERLOADED
        if lim.peer_rate > 0:
            rate_key = (peer[0], "", peer[2])  # the rate is per peer, across its channels
            bucket = refill(self.buckets.get(rate_key, TokenBucket(lim.peer_burst, now)), now,
                            lim.peer_rate, lim.peer_burst)
            if bucket.tokens < 1.0:
                self.buckets[rate_key] = bucket
                return Reason.OVERLOADED
            bucket.tokens -= 1.0
            self.buckets[rate_key] = bucket
        self.total += 1
        self.per_channel[channel] += 1
        self.per_peer[peer] += 1
        return None

    def release(self, peer: PeerKey) -> None:
        """Free the slot of an answered (or abandoned) admitted request."""
        self.total -= 1
        _decrement(self.per_channel, (peer[0], peer[1]))
        _decrement(self.per_peer, peer)

    def sweep(self, now: float) -> None:
        """Forget buckets that are full again: an idle peer costs no memory."""
        lim = self.limits
        full = [k for k, b in self.buckets.items()
                if refill(b, now, lim.peer_rate, lim.peer_burst).tokens >= lim.peer_burst]
        for key in full:
            del self.buckets[key]


def _decrement(counter: Counter[K], key: K) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]
