"""The internal actor protocol: messages that only actors and the runtime facade exchange.

Flow of one request (one `ask`-equivalent per request; each stage forwards):
driver -SubmitBatch-> IngressRouter -InFlights-> ChannelIngress -InFlights-> Presence
-InFlights-> Capability -InFlights-> TaskStore -Verdicts-> Audit -Replies-> driver, and
Audit -Dones-> router -Dones-> ChannelIngress so the channel takes its next messages
(one Replies and one Dones per destination per group commit).
Each hop carries a batch (per channel up to Presence, which merges the channels' batches
on to the store; per commit after it).
Rejections leave the pipeline early and go straight to Audit as Verdicts.

The messages built once per request or per batch on that path (`Submission`, `InFlight`,
`Verdict`, `Replied` and their batch containers, and the chain lease's two) are plain
frozen slotted classes (`messages/frozen.py`: no per-field type check, built only by our
own code from edge-validated parts); the rest are strict pydantic models.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import Field
from task_ingress.messages.audit import CHECKPOINT_EVERY, CHECKPOINT_SECONDS, AuditRecord
from task_ingress.messages.base import InternalMessage
from task_ingress.messages.frozen import FrozenMessage
from task_ingress.messages.limits import SPEC_LIMITS, Limits
from task_ingress.messages.outcomes import Outcome, Run, Task
from task_ingress.messages.peers import PeerCard
from task_ingress.messages.reasons import Action, Reason
from task_ingress.messages.requests import AnyRequest, IngressContext

MAX_BATCH = 256
"""Default of the most requests the driver hands to the actors in one message."""
CHANNEL_PIPELINE = 32
"""Default of the admitted requests of one channel in flight at once."""
CHANNEL_ACTOR = "task_ingress.actors.ingress.ChannelIngress"
"""Dotted name of the production channel actor (created by the router, one per channel)."""
STORE_ACTOR = "task_ingress.actors.task_store.TaskStore"
"""Dotted name of the production TaskStore (created and supervised by the router)."""
PG_STORE_ACTOR = "task_ingress.actors.pg_task_store.PgTaskStore"
"""Dotted name of the TaskStore of a runtime on PostgreSQL (`database_url`)."""
AUDIT_ACTOR = "task_ingress.actors.audit.Audit"
"""Dotted name of the production Audit actor (SQLite chain beside the store)."""
PG_AUDIT_ACTOR = "task_ingress.actors.pg_audit.PgAudit"
"""Dotted name of the Audit actor of a runtime on PostgreSQL (one chain per shard)."""
MAX_CHANNELS = 4096
"""Default of the most (workspace, channel) pairs with a channel actor at once."""
MAX_CHANNELS_PER_PEER = 64
"""Default of the most (workspace, channel) pairs one peer ID is visible in at once."""


class Settings(InternalMessage):
    """Runtime settings every actor needs; plain data so it crosses process boundaries."""

    store_path: str = Field(description="Resolved SQLite file path (never ':memory:').")
    durable: bool = Field(description="Durable replies (Audit FULL, the store NORMAL: one fsync "
                          "per batch); OFF for throwaway stores.")
    local_peer_id: str
    greet_interval: float
    tasks_enabled: bool
    limits: Limits = Field(default=SPEC_LIMITS, description="Payload limits the gate judges by.")
    max_batch: int = MAX_BATCH
    channel_pipeline: int = Field(default=CHANNEL_PIPELINE,
                                  description="Requests in flight per channel.")
    max_channels: int = Field(default=MAX_CHANNELS, description=(
        "Channel actors the router keeps at once; a greet for one more is overloaded."))
    max_channels_per_peer: int = Field(default=MAX_CHANNELS_PER_PEER, description=(
        "Channels one peer ID may be visible in; a greet for one more is overloaded."))
    checkpoint_every: int = CHECKPOINT_EVERY
    checkpoint_seconds: float = CHECKPOINT_SECONDS
    audit_key: str = Field(default="", description="Hex audit key (records, checkpoints).")
    # Actors by dotted class name: a multiprocess base creates them in child processes.
    channel_actor_class: str = Field(default=CHANNEL_ACTOR,
                                     description="The router's channel actors.")
    store_actor_class: str = Field(default=STORE_ACTOR, description="The router's TaskStore.")
    store_proxy_class: str = Field(default="", description=(
        "An actor between Capability and TaskStore ('' = none; the tests' Hold)."))
    audit_actor_class: str = Field(default=AUDIT_ACTOR, description="The Audit actor.")
    # Cluster mode (PostgreSQL): the store and audit write only under this lease holding.
    database_url: str = Field(default="", description="PostgreSQL URL ('' = SQLite store).")
    fence: tuple[int, str, int] | None = Field(default=None, description=(
        "(shard, owner, epoch) every write and audit transaction is fenced by."))
    database_idle_timeout: float = Field(default=1.0, description=(
        "idle_in_transaction_session_timeout of the store's sessions, seconds."))


class Wiring(InternalMessage):
    """Tells an actor its settings and the addresses of the shared actors; reply `Started`."""

    ticket: int
    settings: Settings
    presence: Any = None
    capability: Any = None
    store: Any = None
    audit: Any = None


class Started(InternalMessage):
    """Reply to `Wiring`: the actor is configured (and, for I/O actors, its database is open)."""

    ticket: int
    error: str = ""
    address: Any = Field(default=None, description="The router's: the TaskStore it started.")
    shards: int = Field(default=0, description=(
        "A PostgreSQL TaskStore's: the cluster's shard count (0: not sharded)."))


class Submission(FrozenMessage):
    """One request handed to the router, stamped by the driver with its clock reading."""

    ticket: int
    context: IngressContext
    request: AnyRequest | None
    action: Action
    payload_size: int
    now: float
    preset: Reason | None = None
    """Rejection decided before the gate."""
    checked: bool = False
    """True only when its builder trimmed `context` and found rule 1 holds for it
    (`gate.checked_context`): the router then takes both as they are rather than trim and
    check the same identifiers again. Only the runtime's edge (`IngressRuntime`) sets it;
    a submission built any other way is checked by the router."""


class PresenceChange(InternalMessage):
    """A greet (card given) or leave (card None) for one (workspace, channel, peer)."""

    ticket: int
    workspace: str
    channel: str
    peer_id: str
    card: PeerCard | None
    now: float
    payload_size: int = Field(default=0, description="The card's encoded size (audit).")

    @property
    def action(self) -> Action:
        """The audit action a refusal of this change is recorded under."""
        return Action.LEAVE if self.card is None else Action.GREET

    def refused(self, reason: Reason) -> Submission:
        """This change as a submission already rejected for `reason`: how a refused greet or
        leave is audited and answered, by the same path as any rejected request (the
        record's request ID is empty: a presence change has none)."""
        context = IngressContext(workspace=self.workspace, peer_id=self.peer_id,
                                 channel=self.channel, request_id="")
        return Submission(ticket=self.ticket, context=context, request=None,
                          action=self.action, payload_size=self.payload_size, now=self.now,
                          preset=reason)


class SubmitBatch(FrozenMessage):
    """Everything the driver found waiting, sent as one message so the store can group-commit."""

    items: tuple[Submission | PresenceChange, ...]


class InFlight(FrozenMessage):
    """A submission travelling the gate pipeline with the addresses needed to answer it."""

    submission: Submission
    context: IngressContext
    """Trimmed, grammar-checked context."""
    reply_to: Any
    router: Any = None
    """The router's address, for an admitted request: Audit reports its ticket done there
    and the router frees the channel actor's slot (the one edge against the flow)."""
    checked: bool = False
    """The router found the context grammatical (rule 1): later stages need not check it
    again."""


class InFlights(FrozenMessage):
    """Admitted requests travelling a hop together, in arrival order: one channel's up to
    Presence, which merges the channels' batches before Capability.

    One message per hop per batch, not per request: each send is a dispatch (and on
    multiprocess bases a pickle and a pipe write between processes)."""

    items: tuple[InFlight, ...]
    dones: tuple[int, ...] = ()
    """Router to a channel actor only: tickets of the channel answered since the router
    last told it, to be taken as a `Dones` before the items (the router holds a channel's
    `Dones` back while nothing there waits for them, and sends them with its next work)."""


class Verdict(FrozenMessage):
    """A judged request on its way to Audit; `outbox_id` marks a committed mutation."""

    flight: InFlight
    outcome: Outcome
    outbox_id: int | None = None


class ChainLease(FrozenMessage):
    """Audit to TaskStore: the chain's head, lent for ONE batch (docs/durability.md).

    The store chains its batch's records from (`seq`, `head`) in the batch's own
    transaction and gives the lease back, advanced, with the batch's `Verdicts`. Audit
    commits nothing while a lease is out, so the chain has one writer at a time."""

    lease_id: int
    seq: int
    head: str


class LeaseWanted(FrozenMessage):
    """TaskStore to Audit: it has requests to commit; lend it the chain (`ChainLease`)."""

    lease_id: int


class LeaseDropped(InternalMessage):
    """TaskStore to Audit, at shutdown: the lease asked for will not be used."""

    lease_id: int


class Verdicts(FrozenMessage):
    """Judged requests on their way to Audit as one message, in order: one store commit's,
    or the rejections (and failures) one actor decided for one batch."""

    items: tuple[Verdict, ...]
    lease: ChainLease | None = None
    """A lease given back (TaskStore): the head after its batch; the same lease when
    nothing was chained."""
    chained: bool = False
    """The items' records were committed by the store under `lease`: durable already."""


class Replied(FrozenMessage):
    """Audit's answer to the driver: the outcome of ticket, durable in the audit log."""

    ticket: int
    outcome: Outcome


class Replies(FrozenMessage):
    """Audit's answers to one caller from one group commit, in commit order.

    One message per commit instead of one per request: every send costs a dispatch (and on
    multiprocess bases a pickle and a pipe write)."""

    items: tuple[Replied, ...]


class Dones(FrozenMessage):
    """The tickets one group commit finished (Audit -> router -> each channel actor)."""

    tickets: tuple[int, ...]


class PresenceApplied(InternalMessage):
    """A presence change has taken effect for every later request of its channel."""

    ticket: int


class Flush(InternalMessage):
    """Self-message: commit what is buffered. Arrives behind everything already queued."""


class Sweep(InternalMessage):
    """The housekeeping tick (bounded memory): driver -> router, which frees idle channel
    actors (`Retire`) and passes it on -> Presence, which drops entries expired by `now`.

    Answered once everything is done: the router answers the driver's `ticket` with
    `ChannelCount`; Presence's part is acknowledged (via Capability, `Swept`) to `reply_to`
    under the router's own sweep number."""

    now: float
    ticket: int = 0
    reply_to: Any = Field(default=None, description="Where Presence's part is acknowledged.")


class CardsExpired(InternalMessage):
    """Presence to Capability: these peers' visibility expired; drop their cards (memory).

    Sent behind every request Presence already let through, so no admitted request of
    those peers still needs its card; a later greet brings a new card along the same path.
    With `reply_to`, Capability then answers `Swept(ticket=sweep)` there (the router)."""

    keys: tuple[tuple[str, str, str], ...]
    sweep: int = 0
    peers: int = Field(default=0, description="Presence entries left after this sweep.")
    reply_to: Any = None


class Swept(InternalMessage):
    """Capability to the router: a sweep's expiries are applied; what both still hold."""

    ticket: int
    peers: int
    cards: int


class ChannelCount(InternalMessage):
    """Router to driver, the answer to a `Sweep` (the timer's or `IngressRuntime.sweep()`'s):
    what the runtime holds once it is done; -1 for parts that did not answer in time."""

    ticket: int
    channel_actors: int
    peers: int
    cards: int


class Retire(InternalMessage):
    """Router -> idle ChannelIngress -> Presence: may this channel actor be stopped?

    The channel actor passes it on only with nothing queued or in flight (else it answers
    `Retired(vacant=False)` itself), behind every presence change it forwarded; Presence
    answers whether any peer is still visible in the channel at `now`. The router stops
    the actor only if it sent it nothing since (`nonce`) — docs/race-freedom.md."""

    workspace: str
    channel: str
    nonce: int = Field(description="The router's send counter when it sent this.")
    sweep: int
    now: float
    reply_to: Any


class Retired(InternalMessage):
    """Answer to `Retire`: `vacant` when the channel actor was idle and no peer is visible."""

    workspace: str
    channel: str
    nonce: int
    sweep: int
    vacant: bool


class CountEntries(InternalMessage):
    """Ask Presence or Capability how many peers it holds state for; reply `EntryCount`."""

    ticket: int


class EntryCount(InternalMessage):
    """Reply to CountEntries."""

    ticket: int
    entries: int


class GetTask(InternalMessage):
    """Ask the store for a task; reply `TaskFound`."""

    ticket: int
    workspace: str
    task_id: str
    reply_to: Any = None


class TaskFound(InternalMessage):
    """Reply to GetTask."""

    ticket: int
    task: Task | None


class GetRun(InternalMessage):
    """Ask the store for a run; reply `RunFound`."""

    ticket: int
    workspace: str
    run_id: str
    reply_to: Any = None


class RunFound(InternalMessage):
    """Reply to GetRun."""

    ticket: int
    run: Run | None


class LockTask(InternalMessage):
    """Operator command: lock (or unlock) a task against network writes; reply `TaskLocked`."""

    ticket: int
    workspace: str
    task_id: str
    locked: bool
    reply_to: Any = None


class TaskLocked(InternalMessage):
    """Reply to LockTask: whether the task existed."""

    ticket: int
    found: bool


class ReadAudit(InternalMessage):
    """Ask Audit for every committed record (or those written at or after `since`, unix
    seconds); reply `AuditRead`."""

    ticket: int
    since: float = 0.0


class AuditRead(InternalMessage):
    """Reply to ReadAudit, records in commit order."""

    ticket: int
    records: tuple[AuditRecord, ...]


class QueryFailed(InternalMessage):
    """Reply to any query that raised; the facade turns it into an exception."""

    ticket: int
    error: str


class PresenceFlight(InternalMessage):
    """A presence change travelling ChannelIngress -> Presence -> Capability."""

    change: PresenceChange
    reply_to: Any


class Probe(InternalMessage):
    """Marker the router sends down Presence -> Capability -> TaskStore -> Audit after a
    channel actor died; each stage passes it on only after everything it received before.
    When Audit returns it (`ProbeDone`), any request of the dead channel still unanswered
    never left that actor: it is lost and gets `task_ingress_failed`."""

    probe_id: int
    reply_to: Any


class Drained(InternalMessage):
    """An outcome committed for a store that died before reporting it: an accepted write
    Audit chained from the outbox, or any record the store chained under a lease."""

    workspace: str
    channel: str
    peer_id: str
    request_id: str
    action: str
    task_id: str | None
    run_id: str | None
    reason: str | None = Field(default=None, description="The rejection's; None: accepted.")
    replay: bool = False

    @classmethod
    def from_record(cls, fields: Mapping[str, Any]) -> Drained:
        """The outcome a record's fields state (an audit row's, or an outbox row's)."""
        return cls(workspace=fields["workspace"], channel=fields["channel"],
                   peer_id=fields["peer_id"], request_id=fields["request_id"],
                   action=fields["action"], task_id=fields["task_id"], run_id=fields["run_id"],
                   reason=fields["reason"], replay=bool(fields["replay"]))

    @property
    def key(self) -> tuple[str, str, str, str]:
        """Whose request, as its record names it (`auditlog.record_key`)."""
        return (self.workspace, self.channel, self.peer_id, self.request_id)

    def outcome(self, request_id: str, action: Action) -> Outcome:
        """The outcome recorded, as the answer to the request it names."""
        return Outcome(request_id=request_id, action=action, accepted=self.reason is None,
                       reason=None if self.reason is None else Reason(self.reason),
                       task_id=self.task_id, run_id=self.run_id, replay=self.replay)


class ProbeDone(InternalMessage):
    """Audit's answer to a Probe: everything sent before it has been answered; `drained`
    lists accepted writes whose verdicts a dead store never sent (found in the outbox)."""

    probe_id: int
    drained: tuple[Drained, ...] = ()


class ProbeSuspects(InternalMessage):
    """A channel actor's answer to a Probe: its requests sent on before the probe."""

    probe_id: int
    tickets: tuple[int, ...]


class Rewire(InternalMessage):
    """Router to Capability: the TaskStore was restarted at this address."""

    store: Any
