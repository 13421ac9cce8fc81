"""How long a daemon leaves alone a shard whose runtime keeps dying or will not start (pure;
clocks are arguments).

A shard lost because its runtime died (`runtime_died`) is released at once, so any
daemon may take it at its next round. Without a pause this daemon would be one of them,
every round, forever, when the cause is local and lasting (a full disk, a corrupt store, a
bug its data triggers): a runtime start and a burst of log lines twice a second, and a
healthy daemon with room for the shard racing a sick one for it. So, after each such loss
this daemon skips the shard for `backoff_delay(deaths)`: the keeper's round interval after
the first death, doubling with every consecutive one, never more than `cap`. Other daemons
are not held back: the lease is free for them at once.

`cap` (BACKOFF_CAP, a minute) bounds two things: a shard that dies at every start costs
this daemon one start and a few log lines a minute, and once the cause is gone (the disk
freed) the shard waits here at most a minute before it is tried again. A minute is long
against a runtime's start (a second or so) and short against how long an operator takes
to notice and fix the cause.

Consecutive deaths start again from one when the shard was served for `cap` or longer
before it died: such a shard was not in a die-at-start loop, and it cannot die more often
than once a `cap` anyway, which is the rate the longest delay allows.

A runtime that would not start at all (`start_failed`) counts as a death too, with a
shorter cap (START_FAILED_CAP): its cause is more often passing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

BACKOFF_CAP = 60.0
"""The longest pause, in seconds; also how long a shard must be served for its deaths to
count from one again (module docstring)."""
START_FAILED_CAP = 10.0
"""The longest pause after a shard's runtime would not start (`start_failed`): such a
failure is often a passing database problem (unreadable greet marks while PostgreSQL
restarts), so the shard is tried again within seconds, yet a lasting cause (a chain that
does not verify under the key) costs a start every 10 s instead of every round."""


@dataclass(frozen=True)
class Backoff:
    """A shard's consecutive deaths on this daemon, and until when it is left alone."""

    deaths: int
    until: float
    """The daemon's monotonic time before which it does not try the shard again."""


def backoff_delay(deaths: int, base: float, cap: float) -> float:
    """Seconds to leave a shard alone after its `deaths`-th consecutive death: `base`,
    doubling with every further death, at most `cap` (0 when it never died)."""
    if deaths <= 0:
        return 0.0
    # The exponent is bounded so that a shard dying for days cannot overflow the float.
    return min(cap, base * 2.0 ** min(deaths - 1, 62))


def after_death(previous: Backoff | None, served_for: float, now: float, base: float,
                cap: float) -> Backoff:
    """The shard's backoff once its runtime died at `now`, after being
    served for `served_for` seconds: one more consecutive death, or the first again when it
    was served for `cap` or longer."""
    deaths = 1 if previous is None or served_for >= cap else previous.deaths + 1
    return Backoff(deaths, now + backoff_delay(deaths, base, cap))


def not_backing_off(shards: Iterable[int], backoffs: Mapping[int, Backoff],
                    now: float) -> list[int]:
    """The `shards` this daemon may try for at `now` (those whose pause is over)."""
    return [s for s in shards if (b := backoffs.get(s)) is None or now >= b.until]
