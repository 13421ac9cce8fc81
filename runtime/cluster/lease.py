"""Lease timing: when to renew and when to stop serving a shard (pure; clocks are arguments).

A lease's expiry is set by PostgreSQL (`now() + ttl`) when a renew commits. The holder
cannot see that clock, so it counts from the moment it *sent* the renew, on its own
monotonic clock: the database stamped the expiry no earlier than that, so the lease is valid
until at least `sent + ttl` (clocks drifting by less than the margin). The holder stops
serving at `sent + stop_after` (TTL/2 by default), long before anyone else can acquire the
shard at `sent + ttl`; renewing every TTL/3 leaves room for one failed renew before it stops.
Serving stops early; the fenced write (actors/storage/pg_store.py) makes it safe even when a
paused holder does not notice in time.
"""

from __future__ import annotations

from dataclasses import dataclass

from task_ingress.actors.rules.shards import Fence


@dataclass(frozen=True)
class LeaseTiming:
    """How long a lease lasts and how its holder keeps it."""

    ttl: float = 10.0
    """Seconds a lease lasts after its last successful renew (PostgreSQL's clock)."""
    renew_every: float | None = None
    """Seconds between renews; default ttl/3."""
    stop_after: float | None = None
    """Seconds after the last successful renew was sent when the holder stops serving;
    default ttl/2. Must be below ttl."""

    def __post_init__(self) -> None:
        if self.ttl <= 0:
            raise ValueError("ttl must be positive")
        if not 0 < self.renew_interval < self.stop_serving_after:
            raise ValueError("renew_every must be positive and below stop_after")
        if not self.stop_serving_after < self.ttl:
            raise ValueError("stop_after must be below ttl: a holder must stop before expiry")

    @property
    def renew_interval(self) -> float:
        """Seconds between renews."""
        return self.ttl / 3 if self.renew_every is None else self.renew_every

    @property
    def stop_serving_after(self) -> float:
        """Seconds after the last good renew was sent when serving stops."""
        return self.ttl / 2 if self.stop_after is None else self.stop_after


@dataclass(frozen=True)
class Lease:
    """A shard held by `owner` under fencing `epoch`; `renewed_at` is the holder's monotonic
    time when it sent the acquire or renew that last succeeded."""

    shard: int
    owner: str
    epoch: int
    renewed_at: float

    @property
    def fence(self) -> Fence:
        """What a write under this lease is checked against."""
        return Fence(self.shard, self.owner, self.epoch)


def should_serve(lease: Lease | None, now: float, timing: LeaseTiming) -> bool:
    """True while the holder may answer requests of the lease's shard."""
    return lease is not None and 0 <= now - lease.renewed_at < timing.stop_serving_after


def renew_due(lease: Lease, now: float, timing: LeaseTiming) -> bool:
    """True when the holder should renew now (it still holds the lease as far as it knows)."""
    return now - lease.renewed_at >= timing.renew_interval


# ---- fair shares (which shards a keeper takes or gives back) --------------------------
def fair_share(shards: int, live_nodes: int) -> int:
    """Shards one daemon should hold: ceil(shards / live daemons), counting itself.

    `live_nodes` comes from the heartbeat rows (runtime/cluster/pg_nodes.py); a daemon
    always counts itself, so a lone daemon takes every shard."""
    live = max(1, live_nodes)
    return -(-shards // live)


def shards_to_acquire(held: frozenset[int], free: list[int], share: int,
                      node: str) -> list[int]:
    """Free (or expired) shards to try for, up to the fair share, in a node-specific order
    so that daemons starting together mostly ask for different shards (one loses each race
    anyway: acquire is one conditional UPDATE)."""
    room = share - len(held)
    if room <= 0:
        return []
    candidates = sorted(s for s in free if s not in held)
    if not candidates:
        return []
    start = int.from_bytes(node.encode("utf-8"), "big") % len(candidates)
    return (candidates[start:] + candidates[:start])[:room]


def shards_to_release(held: frozenset[int], shards: int, holdings: dict[str, int],
                      unowned: int) -> list[int]:
    """Shards to give back so that every live daemon gets its share — only while no shard
    is free (`unowned` counts free or expired ones: those go to whoever is short first).

    `holdings` is every live daemon's count of held shards (this one included). A daemon
    above ceil(shards / live) gives back its excess; one at the ceiling gives back one shard
    while another live daemon holds less than floor(shards / live) (a newcomer with none).
    Highest shard first. A round later the short daemon takes what became free."""
    if unowned > 0 or not holdings:
        return []
    live = len(holdings)
    ceil, floor = fair_share(shards, live), shards // live
    excess = len(held) - ceil
    if excess <= 0 and len(held) > floor and min(holdings.values()) < floor:
        excess = 1
    return sorted(held, reverse=True)[:max(0, excess)]
