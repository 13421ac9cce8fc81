"""Exceptions the runtime raises to its embedder (never for a bad request: those are Outcomes;
a refused greet or leave raises `PresenceRefused`)."""

from __future__ import annotations

from task_ingress.messages.outcomes import Outcome
from task_ingress.messages.reasons import Reason


class IngressTimeout(TimeoutError):
    """No answer within `request_timeout`: the outcome is unknown, not rejected.

    Not `RuntimeClosed`: the runtime was running; the request may still be answered and
    audited later, so a caller retrying must reuse the same request ID.
    """


class RuntimeClosed(RuntimeError):
    """The runtime is not running (never started, or closed). Not a timeout."""


class RuntimeStartError(RuntimeError):
    """The actor system or the store could not be started; the message says which part."""


class PresenceRefused(ValueError):
    """A `greet` (or `leave`) was refused and changed nothing; `reason` says why, and the
    refusal is in the audit log as one record with action `greet` (`leave`) and that reason:

    - `invalid_request`: a malformed workspace, channel or peer ID, or a card over a
      `RuntimeConfig` card limit (too many or malformed capabilities, a display name or
      proof too long). Retrying the same greet fails the same way.
    - `overloaded`: the peer's greet budget is spent, or the runtime holds its maximum of
      channels, or the peer is already visible in its maximum of channels. Retry later
      (after a leave or expiry elsewhere, for the channel caps).

    A ValueError, as malformed identifiers always raised. Not `IngressTimeout` (then the
    change may still take effect) nor `RuntimeClosed` (the runtime was not running; nothing
    was audited).
    """

    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome
        self.reason: Reason = outcome.reason or Reason.TASK_INGRESS_FAILED
        super().__init__(f"{outcome.action.value} refused: {self.reason.value}")
