"""The actors of one runtime: the actor system they run in, which actors there are, how they
are wired at start and in which order they are stopped.

    driver ─SubmitBatch─▶ IngressRouter ──▶ ChannelIngress (one per channel) ──▶ Presence
    Presence ──▶ Capability ──▶ [store proxy] ──▶ TaskStore ──▶ Audit ──Replies──▶ driver
    Audit ──Dones──▶ IngressRouter ──▶ ChannelIngress

The router creates and supervises the channel actors and the TaskStore; the others are
top-level. The one edge against the flow is Audit → router: Audit reports finished tickets
to the router (`InFlight.router`), which passes them to their channel actors.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from task_ingress.actors.audit import Audit
from task_ingress.actors.capability import Capability
from task_ingress.actors.ingress import ChannelIngress
from task_ingress.actors.log import get_logger
from task_ingress.actors.presence import Presence
from task_ingress.actors.router import IngressRouter
from task_ingress.actors.task_store import TaskStore
from task_ingress.messages.protocol import Settings, Started, Wiring
from task_ingress.runtime.errors import RuntimeStartError
from task_ingress.runtime.ports import free_port
from thespian.actors import Actor, ActorAddress, ActorExitRequest, ActorSystem
from thespian.system.transport import MultiprocessQueueTransport

WIRING_TIMEOUT = 60.0
CHILD_CHECK_SECONDS = 0.2
"""How long a multiprocQueueBase mailbox must stay empty before its actor checks for dead
children (Thespian's default: 2 s; see `prompt_child_exit_checks`)."""


@dataclass(frozen=True)
class Addresses:
    """Where the runtime's long-lived actors are (the channel actors are the router's).

    Each is an ActorAddress; in the embedding process of a pipeline-mode runtime, the
    actor's role name, which the pipeline process maps to the address (pipeline/wire.py)."""

    router: Any
    presence: Any
    capability: Any
    audit: Any
    store: Any
    """The TaskStore at start (the router restarts it at a new address if it dies)."""
    store_proxy: Any = None
    """The `Settings.store_proxy_class` actor between Capability and TaskStore, if any."""

    def exit_order(self) -> list[ActorAddress]:
        """Who gets `ActorExitRequest` at close, in order: the router first (its channel
        actors go with it), then each stage in pipeline order, Audit last (it answers what
        the others hand it)."""
        proxy = [self.store_proxy] if self.store_proxy is not None else []
        return [self.router, self.presence, self.capability, *proxy, self.store, self.audit]


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


def prompt_child_exit_checks() -> None:
    """Make multiprocQueueBase actors notice a dead child within CHILD_CHECK_SECONDS.

    Thespian 4.0.1 turns SIGCHLD into `ChildActorExited` only when the parent's mailbox has
    stayed empty for QUEUE_CHECK_PERIOD (2 s): its queue is not signal-safe, so the handler
    only sets a flag. The driver's `Sweep` reaches the router every second, so the router,
    the TaskStore's parent, never saw 2 idle seconds and never learnt that its store died:
    every later request hung until its timeout, and close() hung. With a shorter period the
    check runs at the first lull (callers waiting on a dead store stop sending).
    """
    MultiprocessQueueTransport.QUEUE_CHECK_PERIOD = CHILD_CHECK_SECONDS


def open_actor_system(base: str) -> Any:
    """Start a fresh ActorSystem of `base` (admin port, mailbox sizes as this runtime needs)."""
    capabilities: dict[str, Any] = {}
    if base in ("multiprocTCPBase", "multiprocUDPBase"):
        capabilities["Admin Port"] = free_port()
    if base == "multiprocQueueBase":
        unbounded_queue_mailboxes()
        prompt_child_exit_checks()
    return ActorSystem(base, capabilities, transientUnique=True)


def check_actor_classes(settings: Settings) -> None:
    """Raise RuntimeStartError unless the actor classes the settings name load and are of the
    kind their place needs (a typo would otherwise fail every request, not the start)."""
    places = [(settings.channel_actor_class, ChannelIngress),
              (settings.store_actor_class, TaskStore), (settings.audit_actor_class, Audit)]
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


def start_actors(asys: Any, settings: Settings) -> Addresses:
    """Create and wire every actor; return their addresses, or stop them and raise."""
    check_actor_classes(settings)
    router, presence = asys.createActor(IngressRouter), asys.createActor(Presence)
    capability = asys.createActor(Capability)
    audit = asys.createActor(settings.audit_actor_class)
    started = [router, presence, capability, audit]
    try:
        # The router starts and supervises the TaskStore; it answers once the store has
        # migrated the schema, which must happen before Audit drains the outbox.
        wiring = Wiring(ticket=0, settings=settings, presence=presence, capability=capability,
                        audit=audit)
        store = _wire(asys, router, "router", wiring).address
        wiring = wiring.model_copy(update={"store": store})
        proxy = None
        if settings.store_proxy_class:  # a test seam: the proxy passes on to the real store
            proxy = asys.createActor(settings.store_proxy_class)
            started.append(proxy)
            _wire(asys, proxy, "store proxy", wiring)
            wiring = wiring.model_copy(update={"store": proxy})
        for address, name in ((audit, "audit"), (capability, "capability"),
                              (presence, "presence")):
            _wire(asys, address, name, wiring)
    except BaseException:
        stop_actors(asys, started)
        raise
    return Addresses(router=router, presence=presence, capability=capability, audit=audit,
                     store=store, store_proxy=proxy)


def _wire(asys: Any, address: ActorAddress, name: str, wiring: Wiring) -> Started:
    reply = asys.ask(address, wiring, WIRING_TIMEOUT)
    if not isinstance(reply, Started):
        raise RuntimeStartError(f"{name} actor did not start (reply {reply!r})")
    if reply.error:
        raise RuntimeStartError(reply.error)
    return reply


def stop_actors(asys: Any, addresses: Sequence[ActorAddress]) -> None:
    """Send each actor `ActorExitRequest`, in this order, so stores flush and the final
    checkpoint is written: simpleSystemBase's shutdown() does not send it."""
    for address in addresses:
        try:
            asys.tell(address, ActorExitRequest())
        except Exception as exc:
            get_logger(component="driver").error("driver.exit_request_failed",
                                                 actor=str(address), error=repr(exc))


def close_actor_system(asys: Any, addresses: Addresses | None, grace: float) -> None:
    """Stop the actors (in `exit_order`) and shut the system down, waiting at most `grace`
    seconds: a hung shutdown is logged and left to the process reaper."""
    log = get_logger(component="driver")
    done = threading.Event()

    def _shutdown() -> None:
        try:
            asys.shutdown()
        except Exception as exc:
            log.error("driver.shutdown_failed", error=repr(exc))
        done.set()

    if addresses is not None:
        stop_actors(asys, addresses.exit_order())
    threading.Thread(target=_shutdown, name="task-ingress-shutdown", daemon=True).start()
    if not done.wait(grace):
        log.error("driver.shutdown_hung")
