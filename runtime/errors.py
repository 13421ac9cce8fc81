"""Exceptions the runtime raises to its embedder (never for a bad request: those are Outcomes)."""

from __future__ import annotations


class IngressTimeout(TimeoutError):
    """No answer within `request_timeout`: the outcome is unknown, not rejected.

    Not `RuntimeClosed`: the runtime was running; the request may still be answered and
    audited later, so a caller retrying must reuse the same request ID.
    """


class RuntimeClosed(RuntimeError):
    """The runtime is not running (never started, or closed). Not a timeout."""


class RuntimeStartError(RuntimeError):
    """The actor system or the store could not be started; the message says which part."""
