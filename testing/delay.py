"""`Delay`: a store proxy that keeps every batch of admitted requests a moment before the
store, so that a cluster test that pauses a daemon (SIGSTOP) always catches writes that were
admitted under the old lease and not yet committed — the writes fencing must refuse.

A runtime started with `RuntimeConfig(store_proxy_class=DELAY)` puts it between Capability
and TaskStore. It sleeps on the actor system's thread (in-process runtimes only): the whole
pipeline waits, which is what a paused or slow store looks like from the request's side.
"""

from __future__ import annotations

import time
from typing import Any

from task_ingress.actors.base import GateActor
from task_ingress.messages.base import InternalMessage
from task_ingress.messages.frozen import FrozenMessage
from task_ingress.messages.protocol import InFlights, Started, Wiring

DELAY_SECONDS = 0.3


class Delay(GateActor):
    """Passes everything to the store; request batches after DELAY_SECONDS."""

    def __init__(self) -> None:
        super().__init__()
        self.store: Any = None

    def receiveMsg_Wiring(self, msg: Wiring, sender: Any) -> None:
        """Remember the real TaskStore (and Audit, for failures)."""
        self.store, self.audit = msg.store, msg.audit
        self.send(sender, Started(ticket=msg.ticket))

    def receiveMsg_InFlights(self, msg: InFlights, sender: Any) -> None:
        """Wait, then hand the batch to the store."""
        time.sleep(DELAY_SECONDS)
        self.send(self.store, msg)

    def receiveUnrecognizedMessage(self, message: Any, sender: Any) -> None:
        """Other store-bound protocol messages go on at once (they follow their batch)."""
        if isinstance(message, InternalMessage | FrozenMessage):
            self.send(self.store, message)
        else:
            super().receiveUnrecognizedMessage(message, sender)
