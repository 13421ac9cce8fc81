"""The lease keeper of a cluster daemon: take a fair share of the shards, keep them, and stop
serving a shard before anyone else can take it.

Two asyncio tasks on the daemon's loop:

- the *round* (every `tick`, a quarter of the renew interval or less): renew every held
  lease that is due (TTL/3 after its last good renew), heartbeat (`pg_nodes`), give back
  shards above the fair share while none is free, then try free or expired shards up to
  ceil(shards / live daemons) — but not one whose runtime died or would not start here
  lately: after each such loss it is left to the others for a pause that doubles with
  consecutive losses (backoff.py). A refused renew stops serving that shard at once.
- the *watchdog* (every `check`, a few tens of milliseconds): any held lease whose last good
  renew was *sent* more than TTL/2 ago (lease.should_serve) stops being served, whatever the
  database is doing. It never waits for the database, so a hung connection (a partition, a
  paused PostgreSQL) cannot keep a shard served past TTL/2. It also asks the daemon whether
  each held shard's runtime is still fine (`healthy`): a shard whose runtime stopped on its
  own (or whose check raises) is given up and its lease released at once, so that a daemon
  (this one too, after its pause) takes it and starts a fresh runtime, instead of renewing
  a dead shard forever.

Database calls run on the keeper's own threads, each bounded by a timeout; a call that times
out abandons its connection (its thread ends when the socket does: TCP keepalives and
`tcp_user_timeout`) and the next round connects anew. Stopping early is the fast path only:
the fenced store transaction is what makes a late write impossible.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import psycopg
from task_ingress.actors.log import get_logger
from task_ingress.actors.rules.chain import ChainKey
from task_ingress.runtime.cluster import pg_leases, pg_nodes
from task_ingress.runtime.cluster.backoff import (
    BACKOFF_CAP,
    START_FAILED_CAP,
    Backoff,
    after_death,
    not_backing_off,
)
from task_ingress.runtime.cluster.lease import (
    Lease,
    LeaseTiming,
    fair_share,
    renew_due,
    shards_to_acquire,
    shards_to_release,
    should_serve,
)
from task_ingress.runtime.cluster.setup import ensure_cluster_database

T = TypeVar("T")
Started = Callable[[Lease], Awaitable[None]]
Stopped = Callable[[int, str], Awaitable[None]]
Healthy = Callable[[int], bool]

LOST_REFUSED = "renew_refused"
LOST_LATE = "renew_late"
START_FAILED = "start_failed"
RUNTIME_DIED = "runtime_died"
GIVEN_BACK = "rebalance"
SHUTDOWN = "shutdown"


def always_healthy(shard: int) -> bool:
    """The default health check: every shard's runtime is fine."""
    return True


def lock_wait_ms(timing: LeaseTiming) -> int:
    """How long a keeper statement waits for a row lock: a quarter of the renew interval at
    most, so a blocked acquire never makes the next renew late."""
    return max(50, min(250, int(timing.renew_interval * 250)))


def connect(database: str, timing: LeaseTiming) -> psycopg.Connection[Any]:
    """An autocommit connection whose dead peer is noticed within about the lease TTL and
    whose statements give up on a row lock after `lock_wait_ms`."""
    return psycopg.connect(
        database, autocommit=True, connect_timeout=max(2, round(timing.renew_interval)),
        keepalives=1, keepalives_idle=1, keepalives_interval=1, keepalives_count=2,
        tcp_user_timeout=max(1000, int(timing.ttl * 1000)), application_name="ti-keeper",
        options=f"-c lock_timeout={lock_wait_ms(timing)}")


END_STALE_HOLDER = (
    "SELECT a.pid, pg_terminate_backend(a.pid) FROM shard_leases s "
    "JOIN pg_stat_activity a ON a.backend_xid = s.xmax "
    "WHERE s.shard = %s AND s.expires_at <= now() AND a.pid <> pg_backend_pid()")
"""End the session whose transaction still holds an *expired* lease row locked.

A holder whose connection went silent inside a fenced write (a partition: its packets
vanish, so neither its COMMIT nor its ROLLBACK ever arrives, and PostgreSQL may never see
the session idle) keeps the row locked, and nobody could take the shard over. Its lease has
expired, so it stopped serving long ago and nothing of that transaction was acknowledged;
ending it rolls it back. The locker is found by the row's `xmax` (the locking transaction).
Needs the same database role on every daemon (or pg_signal_backend)."""


def acquire_or_clear(conn: psycopg.Connection[Any], shard: int, owner: str, ttl: float,
                     sent_at: float) -> Lease | None:
    """`pg_leases.acquire`; when the row is locked past its lease, end the stale locker's
    session (see END_STALE_HOLDER) and return None: the next round acquires."""
    try:
        return pg_leases.acquire(conn, shard, owner, ttl, sent_at)
    except psycopg.errors.LockNotAvailable:
        ended = conn.execute(END_STALE_HOLDER, (shard,)).fetchall()
        if ended:
            get_logger(component="cluster.keeper", node=owner).warning(
                "lease.stale_holder_ended", shard=shard, pids=[int(r[0]) for r in ended])
        return None


class LeaseKeeper:
    """Holds shards for `node` and tells the daemon when to start and stop serving each."""

    def __init__(self, *, database: str, node: str, shards: int, timing: LeaseTiming,
                 on_acquired: Started, on_lost: Stopped,
                 clock: Callable[[], float] = time.monotonic,
                 acquire: Callable[..., Lease | None] | None = None,
                 audit_key: ChainKey | None = None,
                 healthy: Healthy = always_healthy,
                 backoff_cap: float = BACKOFF_CAP) -> None:
        self.database = database
        self.healthy = healthy
        """shard -> is the runtime serving it fine. Asked by the watchdog, on the loop, for
        every held shard every `check`: it must answer at once. A check that raises counts
        as False (logged `keeper.health_check_failed`)."""
        self.audit_key = audit_key
        """Writes the chain roster at start when the database has none (None: the first
        runtime to open a shard writes it)."""
        self.acquire = acquire or acquire_or_clear
        """`acquire_or_clear` (a test may wrap it, to stop the daemon mid-acquire)."""
        self.node = node
        self.shards = shards
        self.timing = timing
        self.on_acquired = on_acquired
        self.on_lost = on_lost
        self.clock = clock
        self.tick = min(timing.renew_interval / 4, 0.5)
        self.check = min(timing.stop_serving_after / 20, 0.05)
        self.held: dict[int, Lease] = {}
        self.backoff_cap = backoff_cap
        """The longest pause before this daemon tries again a shard whose runtime keeps
        dying, and how long a shard must be served for its deaths to count from one again
        (backoff.py)."""
        # Per shard: its pause after its runtime died here, and when this daemon last
        # acquired it (how long it was served before it died).
        self._backoffs: dict[int, Backoff] = {}
        self._acquired_at: dict[int, float] = {}
        self.live_nodes = 1
        self._conn: psycopg.Connection[Any] | None = None
        # Threads of our own: an abandoned (hung) call must not starve the loop's default
        # executor, which the daemon uses to start and close runtimes.
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="lease-keeper")
        self._tasks: list[asyncio.Task[None]] = []
        self._side: set[asyncio.Task[None]] = set()
        self._stopping = False
        self.log = get_logger(component="cluster.keeper", node=node)

    # ---- database calls, bounded ---------------------------------------------------
    async def _db(self, fn: Callable[..., T], *args: Any, timeout: float | None = None) -> T:
        loop = asyncio.get_running_loop()
        limit = timeout if timeout is not None else self.timing.renew_interval
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = await asyncio.wait_for(
                loop.run_in_executor(self._pool, connect, self.database, self.timing), limit)
        conn = self._conn
        try:
            return await asyncio.wait_for(loop.run_in_executor(self._pool, fn, conn, *args),
                                          limit)
        except BaseException:
            self._abandon(conn)
            raise

    def _abandon(self, conn: psycopg.Connection[Any]) -> None:
        if self._conn is conn:
            self._conn = None
        # Closed on a keeper thread: close() may wait for the hung call's lock.
        self._pool.submit(conn.close)

    # ---- lifecycle -----------------------------------------------------------------
    async def start(self) -> None:
        """Set the schema up and take a first share; raises when the database cannot be
        reached (the daemon exits 2) or holds another shard count (ShardCountMismatch)."""
        start_limit = max(10.0, self.timing.ttl)
        await self._db(ensure_cluster_database, self.shards, self.audit_key,
                       timeout=start_limit)
        await self._db(pg_nodes.ensure_nodes_schema, timeout=start_limit)
        await self._round()
        self._tasks = [asyncio.create_task(self._rounds()),
                       asyncio.create_task(self._watchdog())]

    async def stop(self) -> None:
        """Stop serving every shard (gracefully), give every lease back, leave the cluster."""
        self._stopping = True
        # The round under way finishes rather than being cancelled: a cancelled acquire may
        # still commit in its thread, leaving a lease nobody holds until it expires. Each
        # of its calls is bounded; the bound here is the last resort.
        rounds, others = self._tasks[:1], self._tasks[1:]
        for task in others:
            task.cancel()
        for task in rounds:
            with contextlib.suppress(asyncio.CancelledError, asyncio.TimeoutError, Exception):
                await asyncio.wait_for(task, self.timing.ttl)
        for task in others:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._side:  # starts and give-backs under way finish first
            self.log.info("keeper.waiting", tasks=len(self._side))
            await asyncio.gather(*self._side, return_exceptions=True)
        held, self.held = dict(self.held), {}
        self.log.info("keeper.draining", shards=sorted(held))
        # Every shard is stopped and every lease released even when one stop fails.
        await asyncio.gather(*(self._stop_serving(lease, SHUTDOWN) for lease in held.values()))
        for lease in held.values():
            with contextlib.suppress(Exception):
                await self._db(pg_leases.release, lease)
        with contextlib.suppress(Exception):
            await self._db(pg_nodes.leave, self.node)
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.get_running_loop().run_in_executor(self._pool, self._conn.close)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.log.info("keeper.stopped", released=sorted(held))

    # ---- the two loops -------------------------------------------------------------
    async def _rounds(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.tick)
            if self._stopping:
                return
            try:
                await self._round()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database is away: the watchdog stops serving
                self.log.warning("keeper.round_failed", error=repr(exc))

    async def _watchdog(self) -> None:
        while True:
            await asyncio.sleep(self.check)
            for lease in list(self.held.values()):
                # Only cancellation may end this loop: it is what stops serving a lease that
                # went late, and fencing counts on the holder stopping in time. A failure
                # with one lease must not leave the others (or the next pass) unwatched.
                try:
                    await self._watch(lease)
                except Exception as exc:
                    self.log.error("keeper.watchdog_failed", shard=lease.shard,
                                   error=repr(exc))

    async def _watch(self, lease: Lease) -> None:
        if not should_serve(lease, self.clock(), self.timing):
            await self._lose(lease, LOST_LATE)
        elif not self._healthy(lease.shard):
            await self._lose(lease, RUNTIME_DIED)

    def _healthy(self, shard: int) -> bool:
        try:
            return self.healthy(shard)
        except Exception as exc:
            # A check that cannot answer counts as a dead runtime. Wrongly giving up a live
            # shard costs one restart under a new epoch (the fence keeps the old runtime's
            # writes out); wrongly keeping a dead one leaves it unserved, lease and all,
            # until the daemon restarts.
            self.log.error("keeper.health_check_failed", shard=shard, error=repr(exc))
            return False

    async def _lose(self, lease: Lease, why: str) -> None:
        if self.held.get(lease.shard) != lease:
            return
        del self.held[lease.shard]
        self.log.warning("lease.lost", shard=lease.shard, epoch=lease.epoch, reason=why)
        try:
            await self._stop_serving(lease, why)
        finally:
            # Maybe (late) or surely (runtime died) still ours in the database: free it now,
            # for the others and for our own next round, rather than letting it expire —
            # also when on_lost failed or the watchdog was cancelled meanwhile (stop()).
            if why in (LOST_LATE, RUNTIME_DIED):
                self._spawn(self._release_quietly(lease))
            if why in (RUNTIME_DIED, START_FAILED):  # before the release: no round sees
                self._back_off(lease.shard, why)     # it free and unpaused

    def _back_off(self, shard: int, why: str) -> None:
        """Leave `shard` alone for a while: its runtime died or would not start (backoff.py;
        a start failure, often a passing database problem, pauses at most START_FAILED_CAP)."""
        now = self.clock()
        served_for = now - self._acquired_at.get(shard, now)
        cap = self.backoff_cap if why == RUNTIME_DIED else min(self.backoff_cap,
                                                                 START_FAILED_CAP)
        backoff = self._backoffs[shard] = after_death(
            self._backoffs.get(shard), served_for, now, self.tick, cap)
        self.log.warning("shard.backoff", shard=shard, reason=why, deaths=backoff.deaths,
                         seconds=round(backoff.until - now, 3))

    async def _release_quietly(self, lease: Lease) -> None:
        with contextlib.suppress(Exception):
            await self._db(pg_leases.release, lease)

    async def _round(self) -> None:
        for lease in [lease for lease in self.held.values()
                      if renew_due(lease, self.clock(), self.timing)]:
            sent = self.clock()
            renewed = await self._db(pg_leases.renew, lease, self.timing.ttl, sent)
            if self.held.get(lease.shard) != lease:  # the watchdog dropped it meanwhile
                if renewed is not None:
                    await self._release_quietly(renewed)
            elif renewed is None:
                await self._lose(lease, LOST_REFUSED)
            else:
                self.held[lease.shard] = renewed
        if self._stopping:
            return
        holdings = await self._db(pg_nodes.heartbeat, self.node, self.timing.ttl)
        self.live_nodes = len(holdings)
        share = fair_share(self.shards, self.live_nodes)
        free = await self._db(pg_nodes.free_shards)
        for shard in shards_to_release(frozenset(self.held), self.shards, holdings, len(free)):
            lease = self.held.pop(shard)
            self.log.info("lease.given_back", shard=shard, epoch=lease.epoch, share=share)
            self._spawn(self._give_back(lease))
        # A shard whose runtime keeps dying here is left to the others for a while; it still
        # counts as free for giving back (it is free for every other daemon).
        wanted = not_backing_off(free, self._backoffs, self.clock())
        for shard in shards_to_acquire(frozenset(self.held), wanted, share, self.node):
            if self._stopping:
                return
            sent = self.clock()
            got = await self._db(self.acquire, shard, self.node, self.timing.ttl, sent)
            if got is not None and self._stopping:  # stop() began meanwhile: give it back
                self.log.info("lease.released_while_stopping", shard=shard, epoch=got.epoch)
                await self._release_quietly(got)
                return
            if got is not None:
                self.held[shard] = got
                self._acquired_at[shard] = sent
                self.log.info("lease.acquired", shard=shard, epoch=got.epoch, share=share)
                self._spawn(self._serve(got))

    # Starting and draining a shard take time; they run beside the rounds so that renews
    # of the other shards are never late because of them.
    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._side.add(task)
        task.add_done_callback(self._side.discard)

    async def _serve(self, lease: Lease) -> None:
        try:
            await self.on_acquired(lease)
        except Exception as exc:  # cannot serve it: do not sit on it either
            self.log.error("shard.start_failed", shard=lease.shard, error=repr(exc))
            await self._lose(lease, START_FAILED)
            await self._release_quietly(lease)

    async def _give_back(self, lease: Lease) -> None:
        """Drain the shard, then release it (a rebalance: someone short of shards takes it)."""
        try:
            await self._stop_serving(lease, GIVEN_BACK)
        finally:
            await self._release_quietly(lease)

    async def _stop_serving(self, lease: Lease, why: str) -> None:
        """`on_lost` for a lease already dropped from `held`; a failure is logged, not
        raised: the lease is released all the same, since whatever the daemon failed to
        stop, the fence keeps its writes out once another holder takes the shard."""
        try:
            await self.on_lost(lease.shard, why)
        except Exception as exc:
            self.log.error("shard.stop_failed", shard=lease.shard, epoch=lease.epoch,
                           reason=why, error=repr(exc))
