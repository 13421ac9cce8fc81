"""What every actor shares: type dispatch, a loud answer to unknown messages, and the rule
that a handler failure answers the request instead of hanging it."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from task_ingress.actors.log import get_logger
from task_ingress.messages.outcomes import Outcome
from task_ingress.messages.protocol import (
    InFlight,
    InFlights,
    PresenceFlight,
    Verdict,
    Verdicts,
)
from task_ingress.messages.reasons import Reason
from thespian.actors import ActorTypeDispatcher

T = TypeVar("T")

_SYSTEM_MESSAGES = {"ChildActorExited", "ActorExitRequest", "DeadEnvelope", "WakeupMessage",
                    "PoisonMessage"}


def failed_verdict(flight: InFlight) -> Verdict:
    """The verdict for a request an actor failed on: `task_ingress_failed`, nothing applied."""
    return Verdict(flight=flight, outcome=Outcome.failed(flight.context.request_id,
                                                         flight.submission.action))


def rejected_verdict(flight: InFlight, reason: Reason) -> Verdict:
    """The verdict for a request a gate rule rejected."""
    return Verdict(flight=flight, outcome=Outcome.rejected(flight.context.request_id,
                                                           flight.submission.action, reason))


def presence_verdict(flight: PresenceFlight, reason: Reason) -> Verdict:
    """The verdict for a greet an actor refused (a channel cap): audited as a `greet` record
    with `reason`, answered to the caller like a rejected request; nothing was applied.

    Only changes the facade found grammatical reach an actor, hence `checked`."""
    sub = flight.change.refused(reason)
    return rejected_verdict(
        InFlight(submission=sub, context=sub.context, reply_to=flight.reply_to, checked=True),
        reason)


def group_by_address(pairs: Iterable[tuple[Any, T]]) -> list[tuple[Any, list[T]]]:
    """Values grouped by destination address, in first-seen order.

    Thespian addresses define equality but no hash, so they cannot key a dict; the number of
    distinct destinations per group commit is tiny (usually one), so a scan is cheap.
    """
    groups: list[tuple[Any, list[T]]] = []
    for address, value in pairs:
        for known, values in groups:
            if known is address or known == address:
                values.append(value)
                break
        else:
            groups.append((address, [value]))
    return groups


class GateActor(ActorTypeDispatcher):  # type: ignore[misc]
    """Base actor: dispatches on message type and contains handler failures.

    A failing handler is never re-raised: Thespian would re-deliver the message (a second
    application of a write) and then bounce it as a PoisonMessage nobody answers. Instead a
    request in flight is handed to Audit as `task_ingress_failed`, and the failure logged.
    """

    audit: Any = None

    def receiveMessage(self, message: Any, sender: Any) -> Any:
        """Dispatch; on failure answer the request (if any) and log with its request ID."""
        try:
            # Fast path: our handlers never return SUPER and our messages do not subclass one
            # another, so the exact type's handler is the one Thespian's MRO walk would pick
            # (that walk was ~4% of the runtime's CPU). Anything else takes the full walk.
            handler = getattr(self, "receiveMsg_" + type(message).__name__, None)
            if handler is not None:
                return handler(message, sender)
            return super().receiveMessage(message, sender)
        except Exception as exc:
            flights = [message] if isinstance(message, InFlight) else \
                list(message.items) if isinstance(message, InFlights) else []
            get_logger(actor=type(self).__name__).error(
                "actor.handler_failed", message_type=type(message).__name__,
                request_ids=[f.context.request_id for f in flights], error=repr(exc),
            )
            if flights and self.audit is not None:
                self.send(self.audit, Verdicts(
                    items=tuple(failed_verdict(f) for f in flights)))
            return None

    def forward_flights(self, items: Iterable[InFlight], rule: Callable[[InFlight], Reason | None],
                        next_hop: Any) -> None:
        """Judge each request with `rule` (None = it passes), in order; send the passes on as
        ONE `InFlights` and the rejections to Audit as ONE `Verdicts`."""
        passed = self.judge_flights(items, rule)
        if passed:
            self.send(next_hop, InFlights(items=tuple(passed)))

    def judge_flights(self, items: Iterable[InFlight], rule: Callable[[InFlight], Reason | None]
                      ) -> list[InFlight]:
        """Judge each request with `rule` (None = it passes), in order; send the rejections to
        Audit as ONE `Verdicts` and return the passes.

        A rule that raises fails its own request only (`task_ingress_failed`), so a bug never
        strands or double-answers the rest of the batch.
        """
        passed: list[InFlight] = []
        rejected: list[Verdict] = []
        for flight in items:
            try:
                reason = rule(flight)
            except Exception as exc:
                get_logger(actor=type(self).__name__).error(
                    "actor.rule_failed", request_id=flight.context.request_id, error=repr(exc))
                rejected.append(failed_verdict(flight))
                continue
            if reason is None:
                passed.append(flight)
            else:
                rejected.append(rejected_verdict(flight, reason))
        if rejected:
            self.send(self.audit, Verdicts(items=tuple(rejected)))
        return passed

    def receiveUnrecognizedMessage(self, message: Any, sender: Any) -> None:
        """Log unknown messages as data; Thespian system messages are ignored quietly."""
        name = type(message).__name__
        if name in _SYSTEM_MESSAGES:
            return
        get_logger(actor=type(self).__name__).warning(
            "actor.unrecognized_message", message_type=name
        )
