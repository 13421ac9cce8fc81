"""The greet ledger's marks in the cluster database (runtime/nats/greets.py, issue 13 G).

A cluster daemon writes each verified greet's mark to `greet_marks` before the greet takes
effect, as the single daemon appends it to its file, so that whoever holds a shard next
(after a failover or a rebalance) loads the marks of its workspaces before it serves and a
captured older greet is `stale` there too. One row per (workspace, channel, peer): the
newest `ts` and the greet ids persisted at it, merged in the upsert as `greets.merged` says
(an older `ts` never wins, so an old owner still finishing a greet cannot undo a newer mark).
A shard's holder writes its marks fenced by its lease: in one statement that holds the
shard's lease row with FOR SHARE and finds it still naming this holder and epoch. So a mark
commits either before a takeover of the shard (whose UPDATE of the row waits for it), and
the next holder, which loads the marks after its acquire committed, knows it; or it is
refused, and the old holder does not apply the greet. Before, an old holder still finishing
a greet could commit its mark after the next holder had loaded the marks: for that greet's
peer the next holder's ledger knew less than had been applied (a captured older greet
signed in between could pass there).

Bounded: rows whose `ts` left the window (`greets.horizon`) never decide a verdict again; a
shard's new holder deletes its workspaces' ones when it loads them, and each workspace's
store deletes them again every MAX_REPLAY_AGE seconds as it writes, so the table holds
about the live marks of the peers that greeted in the last five minutes.

`GreetDatabase` is one connection per daemon shared by every shard's handlers (their worker
threads take turns under a lock): it is opened at the first use, and reopened once when a
call finds it broken (the upsert merges, so a retried write is harmless). Never called on
the event loop.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from task_ingress.actors.rules.shards import Fence
from task_ingress.actors.storage.pg_store import Fenced
from task_ingress.runtime.nats.envelope import MAX_REPLAY_AGE
from task_ingress.runtime.nats.greets import MAX_IDS_PER_TS, PeerKey, Persisted, horizon

SCHEMA = """
-- The greet ledger's marks (runtime/cluster/pg_greets.py): the newest verified greet
-- persisted per peer, kept while its ts can still pass the window.
CREATE TABLE IF NOT EXISTS greet_marks (
    workspace text NOT NULL,
    channel text NOT NULL,
    peer_id text NOT NULL,
    ts bigint NOT NULL,
    ids text[] NOT NULL,
    PRIMARY KEY (workspace, channel, peer_id)
);
"""

# greets.merged in one statement: a newer ts replaces the row, the same ts appends a new
# id (the last MAX_IDS_PER_TS kept), an older ts or a known id leaves the row as it is.
_MERGE = f"""
ON CONFLICT (workspace, channel, peer_id) DO UPDATE SET
    ids = CASE WHEN EXCLUDED.ts > g.ts THEN EXCLUDED.ids
               ELSE (g.ids || EXCLUDED.ids)[
                   greatest(1, cardinality(g.ids) + 2 - {MAX_IDS_PER_TS}):] END,
    ts = EXCLUDED.ts
WHERE EXCLUDED.ts > g.ts OR (EXCLUDED.ts = g.ts AND NOT %(id)s = ANY(g.ids))
"""
UPSERT = """
INSERT INTO greet_marks AS g (workspace, channel, peer_id, ts, ids)
VALUES (%(ws)s, %(channel)s, %(peer)s, %(ts)s, ARRAY[%(id)s]::text[])
""" + _MERGE
# The same under a lease, as ONE statement (autocommit: its own transaction, which never
# sits idle holding the lease row, whatever happens to this process between round trips):
# the row is locked FOR SHARE, the mark merged only if the row names the holding, and the
# answer says whether it did (the merge itself may rightly change nothing).
FENCED_UPSERT = """
WITH lease AS (SELECT shard FROM shard_leases
               WHERE shard = %(shard)s AND owner = %(owner)s AND epoch = %(epoch)s
               FOR SHARE),
     mark AS (INSERT INTO greet_marks AS g (workspace, channel, peer_id, ts, ids)
              SELECT %(ws)s, %(channel)s, %(peer)s, %(ts)s, ARRAY[%(id)s]::text[] FROM lease
              """ + _MERGE + """ RETURNING 1)
SELECT count(*) FROM lease
"""

T = TypeVar("T")


def ensure_greets_schema(conn: psycopg.Connection[Any]) -> None:
    """Create the marks table if missing (several daemons may race: an advisory lock)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(7316004)")
        conn.execute(SCHEMA)


def write_mark(conn: psycopg.Connection[Any], key: PeerKey, ts: int, env_id: str,
               fence: Fence | None = None) -> None:
    """Merge `env_id` at `ts` into `key`'s row, committed when it returns (the caller's
    connection is in autocommit); with `fence`, only while the shard's lease row names
    that holding (`Fenced` otherwise, nothing written)."""
    ws, channel, peer = key
    params: dict[str, Any] = {"ws": ws, "channel": channel, "peer": peer, "ts": ts,
                              "id": env_id}
    if fence is None:
        conn.execute(UPSERT, params)
        return
    row = conn.execute(FENCED_UPSERT, {**params, "shard": fence.shard, "owner": fence.owner,
                                       "epoch": fence.epoch}).fetchone()
    if row is None or int(row[0]) != 1:
        raise Fenced(f"shard {fence.shard} is no longer held by {fence.owner} under epoch "
                     f"{fence.epoch}: greet mark not written")


def prune(conn: psycopg.Connection[Any], workspace: str, oldest: float) -> int:
    """Delete `workspace`'s rows whose ts is older than `oldest`; how many went."""
    cur = conn.execute("DELETE FROM greet_marks WHERE workspace = %s AND ts < %s",
                       (workspace, oldest))
    return max(cur.rowcount, 0)


def live_marks(conn: psycopg.Connection[Any], workspace: str,
               oldest: float) -> dict[PeerKey, Persisted]:
    """`workspace`'s marks whose ts is not older than `oldest`."""
    rows = conn.execute("SELECT channel, peer_id, ts, ids FROM greet_marks "
                        "WHERE workspace = %s AND ts >= %s", (workspace, oldest)).fetchall()
    return {(workspace, str(ch), str(peer)): (int(ts), [str(i) for i in ids])
            for ch, peer, ts, ids in rows}


class GreetDatabase:
    """A daemon's connection for greet marks (thread-safe; lazily opened); `store(ws)` is
    the `GreetStore` of one workspace."""

    def __init__(self, url: str, *, wall: Callable[[], float] = time.time,
                 connect: Callable[[str], psycopg.Connection[Any]] | None = None) -> None:
        self.url = url
        self.wall = wall
        self._connect = connect or (lambda u: psycopg.connect(u, autocommit=True,
                                                              connect_timeout=5))
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()
        self._closed = False

    def store(self, workspace: str, fence: Fence | None = None) -> PgGreetStore:
        """The marks of `workspace` (what one envelope handler's ledger reads and writes),
        written under `fence` when given (the holding of the shard serving it)."""
        return PgGreetStore(self, workspace, fence)

    def run(self, call: Callable[[psycopg.Connection[Any]], T]) -> T:
        """`call(connection)` under the lock; on a broken connection that was open before,
        once more on a new one."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the greet marks' connection is closed (daemon stopping)")
            for attempt in (1, 2):
                fresh = self._conn is None
                if self._conn is None:
                    self._conn = self._connect(self.url)
                try:
                    return call(self._conn)
                except psycopg.OperationalError:
                    self._drop()
                    if fresh or attempt == 2:
                        raise
            raise AssertionError("unreachable")

    def close(self) -> None:
        """Close the connection; later calls raise (a late greet is then not applied)."""
        with self._lock:
            self._closed = True
            self._drop()

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # already broken: nothing to release
                conn.close()


class PgGreetStore:
    """The `GreetStore` of one workspace of a cluster shard, in `greet_marks`."""

    def __init__(self, db: GreetDatabase, workspace: str, fence: Fence | None = None) -> None:
        self.db = db
        self.workspace = workspace
        self.fence = fence
        """The shard's holding its marks are written under (None: unfenced)."""
        self._pruned_at = float("-inf")

    def load(self) -> dict[PeerKey, Persisted]:
        """Delete the workspace's expired rows, then read the live ones."""
        now = self.db.wall()

        def read(conn: psycopg.Connection[Any]) -> dict[PeerKey, Persisted]:
            prune(conn, self.workspace, horizon(now))
            self._pruned_at = now
            return live_marks(conn, self.workspace, horizon(now))

        return self.db.run(read)

    def persist(self, key: PeerKey, ts: int, env_id: str, card: str) -> None:
        """Merge the mark, durable when this returns (every write is a commit of its own:
        `card` is not needed); expired rows go every MAX_REPLAY_AGE seconds."""
        if key[0] != self.workspace:
            raise ValueError(f"a mark of workspace {key[0]!r} in {self.workspace!r}'s store")

        def write(conn: psycopg.Connection[Any]) -> None:
            write_mark(conn, key, ts, env_id, self.fence)
            now = self.db.wall()
            if now - self._pruned_at >= MAX_REPLAY_AGE:
                prune(conn, self.workspace, horizon(now))
                self._pruned_at = now

        self.db.run(write)

    def close(self) -> None:
        """Nothing of its own to close: the connection is the daemon's (GreetDatabase)."""
