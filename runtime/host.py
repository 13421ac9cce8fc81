"""Where the driver's messages go: the actor system in this process, or (runtime/pipeline/)
in a pipeline process of its own. The driver thread owns its host and is the only thread
that calls it (an ActorSystem is not thread-safe); only `pids` may be called from any.
"""

from __future__ import annotations

from typing import Any, Protocol

from task_ingress.messages.protocol import (
    PresenceChange,
    Settings,
    Submission,
    SubmitBatch,
    Sweep,
)
from task_ingress.messages.reasons import Reason
from task_ingress.runtime.reaper import ActorProcesses
from task_ingress.runtime.topology import (
    Addresses,
    close_actor_system,
    open_actor_system,
    start_actors,
)

Stamped = tuple[Submission | PresenceChange, float, Reason | None]
"""A request or presence change as the driver dispatches it: with its clock reading and, for
a request, the rejection decided before the gate (bad bytes, overload), if any."""

MULTIPROC_POLL = 0.001
SIMPLE_POLL = 0.0005


class ActorHost(Protocol):
    """The actor system the driver talks to, wherever it runs."""

    def open(self) -> Addresses:
        """Start the actor system and every actor; their addresses (or raise)."""
        ...

    def dispatch(self, asks: list[tuple[Any, Any]], batch: list[Stamped]) -> None:
        """Send the queries (`(actor, message)`, each carrying a `ticket`), then `batch` to
        the router as ONE batch, in order. The actors receive all of it before any reply
        is read: a query's reply thus follows everything dispatched with it (the race
        tests' barrier)."""
        ...

    def sweep(self, sweep: Sweep) -> None:
        """A housekeeping sweep, stamped by the injected clock, for the router (expired
        presence, idle channel actors); its `ChannelCount` answer comes back through
        `listen` under `sweep.ticket`."""
        ...

    def listen(self) -> Any | None:
        """The next reply for the driver, waiting at most a short poll; None when none."""
        ...

    def take_buffered(self) -> list[Any]:
        """Replies already received and not yet returned by `listen` (never waits): the
        driver resolves them with the reply before them, waking each event loop once."""
        ...

    def close(self, grace: float) -> None:
        """Stop every actor and the system within `grace` seconds; leave no process."""
        ...

    def pids(self) -> list[int]:
        """PIDs of the live processes running the actors (any thread may ask)."""
        ...


class InProcessHost:
    """The actor system in this process (on a multiprocess base, its actors in forked
    children, reaped at close)."""

    def __init__(self, base: str, settings: Settings) -> None:
        self.base = base
        self.settings = settings
        self.poll = SIMPLE_POLL if base == "simpleSystemBase" else MULTIPROC_POLL
        self.processes = ActorProcesses()
        self.asys: Any = None
        self.addresses: Addresses | None = None

    def open(self) -> Addresses:
        """Start the system and wire the actors; a failed start stops what came up."""
        self.processes.before_start()
        self.asys = open_actor_system(self.base)
        self.processes.after_start()
        self.addresses = start_actors(self.asys, self.settings)
        return self.addresses

    def dispatch(self, asks: list[tuple[Any, Any]], batch: list[Stamped]) -> None:
        """Tell each query, then one `SubmitBatch` to the router, each item stamped."""
        for to, message in asks:
            self.ask(to, message)
        stamped: list[Submission | PresenceChange] = []
        for msg, now, preset in batch:
            if isinstance(msg, Submission):
                stamped.append(msg.replace(now=now, preset=preset))
            else:
                stamped.append(msg.model_copy(update={"now": now}))
        if stamped:
            self.submit_batch(stamped)

    def submit_batch(self, batch: list[Submission | PresenceChange]) -> None:
        """One `SubmitBatch` of items already stamped (the pipeline process's)."""
        assert self.addresses is not None
        self.asys.tell(self.addresses.router, SubmitBatch(items=tuple(batch)))

    def ask(self, to: Any, message: Any) -> None:
        """Tell the query; the reply comes back through `listen`."""
        self.asys.tell(to, message)

    def sweep(self, sweep: Sweep) -> None:
        """Pass the sweep to the router."""
        assert self.addresses is not None
        self.asys.tell(self.addresses.router, sweep)

    def listen(self) -> Any | None:
        """`ActorSystem.listen` for one poll (which also fires the actors' timers)."""
        return self.asys.listen(self.poll)

    def take_buffered(self) -> list[Any]:
        """Nothing: Thespian hands replies over one at a time."""
        return []
    def close(self, grace: float) -> None:
        """Stop the actors and the system; no actor process outlives this."""
        if self.asys is not None:
            close_actor_system(self.asys, self.addresses, grace)
        self.processes.reap()

    def pids(self) -> list[int]:
        """The actor processes (none on simpleSystemBase)."""
        return self.processes.pids()
