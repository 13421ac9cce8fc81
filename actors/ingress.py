"""ChannelIngress actor: one per (workspace, channel); one request at a time, end to end.

Accepts:
- `Wiring` (from the router) -> remembers Presence.
- `InFlight` (from the router) -> when idle, starts it through Presence; when a request is
  in flight, stashes it. Released by `Done`.
- `PresenceFlight` (from the router) -> the fence: a greet or leave is stashed behind the
  in-flight request and passed to Presence only when nothing is in flight, so a change
  never lands between a request's checks and its commit.
- `Done` (from Audit) -> the in-flight request is answered; take the next stashed message.

The stash is bounded by the runtime's per-channel in-flight cap (excess is rejected
`overloaded` before it is sent here), so nothing here grows without bound.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from actors.base import GateActor
from actors.log import get_logger
from messages.protocol import Done, InFlight, PresenceFlight, Wiring


class ChannelIngress(GateActor):
    """Serializes a channel's writes and presence changes."""

    def __init__(self) -> None:
        super().__init__()
        self.presence: Any = None
        self.busy: int | None = None
        self.stash: deque[InFlight | PresenceFlight] = deque()
        self.log = get_logger(actor="channel_ingress")
        self.naive = False  # race-test seam Settings.naive_fence: no fence, no serializing

    def receiveMsg_Wiring(self, msg: Wiring, sender: Any) -> None:
        """Remember Presence and Audit (the router does not wait for an answer)."""
        self.presence, self.audit = msg.presence, msg.audit
        self.naive = msg.settings.naive_fence

    def receiveMsg_InFlight(self, msg: InFlight, sender: Any) -> None:
        """Start the request now, or queue it behind the one in flight."""
        self.stash.append(msg)
        self._pump()

    def receiveMsg_PresenceFlight(self, msg: PresenceFlight, sender: Any) -> None:
        """Fence a presence change behind the in-flight request."""
        self.stash.append(msg)
        self._pump()

    def receiveMsg_Done(self, msg: Done, sender: Any) -> None:
        """Release the channel and move on."""
        if self.busy != msg.ticket and not self.naive:
            self.log.warning("ingress.unexpected_done", ticket=msg.ticket, busy=self.busy)
        self.busy = None
        self._pump()

    def _pump(self) -> None:
        # Presence changes pass straight through when idle: the channel's next check
        # reaches Presence and Capability behind them on the same paths.
        while self.busy is None and self.stash:
            item = self.stash.popleft()
            self.send(self.presence, item)
            if isinstance(item, InFlight) and not self.naive:
                self.busy = item.submission.ticket
