"""Deterministic interleavings for the race tests: hold, act, release, check.

`RaceHarness` drives a runtime started with `store_proxy_class=HOLD` (task_ingress.testing)
on simpleSystemBase. There the
driver thread runs every actor to completion inside each `tell`, so once a call has been
dispatched its effects are final: a request is either held before the store, stashed in
its channel actor, or answered. `barrier()` makes that point observable, so a test reads as:
hold the next store-bound requests; do X; barrier; release; check.

Calls that must not block the test (a write that will be held, a leave that the fence must
delay) go straight to the driver and return futures.
"""

from __future__ import annotations

from typing import Any

from task_ingress.messages import AuditRecord, IngressContext, Outcome, PeerCard
from task_ingress.messages.protocol import PresenceApplied, PresenceChange, Replied
from task_ingress.messages.requests import AnyRequest
from task_ingress.runtime import IngressRuntime
from task_ingress.runtime.answer import Answer
from task_ingress.runtime.driver import Driver
from task_ingress.testing import HOLD, HoldArm, HoldQuery, HoldRelease, HoldState

from tests.race.race_checks import RequestKey

WAIT = 10.0


class RaceHarness:
    """Test-side handle on the `Hold` actor and the driver's non-blocking calls."""

    def __init__(self, rt: IngressRuntime) -> None:
        driver = rt._driver
        assert driver is not None, "runtime not started"
        assert rt.config.store_proxy_class == HOLD, "start the runtime with store_proxy_class=HOLD"
        assert rt.config.actor_base == "simpleSystemBase", "barrier() needs the one-thread base"
        self.rt = rt
        self.driver: Driver = driver
        self.hold_address = driver.addresses.store_proxy
        self.requests: dict[RequestKey, AnyRequest] = {}

    # ---- the Hold actor ---------------------------------------------------------
    def _hold(self, build: Any) -> HoldState:
        reply = self.driver.ask(self.hold_address, build(self.driver.next_ticket())).result(WAIT)
        assert isinstance(reply, HoldState), reply
        return reply

    def hold(self) -> None:
        """Hold every request that reaches the store from now until `release`."""
        self._hold(lambda t: HoldArm(ticket=t))

    def held(self) -> tuple[str, ...]:
        """Request IDs held right now (after everything queued before has run)."""
        self.barrier()
        return self._hold(lambda t: HoldQuery(ticket=t)).held

    def release(self, order: tuple[int, ...] = ()) -> None:
        """Send the held requests (indices in arrival order; () = all) to the store at once."""
        self._hold(lambda t: HoldRelease(ticket=t, order=order))

    def barrier(self) -> None:
        """Return once every call queued before it has been dispatched and run to rest.

        The driver tells plain queries before the batch of submissions it collected with
        them, but it only resolves the query's future after that batch ran; one round trip
        therefore covers everything queued earlier.
        """
        self._hold(lambda t: HoldQuery(ticket=t))

    # ---- non-blocking calls ------------------------------------------------------
    def submit(self, context: IngressContext, request: AnyRequest) -> Answer:
        """Queue a request exactly as `IngressRuntime.submit` does, without waiting."""
        key = (context.workspace, context.channel, context.peer_id, context.request_id)
        self.requests[key] = request
        return self.driver.submit(*self.rt._submission(self.driver, context, request))

    def submit_now(self, context: IngressContext, request: AnyRequest) -> Outcome:
        """Submit and wait (setup steps), remembering the request for the checkers."""
        return outcome(self.submit(context, request))

    def greet(self, workspace: str, channel: str, card: PeerCard) -> Answer:
        """Queue a greet as `IngressRuntime.greet` does, without waiting."""
        return self._presence(workspace, channel, card.peer_id, card)

    def leave(self, workspace: str, channel: str, peer_id: str) -> Answer:
        """Queue a leave as `IngressRuntime.leave` does, without waiting."""
        return self._presence(workspace, channel, peer_id, None)

    def _presence(self, workspace: str, channel: str, peer_id: str,
                  card: PeerCard | None) -> Answer:
        change = PresenceChange(ticket=self.driver.next_ticket(), workspace=workspace,
                                channel=channel, peer_id=peer_id, card=card, now=0.0)
        return self.driver.submit(change)


def outcome(future: Answer) -> Outcome:
    """The Outcome a submit future resolves to."""
    reply = future.result(WAIT)
    assert isinstance(reply, Replied), reply
    return reply.outcome


def applied(future: Answer) -> None:
    """Wait for a greet/leave future; it must have taken effect."""
    reply = future.result(WAIT)
    assert isinstance(reply, PresenceApplied), reply


def record_of(records: list[AuditRecord], request_id: str, channel: str | None = None
              ) -> list[AuditRecord]:
    """Audit records of one request ID (optionally in one channel), in commit order."""
    return [r for r in records if r.request_id == request_id
            and (channel is None or r.channel == channel)]
