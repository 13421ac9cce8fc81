"""A bounded replay window: remembers envelope keys for `window` seconds, at most `capacity`."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

REPLAY_WINDOW = 300.0
CAPACITY = 100_000


class SeenWindow:
    """`seen(key)` is True when `key` was recorded less than `window` seconds ago.

    Memory is bounded: entries expire in insertion order (their deadlines only grow with a
    monotonic clock) and, past `capacity`, the oldest entry is dropped early. Not
    thread-safe: the daemon uses it from its event loop only.
    """

    def __init__(self, window: float = REPLAY_WINDOW, capacity: int = CAPACITY,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self.capacity = capacity
        self.clock = clock
        self._deadlines: OrderedDict[Hashable, float] = OrderedDict()

    def seen(self, key: Hashable) -> bool:
        """Record `key`; True when it was already recorded within the window."""
        now = self.clock()
        while self._deadlines:
            oldest, deadline = next(iter(self._deadlines.items()))
            if deadline > now:
                break
            del self._deadlines[oldest]
        if key in self._deadlines:
            return True
        self._deadlines[key] = now + self.window
        while len(self._deadlines) > self.capacity:
            self._deadlines.popitem(last=False)
        return False

    def __len__(self) -> int:
        return len(self._deadlines)
