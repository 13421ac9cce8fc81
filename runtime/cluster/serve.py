"""`task-ingress serve --cluster`: one daemon of a cluster — it serves only the shards it leases.

Start: the daemon's key (the *cluster's* AGH identity: every daemon of a cluster uses the
same key file, so peers address one handle whichever daemon holds their workspace), the
trust policy, the external NATS (`--nats-url`, a token or URL credentials; a NATS cluster
whose servers route to each other), then the lease keeper (keeper.py: database schema, a
first fair share). Exit 2 when NATS or the database cannot be reached in time, or the
database was set up for another shard count. Then the ready file (with `node_id`).

Per held shard (`ShardServing`): a fresh runtime (empty presence: peers re-greet; the new
owner answers `peer_not_found` until they do — presence is only ever lost, never invented),
one envelope handler per served workspace of the shard (the unchanged single-daemon handler),
and that workspace's subjects, built as the single daemon builds them. When the keeper says
a lease is lost (refused renew, or TTL/2 without a good one) the shard's subscriptions go at
once and its runtime is closed in the background: requests in flight get the runtime's
answer — under a fenced store, `task_ingress_unavailable` for any write the lease no longer
covers — and later ones `task_ingress_unavailable`. A shard whose runtime stopped on its own
(its driver thread failed; `IngressRuntime.alive()` turned False) is given up the same way and
its lease released at once (the keeper's `healthy` check): a daemon — this one too — takes
it again with a fresh runtime under a new epoch, instead of it answering
`task_ingress_unavailable` until the daemon restarts.

Each handler's greet ledger starts from the marks the shard's earlier holders wrote to the
database (pg_greets.py), read before the shard serves: a captured older greet stays `stale`
across a failover or a rebalance, as across the single daemon's restart.

Stop (SIGTERM/SIGINT/SIGHUP): readiness off, every shard drained (unsubscribe, answer what
is in flight), runtimes closed, leases released (others take them at once), heartbeat row
removed, ready file removed, exit 0. A second signal exits 130 at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import Field
from task_ingress.actors.log import get_logger
from task_ingress.actors.rules.chain import ChainKey
from task_ingress.actors.rules.shards import shard_of
from task_ingress.actors.storage.auditlog import given_key
from task_ingress.runtime import eventloop
from task_ingress.runtime.cluster.keeper import GIVEN_BACK, RUNTIME_DIED, SHUTDOWN, LeaseKeeper
from task_ingress.runtime.cluster.lease import Lease, LeaseTiming
from task_ingress.runtime.cluster.pg_greets import GreetDatabase
from task_ingress.runtime.cluster.pg_trust import DatabaseTrustPolicy
from task_ingress.runtime.config import RuntimeConfig
from task_ingress.runtime.errors import RuntimeStartError
from task_ingress.runtime.facade import IngressRuntime
from task_ingress.runtime.nats import envelope as wire
from task_ingress.runtime.nats.greets import GreetLedger
from task_ingress.runtime.nats.handler import JUDGED_MEMORY, EnvelopeHandler
from task_ingress.runtime.nats.identity import (
    b64url,
    fingerprint,
    handle,
    load_or_create_key,
    raw_public_key,
)
from task_ingress.runtime.nats.limits import PENDING_BYTES_LIMIT, PENDING_MSGS_LIMIT
from task_ingress.runtime.nats.metrics import Metrics
from task_ingress.runtime.nats.nkey import user_nkey
from task_ingress.runtime.nats.policy import TrustPolicy
from task_ingress.runtime.nats.ready import ReadyInfo, remove_ready_file, write_ready_file
from task_ingress.runtime.nats.settings import ServeSettings, mask_url
from task_ingress.runtime.nats.stopping import Stoppable, connect_within


def default_node_id() -> str:
    """hostname-pid: unique among live daemons, readable in `cluster status`."""
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class ClusterOptions:
    """What `--cluster` adds to the single daemon's settings."""

    database: str
    shards: int
    workspaces: tuple[str, ...]
    lease_ttl: float = 10.0
    node_id: str = field(default_factory=default_node_id)

    def __post_init__(self) -> None:
        if self.shards < 1:
            raise ValueError("--shards must be at least 1")
        if not self.workspaces:
            raise ValueError("a cluster daemon serves at least one --workspace")
        if not self.node_id or len(self.node_id) > 128:
            raise ValueError("--node-id must be 1-128 characters")
        if not self.lease_ttl > 0:
            raise ValueError("--lease-ttl must be a positive number of seconds")
        LeaseTiming(ttl=self.lease_ttl)

    @property
    def timing(self) -> LeaseTiming:
        """Renew every TTL/3, stop serving at TTL/2 (lease.py)."""
        return LeaseTiming(ttl=self.lease_ttl)

    def workspaces_of(self, shard: int) -> list[str]:
        """The served workspaces that live in `shard`."""
        return [ws for ws in self.workspaces if shard_of(ws, self.shards) == shard]


class ClusterReadyInfo(ReadyInfo):
    """The single daemon's ready file plus the cluster's fields (SPEC §9: `node_id`)."""

    node_id: str
    shards: int
    workspaces: list[str]
    database: str = Field(description="The PostgreSQL URL, password masked.")
    lease_ttl: float


def shard_runtime_config(settings: ServeSettings, cluster: ClusterOptions, lease: Lease,
                         clock: Callable[[], float]) -> RuntimeConfig:
    """The runtime of one held shard: its writes and audit go to PostgreSQL, every
    transaction fenced by the lease (shard, owner, epoch); the audit key is the cluster's
    (TASK_INGRESS_AUDIT_KEY, the same on every daemon); `--process-mode` as serve was told
    (pipeline: a process per held shard)."""
    return RuntimeConfig(
        database_url=with_timeouts(cluster.database, cluster.lease_ttl), fence=lease.fence,
        database_idle_timeout=cluster.lease_ttl / 4, actor_base=settings.actor_base,
        process_mode=settings.process_mode, local_peer_id=settings.peer_id,
        greet_interval=settings.greet_interval, clock=clock,
        peer_rate=settings.peer_rate, peer_burst=settings.peer_burst,
        max_in_flight_per_peer=settings.max_in_flight_per_peer)


def _audit_key() -> ChainKey | None:
    """The cluster's audit key (TASK_INGRESS_AUDIT_KEY, which every shard's runtime reads
    too), for the keeper to write the chain roster at start; None when absent or not hex
    (then the first shard's runtime writes it, or refuses to start)."""
    given = given_key()
    try:
        return None if given is None else ChainKey.from_hex(given[0])
    except ValueError:
        return None


def with_timeouts(url: str, ttl: float) -> str:
    """`url` with libpq's TCP keepalives and `tcp_user_timeout` set (unless given): a store
    connection whose peer went silent (a partition) fails within about the lease TTL
    instead of hanging, so a shard's runtime can close. The fence, not this, is what keeps
    such a connection from committing late."""
    parts = urlsplit(url)
    given = dict(parse_qsl(parts.query))
    wanted = {"keepalives": "1", "keepalives_idle": "1", "keepalives_interval": "1",
              "keepalives_count": "2", "connect_timeout": "5",
              "tcp_user_timeout": str(max(1000, int(ttl * 1000)))}
    query = urlencode({**wanted, **given})
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


class PolledTrust(DatabaseTrustPolicy):
    """The cluster's trust policy (PostgreSQL), read by a thread of its own every `recheck`
    seconds: the handler asks it on the event loop, which must never wait for the database
    (a partition would otherwise stall the loop, and with it the lease watchdog). Between
    reads it answers from the last policy read."""

    def __init__(self, url: str, recheck: float) -> None:
        super().__init__(url, recheck=recheck, read_on_call=False)
        self._stopped = threading.Event()
        self._poller = threading.Thread(target=self._poll, daemon=True, name="trust-poller")
        self._poller.start()

    def _poll(self) -> None:
        while not self._stopped.wait(self.recheck):
            self.refresh(force=True)

    def stop(self) -> None:
        """Stop polling and close the connection."""
        self._stopped.set()
        self._poller.join(10)
        self.close()


@dataclass
class ShardServing:
    """One held shard: its runtime, a handler and subscriptions per served workspace."""

    lease: Lease
    runtime: IngressRuntime | None = None
    started: bool = False
    """Set once `runtime.start` returned: only a started runtime can have died (one still
    starting on its thread is not alive yet, and is not unhealthy)."""
    handlers: dict[str, EnvelopeHandler] = field(default_factory=dict)
    subs: list[Any] = field(default_factory=list)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    greeter: asyncio.Task[None] | None = None


class ClusterDaemon(Stoppable):
    """`task-ingress serve --cluster`: construct, then `await run()` (or `run_sync`)."""

    def __init__(self, settings: ServeSettings, cluster: ClusterOptions, *,
                 install_signals: bool = False,
                 announce: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(install_signals)
        self.settings = settings
        self.cluster = cluster
        self.announce = announce or (lambda line: None)
        self.clock = clock
        self.metrics = Metrics()
        self.ready = threading.Event()
        self.info: ClusterReadyInfo | None = None
        self.serving: dict[int, ShardServing] = {}
        self.keeper: LeaseKeeper | None = None
        self._locks: dict[int, asyncio.Lock] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._nc: Any = None
        self._key: Ed25519PrivateKey | None = None
        self._me = ""
        self._policy: PolledTrust | None = None
        # The greet marks every held shard's handlers write (opened at the first use).
        self._greet_marks = GreetDatabase(with_timeouts(cluster.database, cluster.lease_ttl))
        self.log = get_logger(component="cluster.serve", node=cluster.node_id)

    # ---- control -------------------------------------------------------------------
    def run_sync(self) -> int:
        """Run on a fresh event loop in this thread; the exit status."""
        return eventloop.run(self.run())

    def held_shards(self) -> list[int]:
        """Shards this daemon serves now."""
        return sorted(self.serving)

    # ---- lifecycle -----------------------------------------------------------------
    async def run(self) -> int:
        """Serve until stopped: 0 after a graceful stop; RuntimeStartError when NATS or the
        database cannot be reached at start (the command line exits 2)."""
        s, c = self.settings, self.cluster
        stop = self._arm_stop()
        try:
            if not s.nats_url:
                raise RuntimeStartError("a cluster daemon needs --nats-url (the cluster's NATS)")
            self._policy = await asyncio.to_thread(
                PolledTrust, with_timeouts(c.database, c.lease_ttl), s.trust_poll_interval)
            key = self._key = load_or_create_key(s.key_path)
            self._me = handle(s.nickname, key)
            self._nc = await self._connect(s.nats_url)
            self.keeper = LeaseKeeper(
                database=c.database, node=c.node_id, shards=c.shards, timing=c.timing,
                on_acquired=self._start_shard, on_lost=self._stop_shard, clock=self.clock,
                audit_key=_audit_key(), healthy=self._shard_healthy)
            try:
                await asyncio.wait_for(self.keeper.start(), max(15.0, c.lease_ttl))
            except Exception as exc:
                if type(exc).__name__ == "ShardCountMismatch":
                    raise RuntimeStartError(str(exc)) from None
                raise RuntimeStartError(
                    f"cannot use the cluster database {mask_url(c.database)}: "
                    f"{type(exc).__name__}: {exc}") from None
            metrics_url = None
            if s.metrics_port:
                port = self.metrics.serve(s.metrics_port)
                metrics_url = f"http://127.0.0.1:{port}/metrics"
            self.info = self._ready_info(metrics_url)
            if s.ready_file:
                write_ready_file(s.ready_file, self.info)
            self.metrics.set_ready(True)
            self.ready.set()
            self.announce(f"node {c.node_id} serving workspaces {list(c.workspaces)} over "
                          f"{c.shards} shards on {mask_url(s.nats_url)}; holds shards "
                          f"{self.held_shards()}; lease TTL {c.lease_ttl:g} s")
            await stop.wait()
            self.announce("draining: answering in-flight requests, releasing leases")
            return 0
        finally:
            self.metrics.set_ready(False)
            await self._shutdown()

    async def _shutdown(self) -> None:
        try:
            if self.keeper is not None:
                await self.keeper.stop()
            if self._closing:
                self.log.info("serve.closing_lost_shards", shards=len(self._closing))
                await asyncio.wait(set(self._closing), timeout=self.settings.drain_timeout)
            if self._nc is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._nc.close(), 5)
            self.metrics.close()
            if self._policy is not None:
                self._policy.stop()
            await asyncio.to_thread(self._greet_marks.close)
        finally:
            if self.settings.ready_file:
                remove_ready_file(self.settings.ready_file, os.getpid())
        self.log.info("serve.stopped")

    async def _connect(self, url: str) -> Any:
        from nats.aio.client import Client

        s = self.settings
        log = self.log

        async def on_error(exc: Exception) -> None:
            log.warning("nats.error", error=repr(exc))

        options: dict[str, Any] = {
            "servers": [u.strip() for u in url.split(",") if u.strip()],
            "name": f"task-ingress-cluster-{self.cluster.node_id}",
            "max_reconnect_attempts": -1, "error_cb": on_error, "allow_reconnect": True}
        if s.nats_token is not None:
            options["token"] = s.nats_token.get_secret_value()
        self.announce(f"connecting to NATS at {mask_url(url)}")
        client = Client()
        failure = await connect_within(client, options, s.nats_connect_timeout)
        if failure is None:
            return client
        why = f"{type(failure).__name__}: {failure}".removesuffix(": ")
        raise RuntimeStartError(
            f"no NATS server reachable at {mask_url(url)} within "
            f"{s.nats_connect_timeout:g} s ({why})") from None

    def _ready_info(self, metrics_url: str | None) -> ClusterReadyInfo:
        s, c = self.settings, self.cluster
        key = self._key
        assert key is not None and s.nats_url
        pub = raw_public_key(key)
        credentials = {"token": s.nats_token.get_secret_value()} if s.nats_token else {}
        return ClusterReadyInfo(
            # The cluster's trust policy is in the database (trust add --database), not a file.
            nats_url=s.nats_url, pid=os.getpid(), trust_file="",
            nats_auth="token" if s.nats_token else "url", credentials=credentials,
            store=mask_url(c.database), workspace=c.workspaces[0], channels=s.channels,
            daemon_peer_id=s.peer_id, daemon_route_token=wire.route_token(s.peer_id),
            daemon_handle=self._me, daemon_fingerprint=fingerprint(pub),
            daemon_public_key=b64url(pub), daemon_nkey=user_nkey(pub),
            greet_interval=s.greet_interval, metrics_url=metrics_url, node_id=c.node_id,
            shards=c.shards, workspaces=list(c.workspaces), database=mask_url(c.database),
            lease_ttl=c.lease_ttl)

    # ---- shards --------------------------------------------------------------------
    def _lock(self, shard: int) -> asyncio.Lock:
        return self._locks.setdefault(shard, asyncio.Lock())

    async def _start_shard(self, lease: Lease) -> None:
        """A lease was granted: a fresh runtime, handlers, subscriptions, greets."""
        async with self._lock(lease.shard):
            workspaces = self.cluster.workspaces_of(lease.shard)
            serving = ShardServing(lease)
            self.serving[lease.shard] = serving
            if not workspaces:
                return
            config = shard_runtime_config(self.settings, self.cluster, lease, self.clock)
            runtime = serving.runtime = IngressRuntime(config)
            await asyncio.to_thread(runtime.start)
            serving.started = True
            if self.serving.get(lease.shard) is not serving:
                return  # lost while starting: _close_shard closes it once we let go
            # What the shard's earlier holders judged stays final (replays), before the
            # first message.
            judged = await asyncio.to_thread(runtime.audit, time.time() - JUDGED_MEMORY)
            greets = await asyncio.to_thread(self._greet_ledgers, lease, workspaces)
            for ws in workspaces:
                serving.handlers[ws] = self._handler(runtime, serving, greets[ws])
                serving.handlers[ws].remember_judged(r for r in judged if r.workspace == ws)
                await self._subscribe(serving, ws, serving.handlers[ws])
            with contextlib.suppress(Exception):
                await self._nc.flush()
            serving.greeter = asyncio.create_task(self._greet_loop(serving))
            self.log.info("shard.serving", shard=lease.shard, epoch=lease.epoch,
                          workspaces=workspaces)

    def _shard_healthy(self, shard: int) -> bool:
        """The keeper's health check: False only while this daemon serves `shard` with a
        runtime that finished starting and stopped on its own since (a shard with no
        workspaces has no runtime; one we stopped serving is no longer ours to judge)."""
        serving = self.serving.get(shard)
        if serving is None or serving.runtime is None or not serving.started:
            return True
        return serving.runtime.alive()

    def _greet_ledgers(self, lease: Lease, workspaces: list[str]) -> dict[str, GreetLedger]:
        """A greet ledger per workspace of the leased shard, holding the marks its earlier
        holders wrote (a captured older greet stays `stale` across a failover) and writing
        its own under the lease (pg_greets.py); on a worker thread, before the shard serves.
        Raises when the database cannot be read: then the shard is not served (keeper:
        start failed)."""
        shard = lease.shard
        capacity = self.settings.handler_limits().greet_capacity
        ledgers: dict[str, GreetLedger] = {}
        for ws in workspaces:
            ledger = GreetLedger(self._greet_marks.store(ws, lease.fence),
                                 greet_interval=self.settings.greet_interval,
                                 capacity=capacity, clock=self.clock)
            marks = ledger.load()
            self.log.info("shard.greet_marks_loaded", shard=shard, workspace=ws, marks=marks)
            ledgers[ws] = ledger
        return ledgers

    def _handler(self, runtime: IngressRuntime, serving: ShardServing,
                 greets: GreetLedger) -> EnvelopeHandler:
        s = self.settings
        assert self._policy is not None and self._key is not None
        limits = s.handler_limits()

        def on_channel(protocol: str, channel: str) -> None:
            if s.channels:
                return
            task = asyncio.create_task(self._greet_all(serving, [(protocol, channel)]))
            serving.tasks.add(task)
            task.add_done_callback(serving.tasks.discard)

        # PolledTrust has TrustPolicy's reader interface (allows, __len__), all the handler uses.
        policy = cast(TrustPolicy, self._policy)
        return EnvelopeHandler(runtime=runtime, policy=policy, key=self._key,
                               peer_id=s.peer_id, handle=self._me, publish=self._nc.publish,
                               metrics=self.metrics, greet_interval=s.greet_interval,
                               on_channel=on_channel, clock=self.clock, limits=limits,
                               greets=greets)

    async def _subscribe(self, serving: ShardServing, ws: str, handler: EnvelopeHandler) -> None:
        s = self.settings
        tasks = serving.tasks

        async def dispatch(msg: Any) -> None:
            task = await handler.dispatch(msg.subject, msg.data, msg.reply)
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        for channel in s.channels or ["*"]:
            for subject in (
                    wire.broadcast_subject(ws, channel, wire.PROTOCOL_V0),
                    wire.peer_subject(ws, channel, s.peer_id, wire.PROTOCOL_V0),
                    wire.broadcast_subject(ws, channel, wire.PROTOCOL_V1),
                    wire.peer_subject(ws, channel, self._me, wire.PROTOCOL_V1)):
                serving.subs.append(await self._nc.subscribe(
                    subject, cb=dispatch, pending_msgs_limit=PENDING_MSGS_LIMIT,
                    pending_bytes_limit=PENDING_BYTES_LIMIT))

    async def _greet_loop(self, serving: ShardServing) -> None:
        """AGH's heartbeat in every served channel of the shard: at once, then every
        greet_interval."""
        while True:
            targets: list[tuple[str, str, str]] = []
            for ws, handler in serving.handlers.items():
                if self.settings.channels:
                    targets += [(ws, p, ch) for ch in self.settings.channels
                                for p in (wire.PROTOCOL_V0, wire.PROTOCOL_V1)]
                else:
                    targets += [(ws, p, ch) for p, ch in sorted(handler.channels_seen)]
            for ws, protocol, channel in targets:
                await self._greet(serving, ws, protocol, channel)
            await asyncio.sleep(self.settings.greet_interval)

    async def _greet_all(self, serving: ShardServing, seen: list[tuple[str, str]]) -> None:
        for ws in serving.handlers:
            for protocol, channel in seen:
                await self._greet(serving, ws, protocol, channel)

    async def _greet(self, serving: ShardServing, ws: str, protocol: str, channel: str) -> None:
        handler = serving.handlers.get(ws)
        if handler is None:
            return
        env = handler.greet_envelope(protocol, ws, channel)
        try:
            await handler.publish_envelope(wire.broadcast_subject(ws, channel, protocol), env)
            self.metrics.own_greets.inc()
        except Exception as exc:  # a lost greet is retried next period
            self.log.warning("greet.publish_failed", channel=channel, error=repr(exc))

    async def _stop_shard(self, shard: int, why: str) -> None:
        """Stop serving `shard`: unsubscribe now; then, gracefully (a rebalance or shutdown)
        answer what is in flight before the runtime closes, or else (the lease is lost, or
        the runtime died) close it in the background at once."""
        serving = self.serving.pop(shard, None)
        if serving is None:
            return
        if why == RUNTIME_DIED:
            self.log.error("shard.runtime_died", shard=shard, epoch=serving.lease.epoch)
        await self._unsubscribe(serving)
        self.log.info("shard.stopped_serving", shard=shard, epoch=serving.lease.epoch,
                      reason=why)
        if why in (GIVEN_BACK, SHUTDOWN):
            await self._close_shard(serving, drain=True)
        else:
            task = asyncio.create_task(self._close_shard(serving, drain=False))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    @staticmethod
    async def _unsubscribe(serving: ShardServing) -> None:
        """End the shard's greets and the subscriptions it has so far (each once)."""
        if serving.greeter is not None:
            serving.greeter.cancel()
        subs, serving.subs = serving.subs, []
        for sub in subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _close_shard(self, serving: ShardServing, *, drain: bool) -> None:
        # As the single daemon does: the handlers close first (their worker threads finish
        # greets and rejections the runtime still answers), then the runtime. Closed the
        # other way round, a greet waiting on a stopped runtime holds handler.close for the
        # runtime's whole request timeout (seen as a daemon that did not stop in 30 s).
        async with self._lock(serving.lease.shard):
            # A start still under way when the shard was lost went on subscribing (and began
            # greeting) after _stop_shard's pass; it has finished now (it held the lock).
            await self._unsubscribe(serving)
            if drain and serving.tasks:
                await asyncio.wait(set(serving.tasks), timeout=self.settings.drain_timeout)
            for handler in serving.handlers.values():
                await asyncio.to_thread(handler.close)
            if serving.runtime is not None:
                await asyncio.to_thread(serving.runtime.close)
            if serving.tasks:  # answered by the closed runtime: task_ingress_unavailable
                await asyncio.wait(set(serving.tasks), timeout=self.settings.drain_timeout)
