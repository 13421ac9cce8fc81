"""RuntimeConfig: the embedding contract's settings (SPEC §7), with safe defaults."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, fields

from task_ingress.actors.rules.shards import Fence
from task_ingress.messages.limits import CARD_LIMITS, SPEC_LIMITS, CardLimits, Limits
from task_ingress.messages.protocol import (
    CHANNEL_ACTOR,
    CHANNEL_PIPELINE,
    MAX_BATCH,
    MAX_CHANNELS,
    MAX_CHANNELS_PER_PEER,
    STORE_ACTOR,
)
from task_ingress.runtime.flow import FlowLimits

_FLOW = FlowLimits()  # the admission defaults live in one place: FlowLimits
PROCESS_MODES = ("inprocess", "pipeline")
DEFAULT_LINGER = 0.002
"""`batch_linger` in-process, when not given. 2 ms rather than 1: sixteen closed-loop
callers sharing the driver's interpreter take ~1.6 ms to all send again, so at 1 ms the
batches averaged 11 and the driver paid its per-batch cost more often (bench, 7 pairs
alternating 1 and 2 ms: 1.66x -> 1.84x the lock baseline, median; half-peak p99 6.9-10.4
ms -> 6.7-8.9 ms; docs/benchmarks.md). Longer (4, 8 ms) gained nothing more."""


@dataclass(frozen=True)
class RuntimeConfig:
    """Settings of one IngressRuntime. The first six fields are SPEC §7's, defaults included.

    Limits may be lowered, never raised above SPEC's defaults (the gate enforces both).
    """

    store_path: str = ":memory:"
    actor_base: str = "simpleSystemBase"
    local_peer_id: str = "local"
    greet_interval: float = 30.0
    clock: Callable[[], float] = time.monotonic
    tasks_enabled: bool = True
    # --- beyond SPEC §7 ---
    process_mode: str = "inprocess"
    """Where the actors run. "inprocess" (the default): on the runtime's own driver thread,
    in this process. "pipeline": all six actors (simpleSystemBase) alone in a pipeline
    process of their own, batches over a pipe; the callers never share an interpreter
    with the SQLite writer, so the two sides use two cores (README, "Process modes"). Same
    API, answers and guarantees; in-process stays the default because it starts in
    milliseconds rather than ~0.4 s, adds no process, and lets tests reach the actors
    in-process (monkeypatching, log capture)."""
    durable: bool = True
    """File stores: a reply means the write and its audit are on disk (the store commits
    with synchronous=NORMAL, Audit with FULL, one fsync per batch: docs/durability.md)."""
    request_timeout: float = 30.0
    """Seconds a caller waits for an answer before `IngressTimeout` is raised."""
    max_in_flight_total: int = _FLOW.max_total
    """Requests admitted and unanswered, all channels; excess is rejected `overloaded`."""
    max_in_flight_per_channel: int = _FLOW.max_per_channel
    """Requests admitted and unanswered in one (workspace, channel)."""
    max_in_flight_per_peer: int = _FLOW.max_per_peer
    """Requests admitted and unanswered of one peer in one channel: a flooder cannot fill
    more than this share of its channel's slots and starve well-behaved peers."""
    peer_rate: float = _FLOW.peer_rate
    """Per-peer token-bucket refill, requests/second (by the injected clock); 0 disables.
    The default is above what one runtime judges per second (a few thousand on 2 cores),
    so it stops only floods; a daemon facing untrusted peers should set its own (README,
    Operating)."""
    peer_burst: float = _FLOW.peer_burst
    """Per-peer token-bucket size: requests a quiet peer may send at once."""
    greet_rate: float = _FLOW.greet_rate
    """Per-peer greet budget refill, greets/second (by the injected clock); 0 disables. A
    greet over budget is refused `overloaded` (audited, card not applied). An AGH peer
    re-greets each of its channels every greet_interval / 2."""
    greet_burst: float = _FLOW.greet_burst
    """Per-peer greet budget size: greets a quiet peer may send at once (joining channels)."""
    max_channels: int = MAX_CHANNELS
    """(workspace, channel) pairs with a channel actor at once; a greet for one more is
    refused `overloaded`. Idle actors (no visible peer, nothing queued or in flight) are
    stopped by the sweep."""
    max_channels_per_peer: int = MAX_CHANNELS_PER_PEER
    """(workspace, channel) pairs one peer ID may be visible in at once; a greet for one
    more is refused `overloaded` (re-greets of its channels always pass)."""
    # Peer-card limits: a greet whose card breaks one is refused `invalid_request`.
    max_card_capabilities: int = CARD_LIMITS.max_capabilities
    max_capability_chars: int = CARD_LIMITS.max_capability_chars
    max_display_name_chars: int = CARD_LIMITS.max_display_name_chars
    max_proof_bytes: int = CARD_LIMITS.max_proof_bytes
    max_batch: int = MAX_BATCH
    """Most requests the driver hands to the actors in one message."""
    batch_linger: float | None = None
    """Seconds the driver may wait for callers it has just answered to send again, so their
    requests share the next group commit (waiting at most 0.2 ms for each next one; only
    while fewer have come back than were answered). 0 = send what is there at once.
    None: 2 ms in-process (DEFAULT_LINGER), 0 in pipeline mode, where the pipeline process
    takes whatever has arrived each time it is free and a lingering driver only left it
    idle (bench peak, 2 pairs: 1,779 and 1,997 req/s lingering, 2,184 and 2,576 not)."""
    channel_pipeline: int = CHANNEL_PIPELINE
    """Admitted requests of one channel in flight at once (arrival order is kept; a presence
    change still waits for all of them). 1 = strictly one request at a time, end to end.
    More in flight means bigger store/audit group commits."""
    audit_key: str | None = None
    """Hex audit key (HMAC of every record and checkpoint); None: env TASK_INGRESS_AUDIT_KEY
    or the key file beside the store (created if missing); ":memory:": a throwaway key."""
    # Payload limits (SPEC §2): each may be lowered, never raised (`Limits` refuses it).
    max_title_chars: int = SPEC_LIMITS.max_title_chars
    max_description_bytes: int = SPEC_LIMITS.max_description_bytes
    max_metadata_entries: int = SPEC_LIMITS.max_metadata_entries
    max_metadata_bytes: int = SPEC_LIMITS.max_metadata_bytes
    max_envelope_bytes: int = SPEC_LIMITS.max_envelope_bytes
    channel_actor_class: str = CHANNEL_ACTOR
    """Dotted name of the channel actor class (a ChannelIngress). Test seam: the race tests
    name task_ingress.testing.NaiveChannelIngress, which has no fence."""
    store_actor_class: str = STORE_ACTOR
    """Dotted name of the TaskStore class. Test seam: the race tests name
    task_ingress.testing.NaiveTaskStore, a check-then-act store."""
    store_proxy_class: str = ""
    """Dotted name of an actor put between Capability and TaskStore ('' = none). Test seam:
    the race tests name task_ingress.testing.Hold, which holds requests before the store."""

    # --- cluster mode (docs/cluster.md) ---
    database_url: str = ""
    """PostgreSQL URL ('' = the SQLite store at `store_path`). When set, the TaskStore and
    Audit actors are PostgreSQL ones, `store_path` is not used, every write and audit
    transaction is fenced by `fence`, and the audit key must be given (`audit_key` or
    env TASK_INGRESS_AUDIT_KEY). Needs psycopg (the `cluster` extra) and a database set up
    for cluster mode (`runtime/cluster/pg_leases.ensure_schema`)."""
    fence: Fence | None = None
    """The lease holding this runtime writes under (required with `database_url`): its
    shard, owner and epoch. A request for a workspace of another shard, and every write or
    audit once the lease row names another owner or epoch, is answered
    `task_ingress_unavailable`; a deposed runtime never appends to the shard's chain."""
    database_idle_timeout: float = 1.0
    """Seconds PostgreSQL lets a store session sit idle inside a transaction before it ends
    it (a paused holder must not keep the lease row locked past a takeover): keep it
    below half the lease TTL."""

    def __post_init__(self) -> None:
        if bool(self.database_url) != (self.fence is not None):
            raise ValueError("database_url and fence go together: a PostgreSQL runtime writes "
                             "only under a lease holding, and only it has one")
        if self.database_idle_timeout <= 0:
            raise ValueError("database_idle_timeout must be positive")
        _ = self.limits  # raises ValueError for a limit above its SPEC ceiling
        if not 0 <= self.linger <= 0.1:
            raise ValueError(f"batch_linger must be in 0..0.1 seconds, got {self.batch_linger}")
        if self.process_mode not in PROCESS_MODES:
            raise ValueError(f"process_mode must be one of {PROCESS_MODES}, got "
                             f"{self.process_mode!r}")
        if self.process_mode == "pipeline" and self.actor_base != "simpleSystemBase":
            raise ValueError("process_mode='pipeline' runs the actors on simpleSystemBase")
        if self.greet_interval <= 0:
            raise ValueError("greet_interval must be positive")
        if min(self.max_in_flight_total, self.max_in_flight_per_channel,
               self.max_in_flight_per_peer) < 1:
            raise ValueError("in-flight caps must be at least 1")
        if min(self.max_channels, self.max_channels_per_peer) < 1:
            raise ValueError("channel caps must be at least 1")
        if min(self.peer_rate, self.peer_burst, self.greet_rate, self.greet_burst) < 0:
            raise ValueError("rates and bursts must not be negative")
        _ = self.card_limits  # raises ValueError for a card limit below 1

    @property
    def linger(self) -> float:
        """`batch_linger`, or its default for the process mode."""
        if self.batch_linger is not None:
            return self.batch_linger
        return 0.0 if self.process_mode == "pipeline" else DEFAULT_LINGER

    @property
    def limits(self) -> Limits:
        """The payload limits these fields set, as the gate reads them."""
        return Limits(**{f.name: getattr(self, f.name) for f in fields(Limits)})

    @property
    def card_limits(self) -> CardLimits:
        """The peer-card limits these fields set, as `gate.check_card` reads them."""
        return CardLimits(max_capabilities=self.max_card_capabilities,
                          max_capability_chars=self.max_capability_chars,
                          max_display_name_chars=self.max_display_name_chars,
                          max_proof_bytes=self.max_proof_bytes)
