"""Which greet of each peer the daemon applied last, kept across restarts (issue 13, G).

A greet is applied only when it is newer than the last one applied for that (workspace,
channel, peer): a later `ts`, or the same `ts` under an id not applied yet. So a captured
older greet can never bring back a card the peer has since replaced (say, one that still
claimed `task.write`), however many greets flooded past in between, and a restart does not
reset it: each verified greet is written to the ledger's `GreetStore` before it takes
effect, and `load` gives a new ledger the marks written before. Unverified greets never
grant `task.write`, so they are ordered in memory only.

Two stores: `GreetFile`, the single daemon's small file (a JSON line per persisted greet,
fsync'd when its card differs from the peer's last one written: a power cut may then lose
only greets that repeat the card before them, whose replay changes nothing; compacted to the
live marks when it has grown to twice their number, and at load), and the cluster's table
(runtime/cluster/pg_greets.py), where the next holder of a shard finds them. Both keep, per
peer, the newest `ts` and the ids persisted at it (`merged`); the judging is the ledger's.

Bounded: a mark is kept only while it still matters, i.e. while its greet could still pass
the `ts` window (`ts` + MAX_REPLAY_AGE) or, once applied, while it decides revocation
(2 x greet_interval). At `capacity` live peers a greet of a new peer is refused (`full`),
never an old mark forgotten early. A store keeps only marks inside the `ts` window.

The marks live on the daemon's event loop; `persist` runs on a worker thread (a store
serializes its own writes).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, TextIO

from task_ingress.actors.storage.files import replace_private_file
from task_ingress.runtime.nats.envelope import MAX_REPLAY_AGE

PeerKey = tuple[str, str, str]
"""(workspace, channel, peer ID)."""
Persisted = tuple[int, list[str]]
"""A stored mark: the newest `ts` persisted and the greet ids persisted at that `ts`."""
CAPACITY = 100_000
MAX_IDS_PER_TS = 64
"""Greets of one peer applied within one second; more in that second are `full`."""
COMPACT_SLACK = 1024
PRUNE_EVERY = 1.0
"""Seconds between sweeps of a full ledger (a sweep reads every mark)."""


@dataclass
class GreetMark:
    """The newest greet applied (or being applied) for one peer, and what it granted."""

    ts: int
    ids: list[str] = field(default_factory=list)
    granted: bool = False
    fingerprint: str = ""
    applied_at: float | None = None
    """Monotonic time the runtime applied it; None while it is being applied."""


def verdict(mark: GreetMark | None, ts: int, env_id: str) -> str | None:
    """None when a greet (`ts`, `env_id`) is newer than `mark`, else why not:
    `stale` (an older ts), `duplicate` (this id at this ts) or `full` (too many ids in one
    second)."""
    if mark is None or ts > mark.ts:
        return None
    if ts < mark.ts:
        return "stale"
    if env_id in mark.ids:
        return "duplicate"
    return "full" if len(mark.ids) >= MAX_IDS_PER_TS else None


def merged(known: Persisted | None, ts: int, env_id: str) -> Persisted:
    """The stored mark once `env_id` at `ts` is persisted over `known`: a newer `ts`
    replaces it, the same `ts` adds the id (the last MAX_IDS_PER_TS kept), an older `ts`
    changes nothing (two writers may race: a cluster's old and new owner of a shard)."""
    if known is None or ts > known[0]:
        return ts, [env_id]
    if ts < known[0] or env_id in known[1]:
        return known
    return ts, [*known[1], env_id][-MAX_IDS_PER_TS:]


def horizon(now: float) -> float:
    """The oldest `ts` a greet can have and still pass the window at wall time `now`: a
    mark older than that can never decide a verdict again."""
    return now - MAX_REPLAY_AGE - 1


class GreetStore(Protocol):
    """Where a ledger's verified marks outlive it (a restart, a cluster's failover)."""

    def load(self) -> dict[PeerKey, Persisted]:
        """The marks written before whose `ts` is not older than `horizon(now)` (it may
        drop the older ones)."""
        ...

    def persist(self, key: PeerKey, ts: int, env_id: str, card: str) -> None:
        """Store `merged(mark of key, ts, env_id)` before the greet takes effect; `card`
        is the greet's card digest. Raises when it could not: the greet is not applied."""
        ...

    def close(self) -> None:
        """Release what the store holds open (the ledger is done)."""
        ...


class GreetLedger:
    """Last applied greet per peer; `store` None keeps it in memory only."""

    def __init__(self, store: GreetStore | None, *, greet_interval: float,
                 capacity: int = CAPACITY, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.store = store
        self.greet_interval = greet_interval
        self.capacity = capacity
        self.clock = clock
        self.wall = wall
        self._marks: dict[PeerKey, GreetMark] = {}
        self._pruned_at = float("-inf")

    def load(self) -> int:
        """Take the store's marks as greets applied before (whose presence did not
        survive); call it before the first greet. It reads the store: off the event loop
        when that is a database. The number of marks loaded."""
        if self.store is None:
            return 0
        loaded = self.store.load()
        for key, (ts, ids) in loaded.items():
            known = self._marks.get(key)
            if known is None or ts > known.ts:
                self._marks[key] = GreetMark(ts=ts, ids=list(ids), applied_at=-1e18)
        return len(loaded)

    # ---- on the event loop -------------------------------------------------------
    def judge(self, key: PeerKey, ts: int, env_id: str) -> str | None:
        """None when the greet may be applied; else `stale`, `duplicate` or `full`."""
        mark = self._marks.get(key)
        if mark is not None and not self._live(mark):
            del self._marks[key]
            mark = None
        why = verdict(mark, ts, env_id)
        if why is None and mark is None and len(self._marks) >= self.capacity:
            if self.clock() - self._pruned_at >= PRUNE_EVERY:  # a flood must not sweep
                self._pruned_at = self.clock()                 # once per greet
                self._prune()
            if len(self._marks) >= self.capacity:
                return "full"
        return why

    def note(self, key: PeerKey, ts: int, env_id: str) -> GreetMark:
        """Record a greet `judge` let through, before it is applied (greets of one peer
        then apply in this order)."""
        mark = self._marks.get(key)
        if mark is None or ts > mark.ts:
            # Until this greet is applied, the card applied before it still decides.
            old = mark or GreetMark(ts=ts)
            mark = GreetMark(ts=ts, ids=[env_id], granted=old.granted,
                             fingerprint=old.fingerprint, applied_at=old.applied_at)
            self._marks[key] = mark
        else:
            mark.ids.append(env_id)
        return mark

    def applied(self, key: PeerKey, mark: GreetMark, *, granted: bool,
                fingerprint: str) -> None:
        """The runtime applied `mark`'s greet; what it granted decides revocation."""
        if self._marks.get(key) is mark:
            mark.granted, mark.fingerprint, mark.applied_at = granted, fingerprint, self.clock()

    def failed(self, key: PeerKey, mark: GreetMark) -> None:
        """`mark`'s greet was not applied: the card applied before it still decides, and
        the mark expires like an applied one."""
        if self._marks.get(key) is mark and mark.applied_at is None:
            mark.applied_at = self.clock()

    def get(self, key: PeerKey) -> GreetMark | None:
        """The peer's live mark, if any."""
        mark = self._marks.get(key)
        return mark if mark is not None and self._live(mark) else None

    def __len__(self) -> int:
        return len(self._marks)

    def _live(self, mark: GreetMark) -> bool:
        if mark.ts >= horizon(self.wall()):
            return True
        return mark.applied_at is None or (
            self.clock() - mark.applied_at < 2 * self.greet_interval)

    def _prune(self) -> None:
        for key in [k for k, m in self._marks.items() if not self._live(m)]:
            del self._marks[key]

    # ---- on a worker thread ------------------------------------------------------
    def persist(self, key: PeerKey, ts: int, env_id: str, card: str) -> None:
        """Write that `env_id` at `ts` is the newest greet of `key`, whose card digest is
        `card`; called before the greet is applied, so a restart cannot forget it."""
        if self.store is not None:
            self.store.persist(key, ts, env_id, card)

    def close(self) -> None:
        """Close the store (the daemon is stopping)."""
        if self.store is not None:
            self.store.close()


class GreetFile:
    """The single daemon's `GreetStore`: JSON lines in a 0600 file of its own."""

    def __init__(self, path: str, *, capacity: int = CAPACITY,
                 wall: Callable[[], float] = time.time) -> None:
        self.path = path
        self.capacity = capacity
        self.wall = wall
        self._lock = threading.Lock()
        self._persisted: dict[PeerKey, Persisted] = {}
        self._cards: dict[PeerKey, str] = {}
        self._file: TextIO | None = None
        self._lines = 0

    def load(self) -> dict[PeerKey, Persisted]:
        """Read the file (a torn last line from a crash is skipped), keep the live marks
        and rewrite it compacted."""
        with self._lock:
            with contextlib.suppress(FileNotFoundError), \
                    open(self.path, encoding="utf-8") as fh:
                for line in fh:
                    try:
                        item = json.loads(line)
                        key = (str(item["k"][0]), str(item["k"][1]), str(item["k"][2]))
                        ts, ids = int(item["ts"]), [str(i) for i in item["ids"]]
                    except (ValueError, KeyError, IndexError, TypeError):
                        continue
                    known = self._persisted.get(key)
                    if known is None or ts >= known[0]:  # each line holds its ts's ids
                        self._persisted[key] = (ts, ids)
            self._rewrite()
            return {key: (ts, list(ids)) for key, (ts, ids) in self._persisted.items()}

    def persist(self, key: PeerKey, ts: int, env_id: str, card: str) -> None:
        """Append the peer's mark; fsync'd when `card` differs from its last one."""
        with self._lock:
            self._persisted[key] = merged(self._persisted.get(key), ts, env_id)
            changed = self._cards.get(key) != card
            self._cards[key] = card
            if (self._lines > 2 * len(self._persisted) + COMPACT_SLACK
                    or len(self._persisted) > self.capacity):
                self._rewrite()
                return
            if self._file is None:
                self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
            self._file.write(json.dumps({"k": list(key), "ts": self._persisted[key][0],
                                         "ids": self._persisted[key][1]},
                                        separators=(",", ":")) + "\n")
            self._file.flush()
            if changed:
                os.fsync(self._file.fileno())
            self._lines += 1

    def close(self) -> None:
        """Close the file (the daemon is stopping)."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def _rewrite(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        oldest = horizon(self.wall())
        self._persisted = {k: v for k, v in self._persisted.items() if v[0] >= oldest}
        self._cards = {k: v for k, v in self._cards.items() if k in self._persisted}
        replace_private_file(self.path, "".join(
            json.dumps({"k": list(key), "ts": ts, "ids": ids}, separators=(",", ":")) + "\n"
            for key, (ts, ids) in self._persisted.items()))
        self._lines = len(self._persisted)
