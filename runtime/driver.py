"""The driver thread: the only thread that talks to the actors (through its `ActorHost`).

Thespian's ActorSystem is not thread-safe (replies go to the wrong thread), so callers
hand `(message, future)` pairs to a queue; the driver stamps each with the clock, applies
the in-flight caps, sends everything waiting as ONE `SubmitBatch` (which is what lets the
store and audit group-commit), then collects replies by ticket and resolves futures.
The actors run in this process (`host.InProcessHost`) or in a pipeline process of their
own (`pipeline.PipelineHost`); the driver is the same for both.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from task_ingress.actors.log import get_logger
from task_ingress.messages.protocol import (
    ChannelCount,
    PresenceChange,
    Replies,
    Settings,
    Submission,
    Sweep,
)
from task_ingress.runtime.answer import Answer
from task_ingress.runtime.errors import IngressTimeout, RuntimeClosed, RuntimeStartError
from task_ingress.runtime.flow import FlowControl, FlowLimits, PeerKey
from task_ingress.runtime.host import ActorHost, Stamped
from task_ingress.runtime.inbox import Call, Inbox
from task_ingress.runtime.topology import Addresses
from task_ingress.runtime.wakeups import one_wakeup_per_loop
from thespian.actors import PoisonMessage

SWEEP_EVERY = 1.0
SHUTDOWN_GRACE = 10.0


@dataclass(frozen=True)
class RuntimeStatistics:
    """What the runtime holds right now, for monitoring (trio's `statistics()` pattern):
    read without locks, so each count is exact when read, not all at one instant."""

    calls_waiting: int
    """Calls queued for the driver thread and not yet taken into a batch."""
    requests_in_flight: int
    """Requests admitted and not yet answered (what the in-flight caps count)."""
    channel_actors: int = 0
    """Channel actors alive, counted at the last sweep (every second, or `sweep()`)."""
    presence_entries: int = 0
    """(workspace, channel, peer) greets remembered, counted at the last sweep."""
    peer_cards: int = 0
    """Peer cards held, counted at the last sweep."""
    calls_dispatched: int = 0
    """Requests and presence changes handed to the actors since start (a running total)."""
    batches_dispatched: int = 0
    """The hand-offs they went in since start (a running total): calls over batches is the
    mean batch, over which each group commit spreads its fsync. A small one under load
    means each request pays more of it (docs/benchmarks.md, "Session 12"). In pipeline
    mode a hand-off is one frame to the pipeline process, which may merge frames that
    arrive together into one batch of its own."""


class Driver:
    """Owns the ActorSystem on its own thread; thread-safe `submit` and `ask` for the rest."""

    def __init__(
        self,
        host: ActorHost,
        settings: Settings,
        clock: Callable[[], float],
        request_timeout: float,
        limits: FlowLimits,
        batch_linger: float = 0.0,
    ) -> None:
        self.host = host
        self.settings = settings
        self.clock = clock
        self.request_timeout = request_timeout
        self.batch_linger = batch_linger
        self.flow = FlowControl(limits)
        self.inbox = Inbox()
        self.tickets = itertools.count(1)
        self.ready = threading.Event()
        self.start_error: BaseException | None = None
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._run, name="task-ingress-driver", daemon=True)
        self._addresses: Addresses | None = None
        # Dispatched calls awaiting their reply, by ticket (the driver thread's own).
        self.pending: dict[int, Call] = {}
        self.held = ChannelCount(ticket=0, channel_actors=0, peers=0, cards=0)
        self.sweep_ticket = 0  # the periodic sweep in progress (one at a time)
        # Running totals for statistics(): written by the driver thread only, read anywhere.
        self.calls_dispatched = 0
        self.batches_dispatched = 0
        self.log = get_logger(component="driver")

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

    @property
    def addresses(self) -> Addresses:
        """The actors' addresses (set before `start` returns)."""
        if self._addresses is None:
            raise RuntimeClosed("the runtime did not start")
        return self._addresses

    def submit(self, message: Submission | PresenceChange, peer: PeerKey | None = None
               ) -> Answer:
        """Queue a request or presence change for the router's next batch; the future
        resolves with its answer. `peer` is the admission key (None: holds no slot)."""
        return self._put(Call(message=message, peer=peer))

    def ask(self, to: Any, message: Any) -> Answer:
        """Queue a query (it carries a `ticket`) for one actor; the future resolves with
        the reply of that ticket."""
        return self._put(Call(message=message, to=to))

    def submit_calls(self, calls: list[Call]) -> None:
        """Queue several calls as ONE inbox item, so the driver takes them into one batch
        (tests use it to build a batch deterministically)."""
        self._refuse_if_closed()
        self.inbox.put_together(calls)

    def _put(self, call: Call) -> Answer:
        self._refuse_if_closed()
        self.inbox.put(call)
        return call.future

    def running(self) -> bool:
        """Started, not stopped and not stopped on its own (see `IngressRuntime.alive`)."""
        return self.ready.is_set() and self.start_error is None and not self.closed.is_set()

    def _refuse_if_closed(self) -> None:
        if self.closed.is_set():
            raise RuntimeClosed("the runtime is closed")

    def statistics(self) -> RuntimeStatistics:
        """What is queued and in flight right now, and what was held at the last sweep."""
        held = self.held
        return RuntimeStatistics(calls_waiting=self.inbox.qsize(),
                                 requests_in_flight=self.flow.total,
                                 channel_actors=held.channel_actors,
                                 presence_entries=max(0, held.peers),
                                 peer_cards=max(0, held.cards),
                                 calls_dispatched=self.calls_dispatched,
                                 batches_dispatched=self.batches_dispatched)

    def wait(self, future: Answer) -> Any:
        """Block for a reply, converting a timeout into IngressTimeout."""
        try:
            return future.result(timeout=self.request_timeout)
        except TimeoutError as exc:
            raise IngressTimeout(
                f"no answer within {self.request_timeout}s; outcome unknown"
            ) from exc

    def stop(self) -> None:
        """Refuse new calls, answer those in flight, shut the actor system down; returns
        once the driver thread has (also when it had stopped by itself, e.g. after the
        pipeline process died: it may still be reaping)."""
        if not self.closed.is_set():
            self.closed.set()
            self.inbox.put_stop()
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join(timeout=SHUTDOWN_GRACE * 3)

    # ---- driver thread -----------------------------------------------------------
    def _run(self) -> None:
        try:
            self._addresses = self.host.open()
        except BaseException as exc:
            self.start_error = exc
            self.host.close(SHUTDOWN_GRACE)
            self.ready.set()
            return
        self.ready.set()
        try:
            self._loop()
        except BaseException as exc:
            self.log.error("driver.crashed", error=repr(exc))
        finally:
            self.closed.set()
            # Everyone still waiting learns at once (a dead pipeline process, a bug here):
            # nothing is left to hang until its timeout.
            self._fail_pending(RuntimeClosed("the runtime shut down before an answer"))
            self._fail_waiting(RuntimeClosed("the runtime shut down"))
            self.host.close(SHUTDOWN_GRACE)

    def _loop(self) -> None:
        pending = self.pending
        stopping_since: float | None = None
        last_sweep = time.monotonic()
        # Callers answered since the last dispatch (likely to send again at once) plus those
        # already waiting when they were answered: the batch the driver is worth waiting for.
        expected = 0
        while True:
            calls, stop = self.inbox.collect(not pending and stopping_since is None,
                                             self.settings.max_batch)
            if calls and not stop and self.batch_linger > 0 and len(calls) < expected:
                more, stop = self.inbox.linger(
                    min(expected, self.settings.max_batch) - len(calls), self.batch_linger)
                calls += more
            if calls:
                expected = 0
            if stop and stopping_since is None:
                stopping_since = time.monotonic()
            self._dispatch(calls, pending)
            while pending:
                reply = self.host.listen()
                if reply is None:
                    break
                with one_wakeup_per_loop():  # each waiting event loop woken once for all
                    answered = self._resolve(reply, pending)
                    for more in self.host.take_buffered():
                        answered += self._resolve(more, pending)
                if answered:
                    expected = max(expected, self.inbox.qsize()) + answered
            now = time.monotonic()
            self._expire(pending, now)
            if now - last_sweep >= SWEEP_EVERY and self.sweep_ticket not in pending:
                last_sweep = now
                self._periodic_sweep(pending)
            if stopping_since is not None and (
                not pending or now - stopping_since > SHUTDOWN_GRACE
            ):
                return

    def _dispatch(self, calls: list[Call], pending: dict[int, Call]) -> None:
        asks: list[tuple[Any, Any]] = []
        batch: list[Stamped] = []
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
                batch.append((msg, now, preset))
            elif isinstance(msg, PresenceChange):
                now = self.clock()
                refused = self.flow.admit_greet((msg.workspace, msg.channel, msg.peer_id),
                                                now) if msg.card is not None else None
                if refused is None:
                    batch.append((msg, now, None))
                else:
                    batch.append((msg.refused(refused), now, refused))
            elif isinstance(msg, Sweep):
                self._sweep(msg)
            else:
                asks.append((call.to, msg))
        if batch:
            self.calls_dispatched += len(batch)
            self.batches_dispatched += 1
        if asks or batch:
            self.host.dispatch(asks, batch)

    def _periodic_sweep(self, pending: dict[int, Call]) -> None:
        """The timer's sweep, pending like a call (nobody waits on it): its answer must be
        read, or an idle runtime would pile one unread message a second."""
        call = Call(message=Sweep(now=0.0, ticket=self.next_ticket()), to=self.addresses.router)
        call.deadline = time.monotonic() + self.request_timeout * 2
        self.sweep_ticket = call.message.ticket
        pending[self.sweep_ticket] = call
        self._sweep(call.message)

    def _sweep(self, sweep: Sweep) -> None:
        """Housekeeping on the clock: forget full token buckets, let the actors free expired
        peers and idle channel actors (the router answers `ChannelCount`)."""
        stamp = self.clock()
        self.flow.sweep(stamp)
        self.host.sweep(sweep.model_copy(update={"now": stamp}))

    def _resolve(self, reply: Any, pending: dict[int, Call]) -> int:
        """Resolve the calls a reply answers; returns how many."""
        if isinstance(reply, Replies):  # one group commit's answers
            return sum(self._resolve(item, pending) for item in reply.items)
        if isinstance(reply, ChannelCount):
            if reply.peers < 0:  # answered before Presence's part came back: keep its last
                reply = reply.model_copy(update={"peers": self.held.peers,
                                                 "cards": self.held.cards})
            self.held = reply  # read by statistics() from any thread: one reference swap
            call = pending.pop(reply.ticket, None)
            if call is not None:
                call.future.set_result(reply)
            return 0  # not a caller's answer: no reason to linger for its next call
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

    def _fail_pending(self, exc: BaseException) -> None:
        calls, self.pending = list(self.pending.values()), {}
        for call in calls:
            self._release(call)
            if not call.future.done():
                call.future.set_exception(exc)

    def _fail_waiting(self, exc: BaseException) -> None:
        for call in self.inbox.drain():
            if not call.future.done():
                call.future.set_exception(exc)

    def actor_pids(self) -> list[int]:
        """PIDs of the live processes running this runtime's actors (none on
        simpleSystemBase in this process; the pipeline process in pipeline mode)."""
        return self.host.pids()
