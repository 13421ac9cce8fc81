"""How the swarm reaches a runtime: the `SwarmTransport` protocol and the in-process one.

The NATS transport (`runtime.nats.swarm_transport.NatsSwarmTransport`) implements the
same protocol against a running daemon. Attributes the swarm reads besides the methods:

- `greet_interval: float` — the runtime's greet interval (seconds); peers re-greet well
  within it and the invariant checker models expiry at 2 x greet_interval.
- `leave_revokes: bool` (optional, default False when absent) — True when `leave` makes
  the peer invisible by the time it returns (in-process, unless `--leave silence`). Over
  NATS a leave is the peer going silent, so only expiry revokes and the checker must not
  count the leave.
- `peer_name(peer_id) -> str` (optional) — the ID the transport's peer really has (over
  NATS a verified handle `peer_id@fingerprint`); the swarm names its peers with it.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from task_ingress.messages.peers import PeerCard
from task_ingress.runtime.config import RuntimeConfig
from task_ingress.runtime.facade import IngressRuntime


@runtime_checkable
class SwarmTransport(Protocol):
    """A path for a swarm's greets, leaves and wire envelopes into one runtime."""

    greet_interval: float

    def greet(self, workspace: str, channel: str, card: PeerCard) -> None:
        """Announce (or refresh) the peer in (workspace, channel); returns once effective."""
        ...

    def leave(self, workspace: str, channel: str, peer_id: str) -> None:
        """The peer leaves (over NATS: it goes silent and expires)."""
        ...

    def deliver(self, envelope: bytes, *, workspace: str, channel: str, peer_id: str) -> bytes:
        """A msgpack SPEC §7 envelope in, the msgpack reply out."""
        ...

    def store_path(self) -> str:
        """The SQLite store file, read-only inspected by the invariants after the run."""
        ...

    def close(self) -> None:
        """Release everything this transport started."""
        ...


class InProcTransport:
    """The swarm's default: an `IngressRuntime` in this process, driven through `deliver`."""

    def __init__(self, config: RuntimeConfig, *, leave_revokes: bool = True) -> None:
        self.config = config
        self.leave_revokes = leave_revokes
        """False: `leave` sends nothing and the peer expires, as over NATS (--leave silence)."""
        self.greet_interval = config.greet_interval
        self.runtime = IngressRuntime(config)
        self.runtime.start()

    def greet(self, workspace: str, channel: str, card: PeerCard) -> None:
        """Greet through the facade (returns once the change is fenced and applied)."""
        self.runtime.greet(workspace, channel, card)

    def leave(self, workspace: str, channel: str, peer_id: str) -> None:
        """Leave through the facade (no later write of the peer is accepted); with
        `leave_revokes` False, nothing: the peer only stops greeting (the swarm stops it)."""
        if self.leave_revokes:
            self.runtime.leave(workspace, channel, peer_id)

    def deliver(self, envelope: bytes, *, workspace: str, channel: str, peer_id: str) -> bytes:
        """The runtime's wire path."""
        return self.runtime.deliver(envelope, workspace=workspace, channel=channel,
                                    peer_id=peer_id)

    def store_path(self) -> str:
        """The runtime's store file (absolute)."""
        return self.runtime.store_path

    def close(self) -> None:
        """Shut the runtime down: store and audit flushed, final checkpoint written."""
        self.runtime.close()
