"""What every actor shares: type dispatch and a loud answer to unknown messages."""

from __future__ import annotations

from typing import Any

from thespian.actors import ActorTypeDispatcher

from actors.log import get_logger


class GateActor(ActorTypeDispatcher):  # type: ignore[misc]
    """Base actor: dispatches on message type; logs anything it does not understand."""

    def receiveUnrecognizedMessage(self, message: Any, sender: Any) -> None:
        """Log unknown messages as data; Thespian system messages are ignored quietly."""
        name = type(message).__name__
        if name in {"ChildActorExited", "ActorExitRequest", "DeadEnvelope", "WakeupMessage"}:
            return
        get_logger(actor=type(self).__name__).warning(
            "actor.unrecognized_message", message_type=name
        )
