"""IngressRuntime: the embedding contract of SPEC §7, safe to call from many threads."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import tempfile
import threading
import weakref
from types import TracebackType
from typing import Any

import msgpack
from task_ingress.actors.log import get_logger
from task_ingress.actors.rules import gate
from task_ingress.actors.storage.auditlog import KEY_ENV, find_key, given_key, key_path
from task_ingress.messages.audit import AuditRecord
from task_ingress.messages.codec import decode_envelope, encode_reply
from task_ingress.messages.outcomes import Outcome, Run, Task
from task_ingress.messages.peers import PeerCard
from task_ingress.messages.protocol import (
    AUDIT_ACTOR,
    PG_AUDIT_ACTOR,
    PG_STORE_ACTOR,
    STORE_ACTOR,
    AuditRead,
    ChannelCount,
    GetRun,
    GetTask,
    LockTask,
    PresenceApplied,
    PresenceChange,
    QueryFailed,
    ReadAudit,
    Replied,
    RunFound,
    Settings,
    Submission,
    Sweep,
    TaskFound,
    TaskLocked,
)
from task_ingress.messages.reasons import Action, Reason
from task_ingress.messages.requests import AnyRequest, IngressContext
from task_ingress.runtime.config import RuntimeConfig
from task_ingress.runtime.driver import Driver, RuntimeStatistics
from task_ingress.runtime.errors import (
    IngressTimeout,
    PresenceRefused,
    RuntimeClosed,
    RuntimeStartError,
)
from task_ingress.runtime.flow import FlowLimits, PeerKey
from task_ingress.runtime.host import ActorHost, InProcessHost
from task_ingress.runtime.pipeline.host import PipelineHost
from task_ingress.runtime.wakeups import LoopWakeups

MULTIPROC_MAX_IN_FLIGHT = 256


def load_or_create_key(store_path: str) -> str:
    """The operator's audit key as `auditlog.find_key` finds it (env
    TASK_INGRESS_AUDIT_KEY, else the key file beside the store), else a new key file
    (created with mode 0600 and a warning)."""
    found = find_key(store_path)
    if found is not None:
        return found[0]
    path = key_path(store_path)
    key = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(key + "\n")
    get_logger(component="runtime").warning(
        "audit.key_generated", path=path,
        hint="set TASK_INGRESS_AUDIT_KEY or keep this file away from the store's editors",
    )
    return key


class IngressRuntime:
    """The gated write path: greet/leave peers, submit or deliver requests, read results.

    Use as a context manager; leaving it shuts the actor system down and leaves no
    process behind. Every method may be called from many threads at once.
    """

    def __init__(self, config: RuntimeConfig | None = None) -> None:
        self.config = config or RuntimeConfig()
        self._tempdir: str | None = None
        self._driver: Driver | None = None
        self.store_path = ""
        self._wakeups: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopWakeups] = (
            weakref.WeakKeyDictionary())
        self._wakeups_lock = threading.Lock()

    # ---- lifecycle ---------------------------------------------------------------
    def __enter__(self) -> IngressRuntime:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> None:
        """Start the actor system and open the store; raises RuntimeStartError on failure."""
        if self._driver is not None:
            raise RuntimeError("runtime already started")
        cfg = self.config
        durable = cfg.durable
        audit_key = ""
        store_class, audit_class = cfg.store_actor_class, AUDIT_ACTOR
        if cfg.database_url:
            # PostgreSQL: no file at all. The key cannot live "beside the store", so it must
            # be given; the chain's records are HMACed with it as the file store's are.
            self.store_path = ""
            given = given_key(cfg.audit_key)
            if given is None:
                raise RuntimeStartError(
                    f"a runtime on PostgreSQL needs its audit key: audit_key or ${KEY_ENV}")
            audit_key = given[0]
            if store_class == STORE_ACTOR:
                store_class = PG_STORE_ACTOR
            audit_class = PG_AUDIT_ACTOR
        elif cfg.store_path == ":memory:":
            # Two actors (maybe two processes) share the store, so ":memory:" becomes a
            # throwaway file that is removed at close.
            self._tempdir = tempfile.mkdtemp(prefix="task-ingress-")
            self.store_path = os.path.join(self._tempdir, "store.db")
            durable = False
            audit_key = cfg.audit_key or secrets.token_hex(32)  # the chain is always keyed
        else:
            self.store_path = os.path.abspath(cfg.store_path)
            audit_key = cfg.audit_key or load_or_create_key(self.store_path)
        settings = Settings(
            store_path=self.store_path, durable=durable, local_peer_id=cfg.local_peer_id,
            greet_interval=cfg.greet_interval, tasks_enabled=cfg.tasks_enabled,
            limits=cfg.limits, max_batch=cfg.max_batch,
            channel_pipeline=cfg.channel_pipeline, max_channels=cfg.max_channels,
            max_channels_per_peer=cfg.max_channels_per_peer, audit_key=audit_key,
            channel_actor_class=cfg.channel_actor_class,
            store_actor_class=store_class, store_proxy_class=cfg.store_proxy_class,
            audit_actor_class=audit_class, database_url=cfg.database_url,
            fence=None if cfg.fence is None else (cfg.fence.shard, cfg.fence.owner,
                                                  cfg.fence.epoch),
            database_idle_timeout=float(cfg.database_idle_timeout),
        )
        max_total = cfg.max_in_flight_total
        if cfg.actor_base != "simpleSystemBase":
            # Every admitted request is at most a few queued messages. multiprocQueueBase runs
            # with unbounded mailboxes (driver.unbounded_queue_mailboxes), so this cap is what
            # bounds them; the TCP/UDP bases drop sends past ~1,000 queued per sender.
            max_total = min(max_total, MULTIPROC_MAX_IN_FLIGHT)
        limits = FlowLimits(
            max_total=max_total, max_per_channel=cfg.max_in_flight_per_channel,
            max_per_peer=cfg.max_in_flight_per_peer, peer_rate=cfg.peer_rate,
            peer_burst=cfg.peer_burst, greet_rate=cfg.greet_rate, greet_burst=cfg.greet_burst,
        )
        host: ActorHost
        if cfg.process_mode == "pipeline":
            host = PipelineHost(cfg.actor_base, settings)
        else:
            host = InProcessHost(cfg.actor_base, settings)
        driver = Driver(host, settings, cfg.clock, cfg.request_timeout, limits, cfg.linger)
        try:
            driver.start()
        except BaseException:
            self._cleanup_tempdir()
            raise
        self._driver = driver

    def close(self) -> None:
        """Answer what is in flight, flush store and audit, stop every actor."""
        driver, self._driver = self._driver, None
        if driver is not None:
            driver.stop()
        self._cleanup_tempdir()

    def _cleanup_tempdir(self) -> None:
        if self._tempdir is not None:
            shutil.rmtree(self._tempdir, ignore_errors=True)
            self._tempdir = None

    def _running(self) -> Driver:
        if self._driver is None:
            raise RuntimeClosed("the runtime is not running")
        return self._driver

    # ---- presence ----------------------------------------------------------------
    def greet(self, workspace: str, channel: str, card: PeerCard) -> None:
        """Make `card.peer_id` visible in (workspace, channel) with this card.

        Returns once the change holds for every later `submit`. A refused greet changes
        nothing, is audited (one record, action `greet`) and raises `PresenceRefused`:
        `invalid_request` for malformed identifiers or a card over a card limit,
        `overloaded` for a spent greet budget or a full channel cap.
        """
        self._presence(workspace, channel, card.peer_id, card)

    def leave(self, workspace: str, channel: str, peer_id: str) -> None:
        """Make the peer invisible in (workspace, channel); no later write of it is accepted.

        Never refused for load; malformed identifiers raise `PresenceRefused`
        (`invalid_request`, audited with action `leave`)."""
        self._presence(workspace, channel, peer_id, None)

    def _presence(self, workspace: str, channel: str, peer_id: str, card: PeerCard | None) -> None:
        # ASCII-only trim, as on the wire and in the gate: a peer ID ending in U+00A0 is
        # not the peer without it.
        ws, ch, peer = (gate.trim(_text(workspace)), gate.trim(_text(channel)),
                        gate.trim(_text(peer_id)))
        driver = self._running()
        change = PresenceChange(
            ticket=driver.next_ticket(), workspace=ws, channel=ch, peer_id=peer, card=card,
            now=0.0, payload_size=_payload_size(card) if card is not None else 0,
        )
        reason = gate.check_presence(ws, ch, peer)
        if reason is None and card is not None:
            reason = gate.check_card(card, self.config.card_limits)
        # A refusal decided here travels as a rejected submission: audited, then answered.
        reply = driver.wait(driver.submit(change if reason is None else change.refused(reason)))
        if isinstance(reply, PresenceApplied):
            return
        if isinstance(reply, Replied) and not reply.outcome.accepted:
            raise PresenceRefused(reply.outcome)
        raise RuntimeError(f"presence change failed: {reply!r}")

    # ---- housekeeping ------------------------------------------------------------
    def sweep(self) -> RuntimeStatistics:
        """Run the housekeeping sweep now and return the statistics it counted.

        The runtime sweeps every second by itself: it forgets expired peers and their
        cards and stops idle channel actors (no visible peer, nothing queued or in
        flight). This call returns once that is done, so that monitoring (and tests on a
        fake clock) can see the effect at once."""
        driver = self._running()
        reply = self._ask(driver, driver.addresses.router,
                          Sweep(now=0.0, ticket=driver.next_ticket()))
        assert isinstance(reply, ChannelCount)
        return driver.statistics()

    # ---- requests ----------------------------------------------------------------
    def submit(self, context: IngressContext, request: Any) -> Outcome:
        """Judge one request; never raises for a bad request (it gets a rejected Outcome)."""
        driver = self._running()
        return self._outcome(driver, driver.submit(*self._submission(driver, context, request)))

    async def asubmit(self, context: IngressContext, request: Any) -> Outcome:
        """`submit` for event loops: awaits the answer without blocking the loop."""
        driver = self._running()
        future = driver.submit(*self._submission(driver, context, request))
        loop = asyncio.get_running_loop()
        # One wake-up of this loop per reply batch, not per request (wakeups.py).
        answer = self._loop_wakeups(loop).watch(future)
        timer = loop.call_later(driver.request_timeout, _time_out, answer)
        try:
            reply = await answer
        finally:
            timer.cancel()
        return self._unwrap_outcome(reply)

    def _loop_wakeups(self, loop: asyncio.AbstractEventLoop) -> LoopWakeups:
        wakeups = self._wakeups.get(loop)
        if wakeups is None:
            with self._wakeups_lock:
                wakeups = self._wakeups.setdefault(loop, LoopWakeups(loop))
        return wakeups

    def _submission(
        self, driver: Driver, context: Any, request: Any,
        preset: Reason | None = None, payload_size: int | None = None,
    ) -> tuple[Submission, PeerKey | None]:
        if not isinstance(context, IngressContext):
            context = IngressContext(workspace="", peer_id="", channel="", request_id="")
        is_request = isinstance(request, AnyRequest)
        action = request.action if is_request else Action.UNKNOWN
        if payload_size is None:
            payload_size = _payload_size(request) if is_request else 0
        # Rule 1 is worked out here, once: the router takes the trimmed context and this
        # verdict as they are (`Submission.checked`), and a malformed context holds no
        # admission slot (the router rejects it before any channel).
        context, grammatical = gate.checked_context(context)
        sub = Submission(
            ticket=driver.next_ticket(), context=context,
            request=request if is_request else None, action=action,
            payload_size=payload_size, now=0.0, preset=preset, checked=grammatical,
        )
        return sub, (context.workspace, context.channel, context.peer_id) if grammatical else None

    def _outcome(self, driver: Driver, future: Any) -> Outcome:
        return self._unwrap_outcome(driver.wait(future))

    @staticmethod
    def _unwrap_outcome(reply: Any) -> Outcome:
        if not isinstance(reply, Replied):
            raise RuntimeError(f"unexpected reply {reply!r}")
        return reply.outcome

    def reject(
        self, context: IngressContext, action: Action, reason: Reason, payload_size: int = 0
    ) -> Outcome:
        """Audit and return a rejection decided by a transport (bad signature, bad bytes).

        For transports that judge something the gate cannot see, such as an envelope whose
        signature fails: the rejection is audited exactly like the gate's own.
        """
        # The edge's type check: `Submission` is a plain class that trusts its builder.
        if not (isinstance(action, Action) and isinstance(reason, Reason)
                and type(payload_size) is int):
            raise TypeError("reject takes an Action, a Reason and an int payload_size")
        driver = self._running()
        sub, key = self._submission(driver, context, None, reason, payload_size)
        sub = sub.replace(action=action)
        return self._outcome(driver, driver.submit(sub, key))

    def deliver(self, envelope: bytes, *, workspace: str, channel: str, peer_id: str) -> bytes:
        """The wire path: any bytes in, a msgpack reply out; identity from the arguments."""
        decoded = decode_envelope(envelope, self.config.max_envelope_bytes)
        try:
            context = IngressContext(
                workspace=_text(workspace), peer_id=_text(peer_id), channel=_text(channel),
                request_id=decoded.request_id,
            )
            driver = self._running()
            sub, key = self._submission(
                driver, context, decoded.request, decoded.rejection, decoded.size
            )
            if decoded.request is None:
                sub = sub.replace(action=decoded.action)
            outcome = self._outcome(driver, driver.submit(sub, key))
        except RuntimeClosed:
            outcome = Outcome.rejected(gate.safe_field(decoded.request_id), decoded.action,
                                       Reason.TASK_INGRESS_UNAVAILABLE)
        except Exception as exc:
            get_logger(component="runtime").error("deliver.failed", error=repr(exc))
            outcome = Outcome.failed(gate.safe_field(decoded.request_id), decoded.action)
        return encode_reply(outcome)

    # ---- reads -------------------------------------------------------------------
    def get_task(self, workspace: str, task_id: str) -> Task | None:
        """The stored task, or None (also for a task of another workspace)."""
        if not self.config.tasks_enabled:
            return None
        driver = self._running()
        reply = self._ask(driver, driver.addresses.router, GetTask(
            ticket=driver.next_ticket(), workspace=workspace, task_id=task_id))
        assert isinstance(reply, TaskFound)
        return reply.task

    def get_run(self, workspace: str, run_id: str) -> Run | None:
        """The stored run, or None."""
        if not self.config.tasks_enabled:
            return None
        driver = self._running()
        reply = self._ask(driver, driver.addresses.router, GetRun(
            ticket=driver.next_ticket(), workspace=workspace, run_id=run_id))
        assert isinstance(reply, RunFound)
        return reply.run

    def lock_task(self, workspace: str, task_id: str, locked: bool = True) -> bool:
        """Operator rule: a locked task refuses every network write (`permission_denied`).

        Returns False when no such task exists in the workspace.
        """
        driver = self._running()
        reply = self._ask(driver, driver.addresses.router, LockTask(
            ticket=driver.next_ticket(), workspace=workspace, task_id=task_id, locked=locked))
        assert isinstance(reply, TaskLocked)
        return reply.found

    def audit(self, since: float = 0.0) -> list[AuditRecord]:
        """Every audit record committed before the call (written at or after `since`, unix
        seconds), in commit order."""
        driver = self._running()
        reply = self._ask(driver, driver.addresses.audit,
                          ReadAudit(ticket=driver.next_ticket(), since=since))
        assert isinstance(reply, AuditRead)
        return list(reply.records)

    def actor_pids(self) -> list[int]:
        """PIDs of the OS processes running the actors (empty on simpleSystemBase in this
        process; the pipeline process in pipeline mode): for monitoring and for benchmarks
        that count every process's CPU. Empty once closed."""
        return self._driver.actor_pids() if self._driver is not None else []

    def alive(self) -> bool:
        """True while the runtime answers calls: started and not closed, and not stopped on
        its own either (its pipeline process died, its driver thread failed: every call then
        raises RuntimeClosed, and only a new runtime serves again). For supervisors: a
        daemon exits when its runtime is no longer alive, so that it gets restarted."""
        driver = self._driver
        return driver is not None and driver.running()

    def statistics(self) -> RuntimeStatistics:
        """Calls queued for the driver and requests admitted but unanswered, right now, and
        the channel actors, presence entries and cards held at the last sweep (all 0
        before start and after close): for monitoring, safe from any thread."""
        driver = self._driver
        if driver is None:
            return RuntimeStatistics(calls_waiting=0, requests_in_flight=0)
        return driver.statistics()

    @staticmethod
    def _ask(driver: Driver, to: Any, query: Any) -> Any:
        reply = driver.wait(driver.ask(to, query))
        if isinstance(reply, QueryFailed):
            raise RuntimeError(f"{type(query).__name__} failed: {reply.error}")
        return reply


def _time_out(answer: asyncio.Future[Any]) -> None:
    if not answer.done():
        answer.set_exception(IngressTimeout("no answer in time; outcome unknown"))


def _payload_size(request: Any) -> int:
    return len(msgpack.packb(request.model_dump(exclude_none=True), use_bin_type=True))


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""

