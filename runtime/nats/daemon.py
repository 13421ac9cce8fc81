"""The serve loop: one asyncio loop, nats-py, the runtime, graceful shutdown.

Start: the store's lock (one daemon per store: a second one exits 2 at once, touching
nothing), the trust policy, the daemon's Ed25519 key (kept in a file so its handle
survives restarts), local nats-server (unless --nats-url; by default one NATS user per
enrolled peer, authz.py, re-generated and reloaded when the trust file changes), NATS
connection (given up after --nats-connect-timeout: exit 2, before the store is opened),
runtime (actor system + store), subscriptions on both AGH protocol versions
(`agh.network.v0.<ws>.<ch|*>.{broadcast, peer.<route_token(peer id)>}` and
`agh.network.v1.<ws>.<ch|*>.{broadcast, peer.<fingerprint>}`), metrics, ready file; then
the daemon greets (AGH heartbeat) on join and every greet_interval in each channel it
serves: the `--channel`s, or with none every channel where it has seen a peer (greeting at
once on the first sight of one).

A first signal during start-up stops it there: what came up is closed, exit 0. A runtime
that stops on its own while serving (its pipeline process killed, its driver failed)
stops the daemon the same graceful way, exit 1, so that a supervisor restarts it.
Stop (first SIGTERM/SIGINT/SIGHUP, or `request_stop()`): readiness off, unsubscribe (the
server sends no more; messages already received are still judged), answer every in-flight
request, flush NATS, close the runtime (store and audit flushed, checkpoint written), stop
the local server, remove the ready file, exit 0. A second signal exits at once (status
130): SQLite's WAL keeps committed transactions, so the store stays consistent; requests
not yet answered were not acknowledged; the ready file is removed on this path too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from task_ingress.actors.log import get_logger
from task_ingress.runtime import eventloop
from task_ingress.runtime.config import RuntimeConfig
from task_ingress.runtime.errors import RuntimeStartError
from task_ingress.runtime.facade import IngressRuntime
from task_ingress.runtime.nats import envelope as wire
from task_ingress.runtime.nats.authz import Served, nkey_authorization
from task_ingress.runtime.nats.handler import JUDGED_MEMORY, EnvelopeHandler
from task_ingress.runtime.nats.identity import (
    b64url,
    fingerprint,
    generate_key,
    handle,
    load_or_create_key,
    raw_public_key,
)
from task_ingress.runtime.nats.limits import PENDING_BYTES_LIMIT, PENDING_MSGS_LIMIT
from task_ingress.runtime.nats.metrics import Metrics
from task_ingress.runtime.nats.nkey import user_nkey, user_seed
from task_ingress.runtime.nats.policy import (
    TrustPolicy,
    ensure_policy_file,
    file_stamp,
    read_keys,
)
from task_ingress.runtime.nats.ready import ReadyInfo, remove_ready_file, write_ready_file
from task_ingress.runtime.nats.server import NatsServer
from task_ingress.runtime.nats.settings import ServeSettings, mask_url
from task_ingress.runtime.nats.stopping import Stoppable, connect_within
from task_ingress.runtime.store_lock import StoreLock

RUNTIME_POLL = 0.25
"""Seconds between two looks at whether the runtime is still alive."""
RUNTIME_DIED_STATUS = 1
"""`serve`'s exit status after its runtime stopped on its own (systemd's
Restart=on-failure restarts it; 2 stays "could not start")."""


class Daemon(Stoppable):
    """`task-ingress serve`: construct with settings, then `await run()` (or `run_sync`)."""

    def __init__(self, settings: ServeSettings, *, install_signals: bool = False,
                 runtime_config: dict[str, Any] | None = None,
                 announce: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(install_signals)
        self.settings = settings
        # One monotonic clock for every duration the daemon judges (presence expiry, trust
        # file re-reads, the greet replay window); tests inject a fake one.
        self.clock = clock
        self.announce = announce or (lambda line: None)
        self.runtime_config = runtime_config or {}
        self.metrics = Metrics()
        self.ready = threading.Event()
        self.info: ReadyInfo | None = None
        self.runtime: IngressRuntime | None = None
        self.server: NatsServer | None = None
        self._closing = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._handler: EnvelopeHandler | None = None
        self._nc: Any = None
        self._lock: StoreLock | None = None
        self._runtime_start: asyncio.Future[None] | None = None
        self._operator_key: Ed25519PrivateKey | None = None
        self._key: Ed25519PrivateKey | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._runtime_watch: asyncio.Task[None] | None = None
        self.runtime_died = False
        """Set when the runtime stopped on its own while serving: `run` then returns
        RUNTIME_DIED_STATUS instead of 0."""
        self.log = get_logger(component="nats.daemon")

    # ---- control -----------------------------------------------------------------
    def _before_hard_exit(self) -> None:
        if self.server is not None:
            self.server.stop()

    def run_sync(self) -> int:
        """Run the daemon on a fresh event loop in this thread; returns the exit status."""
        return eventloop.run(self.run())

    # ---- lifecycle -----------------------------------------------------------------
    async def run(self) -> int:
        """Serve until stopped; returns 0 after a graceful stop (also one asked for during
        start-up), RUNTIME_DIED_STATUS after a stop because the runtime stopped on its own;
        raises RuntimeStartError when it cannot start (store in use, NATS out of reach)."""
        s = self.settings
        stop = self._arm_stop()
        self.log.info("serve.settings", **s.public())
        try:
            started = await self._unless_stopped(self._start())
            if started is None:
                self.announce("stopped during start-up")
                return 0
            subs, url = started
            handler = self._handler
            assert handler is not None and self.runtime is not None
            greeter = asyncio.create_task(self._greet_loop(handler))
            self._tasks.add(greeter)
            metrics_url = None
            if s.metrics_port:
                port = self.metrics.serve(s.metrics_port)
                metrics_url = f"http://127.0.0.1:{port}/metrics"
            self.info = self._ready_info(url, metrics_url)
            if s.ready_file:
                write_ready_file(s.ready_file, self.info)
            self.metrics.set_ready(True)
            self.ready.set()
            self.announce(f"serving workspace {s.workspace!r} on {mask_url(url)} "
                          f"as peer {s.peer_id!r}; store {self.runtime.store_path}; "
                          f"trust file {s.trust_path}; NATS auth {self.info.nats_auth}"
                          + (f"; ready file {s.ready_file}" if s.ready_file else "")
                          + (f"; metrics {metrics_url}" if metrics_url else ""))
            self.log.info("serve.ready", nats_url=mask_url(url), workspace=s.workspace,
                          subjects=[sub.subject for sub in subs], store=self.runtime.store_path)
            self._runtime_watch = asyncio.create_task(self._watch_runtime(self.runtime))
            await stop.wait()
            self._runtime_watch.cancel()
            greeter.cancel()
            self._tasks.discard(greeter)
            self.announce("draining: answering in-flight requests")
            await self._drain(self._nc, subs)
            self.announce(f"stopped after {self._answered()} answered requests")
            return RUNTIME_DIED_STATUS if self.runtime_died else 0
        finally:
            self.metrics.set_ready(False)
            await self._shutdown(self._nc, self._handler)

    async def _watch_runtime(self, runtime: IngressRuntime) -> None:
        """Stop the daemon, to exit RUNTIME_DIED_STATUS, once its runtime has stopped on its
        own (its pipeline process was killed, its driver failed): every request would be
        answered `task_ingress_failed` from then on while the daemon looked alive to its
        supervisor, which restarts only a daemon that exits."""
        while runtime.alive():
            await asyncio.sleep(RUNTIME_POLL)
        if self._closing:
            return
        self.runtime_died = True
        self.log.error("serve.runtime_died", hint="the log line driver.crashed says why")
        self.announce(f"its runtime stopped on its own (see the log line driver.crashed); "
                      f"stopping, exit {RUNTIME_DIED_STATUS} so that a supervisor restarts it")
        assert self._stop is not None
        self._stop.set()

    async def _unless_stopped(self, coro: Any) -> Any:
        """`coro`'s result, or None when a stop was asked for first (`coro` is cancelled)."""
        assert self._stop is not None
        work = asyncio.ensure_future(coro)
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({work, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if work.done():
            return work.result()
        work.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await work
        return None

    async def _start(self) -> tuple[list[Any], str]:
        """Everything up to serving; what came up is on `self` for `_shutdown`."""
        s = self.settings
        if s.store != ":memory:":
            self._lock = StoreLock(s.store).acquire()
        ensure_policy_file(s.trust_path)
        policy = TrustPolicy(s.trust_path, clock=self.clock)
        key = self._key = load_or_create_key(s.key_path)
        me = handle(s.nickname, key)
        url, token = await self._nats_endpoint(key, me)
        # Before the runtime: a NATS out of reach costs nothing (no store is created).
        self._nc = await self._connect(url, token, key)
        limits: dict[str, Any] = dict(peer_rate=s.peer_rate, peer_burst=s.peer_burst,
                                      max_in_flight_per_peer=s.max_in_flight_per_peer)
        config = RuntimeConfig(store_path=s.store, actor_base=s.actor_base,
                               process_mode=s.process_mode, local_peer_id=s.peer_id,
                               greet_interval=s.greet_interval,
                               clock=self.clock, **{**limits, **self.runtime_config})
        self.runtime = IngressRuntime(config)
        # Shielded: a signal must not leave the start half-done in its thread; shutdown
        # waits for it before it closes the runtime.
        self._runtime_start = asyncio.ensure_future(asyncio.to_thread(self.runtime.start))
        await asyncio.shield(self._runtime_start)
        self.metrics.watch_runtime(self.runtime)
        handler = EnvelopeHandler(runtime=self.runtime, policy=policy, key=key,
                                  peer_id=s.peer_id, handle=me, publish=self._nc.publish,
                                  metrics=self.metrics, greet_interval=s.greet_interval,
                                  on_channel=self._greet_soon, clock=self.clock,
                                  limits=s.handler_limits())
        self._handler = handler
        # Before the first message: what an earlier run judged stays final (replays).
        judged = await asyncio.to_thread(self.runtime.audit, time.time() - JUDGED_MEMORY)
        self.log.info("replay.window_restored", ids=handler.remember_judged(judged))
        subs = await self._subscribe(self._nc, handler, me)
        return subs, url

    def _ready_info(self, url: str, metrics_url: str | None) -> ReadyInfo:
        s = self.settings
        key = self._key
        assert key is not None and self.runtime is not None
        pub = raw_public_key(key)
        credentials: dict[str, str] = {}
        if self.server is not None and self.server.token:
            auth, credentials = "token", {"token": self.server.token}
        elif self.server is not None:
            auth = "nkey"
            if self._operator_key is not None:
                credentials = {"operator_seed": user_seed(self._operator_key),
                               "operator_nkey": user_nkey(raw_public_key(self._operator_key))}
        elif s.nats_token is not None:
            auth, credentials = "token", {"token": s.nats_token.get_secret_value()}
        elif urlsplit(url).username or urlsplit(url).password:
            auth = "url"
        else:
            auth = "nkey"
        return ReadyInfo(
            nats_url=url, pid=os.getpid(), trust_file=s.trust_path, nats_auth=auth,
            credentials=credentials, store=self.runtime.store_path, workspace=s.workspace,
            channels=s.channels, daemon_peer_id=s.peer_id,
            daemon_route_token=wire.route_token(s.peer_id), daemon_handle=handle(s.nickname, key),
            daemon_fingerprint=fingerprint(pub), daemon_public_key=b64url(pub),
            daemon_nkey=user_nkey(pub), greet_interval=s.greet_interval,
            metrics_url=metrics_url,
        )

    async def _nats_endpoint(self, key: Ed25519PrivateKey, me: str) -> tuple[str, str]:
        s = self.settings
        if s.nats_url:
            return s.nats_url, s.nats_token.get_secret_value() if s.nats_token else ""
        if s.nats_auth == "token":
            self.server = NatsServer()
        else:
            served = Served(s.workspace, s.peer_id, me)
            self._operator_key = generate_key()
            stamp = file_stamp(s.trust_path)  # before reading: a change from now on reloads
            self.server = NatsServer(authorization=self._authorization(served, key))
            # Not in _tasks: the drain waits for those (requests in flight) to finish.
            self._watcher = asyncio.create_task(self._watch_trust(served, key, stamp))
        self.announce("starting a local nats-server "
                      f"({'one shared token' if s.nats_auth == 'token' else 'one user per peer'})")
        # Started on this thread, not a worker: PR_SET_PDEATHSIG follows the starting
        # thread, and this one lives as long as the daemon.
        await self.server.astart()
        return self.server.url, self.server.token

    def _authorization(self, served: Served, key: Ed25519PrivateKey) -> dict[str, Any]:
        """The local server's users: the daemon, the operator, every enrolled peer key."""
        operator = self._operator_key
        return nkey_authorization(
            served, daemon_nkey=user_nkey(raw_public_key(key)),
            operator_nkey=user_nkey(raw_public_key(operator)) if operator else None,
            peers={fp: user_nkey(pub) for fp, pub in read_keys(self.settings.trust_path).items()})

    async def _watch_trust(self, served: Served, key: Ed25519PrivateKey,
                           stamp: tuple[int, int, int] | None) -> None:
        """Reload the local server whenever the trust file's enrolled keys change, so a
        `trust add` lets a peer connect and a `trust remove` disconnects it."""
        path = self.settings.trust_path
        while True:
            await asyncio.sleep(self.settings.trust_poll_interval)
            now = file_stamp(path)
            server = self.server
            if now == stamp or server is None or server.process is None:
                continue
            stamp = now
            wanted = self._authorization(served, key)
            if wanted == server.authorization:
                continue
            try:
                await asyncio.to_thread(server.reload, wanted)
            except Exception as exc:  # the server keeps its old users; retried on the next change
                self.log.error("nats_server.reload_failed", error=repr(exc))

    async def _connect(self, url: str, token: str, key: Ed25519PrivateKey) -> Any:
        from nats.aio.client import Client  # heavy import: only when serving

        log = self.log
        timeout = self.settings.nats_connect_timeout
        connected = False
        last_error: list[str] = []
        refused = asyncio.Event()

        async def on_error(exc: Exception) -> None:
            if not connected:
                last_error[:] = [f"{type(exc).__name__}: {exc}"]
                if "authorization violation" in str(exc).lower():
                    refused.set()
            handler = self._handler  # slow-consumer drops: counted, audited in aggregate
            if handler is None or not handler.note_transport_error(exc):
                log.warning("nats.error", error=repr(exc))

        async def on_disconnect() -> None:
            if not self._closing:
                log.warning("nats.disconnected")

        async def on_reconnect() -> None:
            log.info("nats.reconnected")

        options: dict[str, Any] = {"servers": [url], "name": "task-ingress-serve",
                                   "max_reconnect_attempts": -1, "error_cb": on_error,
                                   "disconnected_cb": on_disconnect,
                                   "reconnected_cb": on_reconnect}
        if token:
            options["token"] = token
        elif not (urlsplit(url).username or urlsplit(url).password):
            # The daemon's key is its NATS user (our local server's, or one the operator of
            # --nats-url's server listed: docs/operating.md).
            options["nkeys_seed_str"] = user_seed(key)
        self.announce(f"connecting to NATS at {mask_url(url)}")
        client = Client()
        if await connect_within(client, options, timeout, refused) is None:
            connected = True
            return client
        if refused.is_set():
            raise RuntimeStartError(f"the NATS server at {mask_url(url)} refused the daemon's "
                                    "credentials (--nats-token, or its nkey "
                                    f"{user_nkey(raw_public_key(key))} in the server's users)")
        why = f" (last error: {last_error[0]})" if last_error else ""
        raise RuntimeStartError(f"no NATS server reachable at {mask_url(url)} within "
                                f"{timeout:g} s{why}; start it or fix --nats-url "
                                "(--nats-connect-timeout sets the wait)")

    async def _subscribe(self, nc: Any, handler: EnvelopeHandler, me: str) -> list[Any]:
        s = self.settings
        subs = []
        for channel in s.channels or ["*"]:
            for subject in (
                    wire.broadcast_subject(s.workspace, channel, wire.PROTOCOL_V0),
                    wire.peer_subject(s.workspace, channel, s.peer_id, wire.PROTOCOL_V0),
                    wire.broadcast_subject(s.workspace, channel, wire.PROTOCOL_V1),
                    wire.peer_subject(s.workspace, channel, me, wire.PROTOCOL_V1)):
                subs.append(await nc.subscribe(
                    subject, cb=self._dispatcher(handler), pending_msgs_limit=PENDING_MSGS_LIMIT,
                    pending_bytes_limit=PENDING_BYTES_LIMIT))
        await nc.flush()
        return subs

    def _greet_targets(self, handler: EnvelopeHandler) -> list[tuple[str, str]]:
        if self.settings.channels:
            return [(p, c) for c in self.settings.channels
                    for p in (wire.PROTOCOL_V0, wire.PROTOCOL_V1)]
        return sorted(handler.channels_seen)

    async def _greet_loop(self, handler: EnvelopeHandler) -> None:
        """AGH's heartbeat (router.go:225): greet at once, then every greet_interval."""
        while True:
            for protocol, channel in self._greet_targets(handler):
                await self._greet(handler, protocol, channel)
            await asyncio.sleep(self.settings.greet_interval)

    def _greet_soon(self, protocol: str, channel: str) -> None:
        handler = self._handler
        if handler is not None and not self.settings.channels:
            # A newly seen channel: say hello now, not a greet_interval later.
            task = asyncio.create_task(self._greet(handler, protocol, channel))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _greet(self, handler: EnvelopeHandler, protocol: str, channel: str) -> None:
        env = handler.greet_envelope(protocol, self.settings.workspace, channel)
        try:
            await handler.publish_envelope(
                wire.broadcast_subject(self.settings.workspace, channel, protocol), env)
            self.metrics.own_greets.inc()
        except Exception as exc:  # a lost greet is retried next period
            self.log.warning("greet.publish_failed", channel=channel, error=repr(exc))

    def _dispatcher(self, handler: EnvelopeHandler) -> Any:
        tasks = self._tasks

        async def dispatch(msg: Any) -> None:
            # One task per message in arrival order, at most max_in_flight_messages at once.
            task = await handler.dispatch(msg.subject, msg.data, msg.reply)
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        return dispatch

    async def _drain(self, nc: Any, subs: list[Any]) -> None:
        self.metrics.set_ready(False)
        for sub in subs:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(sub.drain(), self.settings.drain_timeout)
        if self._tasks:
            _done, pending = await asyncio.wait(set(self._tasks),
                                               timeout=self.settings.drain_timeout)
            if pending:
                self.log.error("serve.drain_timeout", unanswered=len(pending))
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.flush(), 5)
        self.log.info("serve.drained", answered=self._answered())

    def _answered(self) -> int:
        total = 0.0
        for metric in self.metrics.requests.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    total += sample.value
        return int(total)

    async def _shutdown(self, nc: Any, handler: EnvelopeHandler | None) -> None:
        self._closing = True
        try:
            for watch in (self._watcher, self._runtime_watch):
                if watch is not None:
                    watch.cancel()
            for task in list(self._tasks):
                task.cancel()
            if nc is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(nc.close(), 5)
            if handler is not None:
                await asyncio.to_thread(handler.close)
            if self._runtime_start is not None and not self._runtime_start.done():
                with contextlib.suppress(BaseException):  # its outcome is close's business
                    await self._runtime_start
            if self.runtime is not None:
                await asyncio.to_thread(self.runtime.close)
            self.metrics.close()
            if self.server is not None:
                await asyncio.to_thread(self.server.stop)
        finally:
            if self.settings.ready_file:  # whatever failed above, do not point at us
                remove_ready_file(self.settings.ready_file, os.getpid())
            if self._lock is not None:  # last: the store is closed, another daemon may come
                self._lock.release()
        self.log.info("serve.stopped")
