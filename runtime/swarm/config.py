"""SwarmConfig: every knob of `task-ingress swarm` (SPEC §9 options plus a few more)."""

from __future__ import annotations

from dataclasses import dataclass

LEAVES = ("revoke", "silence")
"""The values of SwarmConfig.leave (`--leave`)."""
DEFAULT_GREET_INTERVAL = 1.0
"""Seconds. Short on purpose (AGH's is 30 s) so that heartbeats, silence and expiry all
happen inside a default run of a few seconds."""


@dataclass(frozen=True)
class SwarmConfig:
    """One swarm run. `requests` and `duration` both bound it: whichever is reached first."""

    requests: int = 5000
    duration: float = 60.0
    peers: int = 32
    channels: int = 8
    workspaces: int = 1
    concurrency: int = 16
    churn: float = 0.02
    """Per request slot, the chance that a peer churns instead: leaves (and re-greets a
    little later) or goes silent until it expires. 0 disables churn."""
    bad_share: float = 0.1
    """Share of requests that are deliberately bad (each kind must be rejected)."""
    actor_base: str = "simpleSystemBase"
    process_mode: str = "inprocess"
    """In-process runtimes: RuntimeConfig.process_mode (inprocess or pipeline)."""
    store: str | None = None
    """SQLite store file; None: a durable temp file, removed after the run."""
    seed: int = 1
    json_path: str | None = None
    plot_path: str | None = None
    ack_log: str | None = None
    transport: str = "inproc"
    nats_url: str | None = None
    daemon: str | None = None
    greet_interval: float = DEFAULT_GREET_INTERVAL
    """In-process runtimes only; over NATS the daemon's interval is read from the transport."""
    leave: str | None = None
    """How a churning peer leaves: "revoke" (a leave message; no write of the peer is
    accepted after it returns) or "silence" (the peer stops greeting and the runtime expires
    it, 2 x greet_interval later). None: the transport's own — revoke in-process, silence
    over NATS, where AGH has no leave message. An in-process swarm with "silence" runs the
    workload a swarm over NATS runs: its peers sit out the same expiry waits (the side-by-side
    comparison of `task-ingress bench --swarm`)."""
    capless_share: float = 0.125
    """Share of peers whose card lacks task.write (or its proof): they only send bad
    requests, each expected `capability_denied`."""
    progress: bool = True

    def __post_init__(self) -> None:
        if self.requests < 1 or self.duration <= 0:
            raise ValueError("--requests must be at least 1 and --duration positive")
        if self.peers < 1 or self.channels < 1 or self.workspaces < 1:
            raise ValueError("--peers, --channels and --workspaces must be at least 1")
        if self.concurrency < 1:
            raise ValueError("--concurrency must be at least 1")
        if not 0.0 <= self.churn <= 1.0 or not 0.0 <= self.bad_share <= 1.0:
            raise ValueError("--churn and --bad-share are fractions in 0..1")
        if not 0.0 <= self.capless_share < 1.0:
            raise ValueError("capless_share is a fraction in 0..1 (1 excluded)")
        if self.process_mode not in ("inprocess", "pipeline"):
            raise ValueError(f"--process-mode is inprocess or pipeline, not "
                             f"{self.process_mode!r}")
        if self.process_mode == "pipeline" and self.actor_base != "simpleSystemBase":
            raise ValueError("--process-mode pipeline runs the actors on simpleSystemBase")
        if self.transport not in ("inproc", "nats"):
            raise ValueError(f"--transport is inproc or nats, not {self.transport!r}")
        if self.process_mode != "inprocess" and (self.transport == "nats" or self.daemon):
            # It would be ignored: the report would credit a mode the daemon does not run.
            raise ValueError("--process-mode is for the in-process runtime; over NATS the "
                             "daemon's is set by `task-ingress serve --process-mode`")
        if self.greet_interval <= 0:
            raise ValueError("--greet-interval must be positive")
        if self.leave not in (None, *LEAVES):
            raise ValueError(f"--leave is {' or '.join(LEAVES)}, not {self.leave!r}")
        if self.leave == "revoke" and self.transport == "nats":
            raise ValueError("--leave revoke is for the in-process runtime: AGH's network has "
                             "no leave message, so over NATS a leave is silence")

    @property
    def leave_revokes(self) -> bool:
        """Whether a churning peer's leave is a revocation (else it goes silent)."""
        return (self.leave or ("silence" if self.transport == "nats" else "revoke")) == "revoke"
