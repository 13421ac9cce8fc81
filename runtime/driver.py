"""The driver thread: the only thread that touches the Thespian ActorSystem.

Thespian's ActorSystem is not thread-safe (replies go to the wrong thread), so callers
hand `(message, future)` pairs to a queue; the driver stamps each with the clock, applies
the in-flight caps, sends everything waiting as ONE `SubmitBatch` (which is what lets the
store and audit group-commit), then collects replies by ticket and resolves futures.
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import psutil
from task_ingress.actors import gate
from task_ingress.actors.audit import Audit
from task_ingress.actors.capability import Capability
from task_ingress.actors.ingress import ChannelIngress
from task_ingress.actors.log import get_logger
from task_ingress.actors.presence import Presence
from task_ingress.actors.router import IngressRouter
from task_ingress.actors.task_store import TaskStore
from task_ingress.messages.protocol import (
    PresenceChange,
    Replies,
    Settings,
    Started,
    Submission,
    SubmitBatch,
    Sweep,
    Wiring,
)
from task_ingress.messages.requests import IngressContext
from task_ingress.runtime.errors import IngressTimeout, RuntimeClosed, RuntimeStartError
from task_ingress.runtime.flow import FlowControl, FlowLimits, PeerKey
from thespian.actors import Actor, ActorExitRequest, ActorSystem, PoisonMessage
from thespian.system.transport import MultiprocessQueueTransport

MULTIPROC_POLL = 0.001
IDLE_WAIT = 0.05
SWEEP_EVERY = 1.0
SHUTDOWN_GRACE = 10.0
# While lingering (RuntimeConfig.batch_linger), the driver waits at most this long for
# each next call: callers that are not about to send cost one gap, not the whole linger.
LINGER_GAP = 0.0002


@dataclass
class Call:
    """One caller's request to the driver."""

    target: str
    message: Any
    future: Future[Any] = field(default_factory=Future)
    peer: PeerKey | None = None
    deadline: float = 0.0


_STOP = object()


def _calls_in(item: Any) -> list[Call]:
    """The calls one inbox item carries: a single call, or several queued together."""
    return item if isinstance(item, list) else [item]


def unbounded_queue_mailboxes() -> None:
    """Give every multiprocQueueBase mailbox an unbounded queue (Thespian 4.0.1: 10 per actor,
    40 for the admin), before the system forks its admin (children inherit the setting).

    With bounded mailboxes, a full queue blocks the sender inside `send()`, and a blocked actor
    stops reading its own mailbox. Every message between actors is relayed through their
    common parent (the admin for top-level actors), so full queues form cycles: an actor
    sending to itself (TaskStore's and Audit's group-commit `Flush`) blocks on its own full
    mailbox for good; a parent relaying to a full child while that child sends up to the
    parent blocks both. Thespian gives up on a relay after 20 s and drops the message (a
    lost reply); an actor's own send waits up to 5 minutes (shutdown hangs). Unbounded, a
    put never blocks; queue depth is bounded by the driver's in-flight caps instead.
    """
    # the module (not its class of the same name); read each time a queue is made; 0 = no bound
    MultiprocessQueueTransport.MAX_ACTOR_QUEUESIZE = 0
    MultiprocessQueueTransport.MAX_ADMIN_QUEUESIZE = 0


def open_actor_system(base: str) -> Any:
    """Start a fresh ActorSystem of `base` (admin port, mailbox sizes as this runtime needs)."""
    capabilities: dict[str, Any] = {}
    if base in ("multiprocTCPBase", "multiprocUDPBase"):
        capabilities["Admin Port"] = free_port()
    if base == "multiprocQueueBase":
        unbounded_queue_mailboxes()
    return ActorSystem(base, capabilities, transientUnique=True)


def check_actor_classes(settings: Settings) -> None:
    """Raise RuntimeStartError unless the actor classes the settings name load and are of the
    kind their place needs (a typo would otherwise fail every request, not the start)."""
    places = [(settings.channel_actor_class, ChannelIngress),
              (settings.store_actor_class, TaskStore)]
    if settings.store_proxy_class:
        places.append((settings.store_proxy_class, Actor))
    for name, kind in places:
        module, _, attr = name.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError, ValueError) as exc:
            raise RuntimeStartError(f"cannot load actor class {name!r}: {exc!r}") from exc
        if not (isinstance(cls, type) and issubclass(cls, kind)):
            raise RuntimeStartError(f"{name!r} names no {kind.__name__} subclass")


def free_port() -> int:
    """A free loopback TCP port (for Thespian bases that need an admin port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Driver:
    """Owns the ActorSystem on its own thread; thread-safe `call` for everyone else."""

    def __init__(
        self,
        base: str,
        settings: Settings,
        clock: Callable[[], float],
        request_timeout: float,
        limits: FlowLimits,
        batch_linger: float = 0.0,
    ) -> None:
        self.base = base
        self.settings = settings
        self.clock = clock
        self.request_timeout = request_timeout
        self.batch_linger = batch_linger
        self.flow = FlowControl(limits)
        # SimpleQueue (C) rather than Queue (Python locks and conditions): every call passes
        # through it, and it measured ~6 % more throughput side by side.
        self.inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.tickets = itertools.count(1)
        self.ready = threading.Event()
        self.start_error: BaseException | None = None
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._run, name="task-ingress-driver", daemon=True)
        self.addresses: dict[str, Any] = {}
        self.log = get_logger(component="driver")
        self.children_before: set[int] = set()
        self.actor_sessions: set[int] = set()

    # ---- caller side -------------------------------------------------------------
    def start(self) -> None:
        """Start the actor system and wait until every actor is wired (or raise)."""
        self.thread.start()
        self.ready.wait()
        if self.start_error is not None:
            self.thread.join(timeout=SHUTDOWN_GRACE)
            raise RuntimeStartError(str(self.start_error)) from self.start_error

    def next_ticket(self) -> int:
        """A fresh ticket (itertools.count is atomic under the GIL)."""
        return next(self.tickets)

    def submit_call(self, target: str, message: Any, peer: PeerKey | None = None
                    ) -> Future[Any]:
        """Queue a message for the driver; the future resolves with the actor's reply."""
        if self.closed.is_set():
            raise RuntimeClosed("the runtime is closed")
        call = Call(target=target, message=message, peer=peer)
        self.inbox.put(call)
        return call.future

    def submit_calls(self, calls: list[Call]) -> None:
        """Queue several calls as ONE inbox item, so the driver takes them into one batch
        (tests use it to build a batch deterministically)."""
        if self.closed.is_set():
            raise RuntimeClosed("the runtime is closed")
        self.inbox.put(list(calls))

    def wait(self, future: Future[Any]) -> Any:
        """Block for a reply, converting a timeout into IngressTimeout."""
        try:
            return future.result(timeout=self.request_timeout)
        except TimeoutError as exc:
            raise IngressTimeout(
                f"no answer within {self.request_timeout}s; outcome unknown"
            ) from exc

    def stop(self) -> None:
        """Refuse new calls, answer those in flight, shut the actor system down."""
        if self.closed.is_set():
            return
        self.closed.set()
        self.inbox.put(_STOP)
        self.thread.join(timeout=SHUTDOWN_GRACE * 3)

    # ---- driver thread -----------------------------------------------------------
    def _run(self) -> None:
        try:
            self.children_before = {p.pid for p in psutil.Process().children(recursive=True)}
            asys = self._start_system()
        except BaseException as exc:
            self.start_error = exc
            self.ready.set()
            return
        self.ready.set()
        try:
            self._loop(asys)
        except BaseException as exc:
            self.log.error("driver.crashed", error=repr(exc))
        finally:
            self.closed.set()
            self._fail_waiting(RuntimeClosed("the runtime shut down"))
            self._shutdown(asys)

    def _start_system(self) -> Any:
        asys = open_actor_system(self.base)
        # Thespian's admin daemonizes (setsid, then forks again): it and the actors are no
        # children of ours, but their session ID is the PID of our child that called setsid.
        self.actor_sessions = {p.pid for p in psutil.Process().children()
                               if p.pid not in self.children_before}
        try:
            check_actor_classes(self.settings)
            names = {"audit": Audit, "capability": Capability, "presence": Presence,
                     "router": IngressRouter}
            self.addresses = {name: asys.createActor(cls) for name, cls in names.items()}
            wiring: dict[str, Any] = dict(
                settings=self.settings, presence=self.addresses["presence"],
                capability=self.addresses["capability"], store=None,
                audit=self.addresses["audit"],
            )
            # The router starts and supervises the TaskStore; it answers once the store has
            # migrated the schema, which must happen before Audit drains the outbox.
            self.addresses["store"] = wiring["store"] = self._wire(asys, "router", wiring).address
            if self.settings.store_proxy_class:  # test seam: an actor before the TaskStore
                proxy = asys.createActor(self.settings.store_proxy_class)
                self.addresses["store_proxy"] = proxy
                self._wire(asys, "store_proxy", wiring)
                wiring["store"] = proxy
            for name in ("audit", "capability", "presence"):
                self._wire(asys, name, wiring)
        except BaseException:
            self._shutdown(asys)
            raise
        return asys

    def _wire(self, asys: Any, name: str, wiring: dict[str, Any]) -> Started:
        reply = asys.ask(self.addresses[name], Wiring(ticket=0, **wiring), 60)
        if not isinstance(reply, Started):
            raise RuntimeStartError(f"{name} actor did not start (reply {reply!r})")
        if reply.error:
            raise RuntimeStartError(reply.error)
        return reply

    def _loop(self, asys: Any) -> None:
        pending: dict[int, Call] = {}
        stopping_since: float | None = None
        last_sweep = time.monotonic()
        simple = self.base == "simpleSystemBase"
        # Callers answered since the last dispatch (likely to send again at once) plus those
        # already waiting when they were answered: the batch the driver is worth waiting for.
        expected = 0
        while True:
            calls, stop = self._collect(block=not pending and stopping_since is None)
            if calls and not stop and self.batch_linger > 0 and len(calls) < expected:
                more, stop = self._linger(min(expected, self.settings.max_batch) - len(calls))
                calls += more
            if calls:
                expected = 0
            if stop and stopping_since is None:
                stopping_since = time.monotonic()
            self._dispatch(asys, calls, pending)
            while pending:
                reply = asys.listen(0.0005 if simple else MULTIPROC_POLL)
                if reply is None:
                    break
                answered = self._resolve(reply, pending)
                if answered:
                    expected = max(expected, self.inbox.qsize()) + answered
            now = time.monotonic()
            self._expire(pending, now)
            if now - last_sweep >= SWEEP_EVERY:
                last_sweep = now
                stamp = self.clock()
                self.flow.sweep(stamp)
                asys.tell(self.addresses["router"], Sweep(now=stamp))
            if stopping_since is not None and (
                not pending or now - stopping_since > SHUTDOWN_GRACE
            ):
                for call in pending.values():
                    call.future.set_exception(RuntimeClosed("shut down before an answer"))
                return

    def _collect(self, block: bool) -> tuple[list[Call], bool]:
        calls: list[Call] = []
        stop = False
        try:
            item = self.inbox.get(timeout=IDLE_WAIT) if block else self.inbox.get_nowait()
            while True:
                if item is _STOP:
                    stop = True
                else:
                    calls.extend(_calls_in(item))
                if len(calls) >= self.settings.max_batch:
                    break
                item = self.inbox.get_nowait()
        except queue.Empty:
            pass
        return calls, stop

    def _linger(self, expected: int) -> tuple[list[Call], bool]:
        """Wait up to `batch_linger` for `expected` more calls, at most LINGER_GAP for each;
        returns them and whether the stop sentinel came.

        Group commit: callers just answered send their next request within a fraction of a
        millisecond. Without waiting for them, 4 closed-loop callers settle into alternating
        batches of 1 and 3 (16 callers: 8 and 8), each batch paying two durable commits."""
        more: list[Call] = []
        deadline = time.monotonic() + self.batch_linger
        while len(more) < expected:
            remaining = min(deadline - time.monotonic(), LINGER_GAP)
            if remaining <= 0:
                break
            try:
                item = self.inbox.get(timeout=remaining)
            except queue.Empty:
                break
            if item is _STOP:
                return more, True
            more.extend(_calls_in(item))
        return more, False

    def _dispatch(self, asys: Any, calls: list[Call], pending: dict[int, Call]) -> None:
        batch: list[Submission | PresenceChange] = []
        deadline = time.monotonic() + self.request_timeout * 2
        for call in calls:
            ticket = call.message.ticket
            call.deadline = deadline
            pending[ticket] = call
            msg = call.message
            if isinstance(msg, Submission):
                now = self.clock()
                preset = msg.preset
                if preset is None and call.peer is not None:
                    preset = self.flow.admit(call.peer, now)
                if preset is not None:
                    call.peer = None  # not admitted: holds no slot
                batch.append(msg.model_copy(update={"now": now, "preset": preset}))
            elif isinstance(msg, PresenceChange):
                batch.append(msg.model_copy(update={"now": self.clock()}))
            else:
                asys.tell(self.addresses[call.target], msg)
        if batch:
            asys.tell(self.addresses["router"], SubmitBatch(items=tuple(batch)))

    def _resolve(self, reply: Any, pending: dict[int, Call]) -> int:
        """Resolve the calls a reply answers; returns how many."""
        if isinstance(reply, Replies):  # one group commit's answers
            return sum(self._resolve(item, pending) for item in reply.items)
        if isinstance(reply, PoisonMessage):
            ticket = getattr(reply.poisonMessage, "ticket", None)
            call = pending.pop(ticket, None) if isinstance(ticket, int) else None
            self.log.error("driver.poison_message", ticket=ticket)
            if call is None:
                return 0
            self._release(call)
            call.future.set_exception(RuntimeError("actor failed on the request"))
            return 1
        ticket = getattr(reply, "ticket", None)
        call = pending.pop(ticket, None) if isinstance(ticket, int) else None
        if call is None:
            self.log.warning("driver.unmatched_reply", reply_type=type(reply).__name__)
            return 0
        self._release(call)
        call.future.set_result(reply)
        return 1

    def _release(self, call: Call) -> None:
        if call.peer is not None:
            self.flow.release(call.peer)
            call.peer = None

    def _expire(self, pending: dict[int, Call], now: float) -> None:
        """Free the slot of a request whose answer never came (a lost message)."""
        late = [t for t, c in pending.items() if c.deadline and now > c.deadline]
        for ticket in late:
            call = pending.pop(ticket)
            self._release(call)
            self.log.error("driver.reply_lost", ticket=ticket)
            if not call.future.done():
                call.future.set_exception(IngressTimeout("no reply from the actors"))

    def _fail_waiting(self, exc: BaseException) -> None:
        while True:
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                return
            for call in [] if item is _STOP else _calls_in(item):
                if not call.future.done():
                    call.future.set_exception(exc)

    def _shutdown(self, asys: Any) -> None:
        """Shut the system down; a watchdog kills actor processes left behind by a hang."""
        done = threading.Event()

        def _do() -> None:
            try:
                asys.shutdown()
            except Exception as exc:
                self.log.error("driver.shutdown_failed", error=repr(exc))
            done.set()

        # simpleSystemBase's shutdown() does not send ActorExitRequest: send it ourselves so
        # the store and audit flush and the final checkpoint is written. Router first (its
        # channel actors go with it), Audit last (it answers what the others hand it).
        for name in ("router", "presence", "capability", "store", "audit"):
            address = self.addresses.get(name)
            if address is not None:
                try:
                    asys.tell(address, ActorExitRequest())
                except Exception as exc:
                    self.log.error("driver.exit_request_failed", actor=name, error=repr(exc))
        threading.Thread(target=_do, name="task-ingress-shutdown", daemon=True).start()
        if not done.wait(SHUTDOWN_GRACE):
            self.log.error("driver.shutdown_hung")
        self._reap_children()

    def actor_pids(self) -> list[int]:
        """PIDs of the live processes running this runtime's actors (none on
        simpleSystemBase). Thespian's admin daemonizes, so they are not our children."""
        exe = psutil.Process().exe()
        return [p.pid for p in _session_members(self.actor_sessions, exe, {os.getpid()})]

    def _reap_children(self) -> None:
        """Actor processes (forks of this Python) born after start must not outlive us.

        Other children (a nats-server the daemon started, say) are not ours to touch.
        """
        me = psutil.Process(os.getpid())
        exe = me.exe()
        ours = []
        for proc in me.children(recursive=True):
            if proc.pid in self.children_before:
                continue
            try:
                # Exited actor processes linger as zombies until waited for: reap them too.
                if proc.status() == psutil.STATUS_ZOMBIE or proc.exe() == exe:
                    ours.append(proc)
            except psutil.ZombieProcess:
                ours.append(proc)
            except psutil.Error:
                continue
        ours += _session_members(self.actor_sessions, exe, {p.pid for p in ours} | {me.pid})
        _, alive = psutil.wait_procs(ours, timeout=3)
        for proc in alive:
            self.log.warning("driver.killing_leftover_actor", pid=proc.pid)
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(alive, timeout=5)


def _session_members(sessions: set[int], exe: str, skip: set[int]) -> list[psutil.Process]:
    """Live processes running `exe` in these sessions (the daemonized actor system's tree;
    not our children, so a zombie among them is its parent's to reap, not ours)."""
    members = []
    for proc in psutil.process_iter() if sessions else ():
        try:
            if (proc.pid not in skip and os.getsid(proc.pid) in sessions
                    and proc.status() != psutil.STATUS_ZOMBIE and proc.exe() == exe):
                members.append(proc)
        except (OSError, psutil.Error):
            continue
    return members


def peer_key(ctx: IngressContext) -> PeerKey | None:
    """The admission key of a (normalized) well-formed context; None for one the router
    rejects anyway (it never reaches a channel, so it holds no slot)."""
    if gate.check_context(ctx) is None:
        return (ctx.workspace, ctx.channel, ctx.peer_id)
    return None
