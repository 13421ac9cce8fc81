"""Judges one NATS message as an AGH peer would, then answers in AGH's vocabulary.

Called from the daemon's event loop; never raises for bad bytes. By input:

- An envelope AGH's parser refuses (envelope.py, stricter than AGH where readers could
  disagree: repeated keys, deep nesting, non-ASCII padding), or bytes of no known form:
  audited `invalid_request` (action `unknown`), no answer (AGH answers none either).
- `greet`: presence. Trust (RFC 004): verified (v1 proof), unverified (no proof, and
  every v0 envelope: RFC 003 section 5.4), rejected (bad proof, or a handle without one:
  not applied). A verified card's `task.write` is granted only when the trust policy
  allows the key's fingerprint; unverified cards never grant it. Greets are counted in
  metrics by result and trust, never audited one by one. A greet is applied only if it is
  newer than the last one applied for that peer (greets.py, kept across restarts). A greet
  sent as a NATS request gets a `whois` response (the daemon's card; `ext` says whether
  the greet was applied) on the reply subject only.
- `whois` request for the daemon (addressed to it, or untargeted and matching its card):
  a `whois` response with the daemon's card on the asker's peer subject.
- `say` carrying our request ext key (taskmap.py) addressed to the daemon: a task request,
  judged only when it arrived on the daemon's own peer subject. Rejected trust, malformed
  fields: audited `invalid_request`. Otherwise judged by the runtime (a verified peer
  whose key the policy no longer allows is `capability_denied` at once), and answered with
  a `receipt`. Within its `ts` window a judged id is final (replay.py): a repeat gets the
  recorded outcome again (status `duplicate`), so a captured refusal never becomes a write.
- Anything else AGH knows (other says, capability, receipt, trace, our own greets):
  counted, ignored.
- The compact msgpack form (compact.py): the same trust and replay rules; the SPEC 7
  msgpack reply, signed by the daemon, goes to the NATS reply subject only.

Unproven traffic (budget.py: no verified identity, or a key the policy does not allow)
spends a global budget before any work is done for it; beyond the budget it is dropped and
counted, and one aggregated audit record per subject and `report_interval` says how many.
At most `max_in_flight` messages are judged at once; beyond that the daemon stops taking
messages from NATS, whose pending limits then push back (slow-consumer drops are counted
and reported the same way).

Receipts go to the sender's peer subject (unless its trust is `rejected`: a forger must
not make the daemon write onto its victim's subject) and to the NATS reply subject, only if
it is an `_INBOX.` one (`reply_target_allowed`). Every answer names
the exact request bytes it answers (`answers`), so a client can ignore one raced onto its
inbox for a forger's copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from task_ingress.actors.log import get_logger
from task_ingress.actors.rules import gate
from task_ingress.messages.audit import AuditRecord
from task_ingress.messages.codec import decode_envelope, encode_reply
from task_ingress.messages.outcomes import Outcome
from task_ingress.messages.peers import PeerCard
from task_ingress.messages.reasons import Action, Reason
from task_ingress.messages.requests import AnyRequest, IngressContext
from task_ingress.runtime.errors import PresenceRefused
from task_ingress.runtime.facade import IngressRuntime
from task_ingress.runtime.nats import envelope as wire
from task_ingress.runtime.nats import taskmap
from task_ingress.runtime.nats.budget import (
    SLOW_CONSUMER,
    UNPROVEN,
    DropKey,
    Dropped,
    DropTally,
    UnprovenBudget,
)
from task_ingress.runtime.nats.compact import (
    Compact,
    CompactError,
    decode_compact,
    evaluate_compact,
    sign_reply,
)
from task_ingress.runtime.nats.greets import GreetFile, GreetLedger, GreetMark
from task_ingress.runtime.nats.identity import PROFILE, Evaluation, Trust, evaluate, sign
from task_ingress.runtime.nats.limits import HandlerLimits
from task_ingress.runtime.nats.metrics import Metrics
from task_ingress.runtime.nats.offload import BatchOffload
from task_ingress.runtime.nats.policy import TrustPolicy
from task_ingress.runtime.nats.replay import JudgedWindow, Verdict, earlier_verdicts

Publish = Callable[[str, bytes], Awaitable[None]]
MAX_PENDING_WORK = 1024
"""Calls waiting for a worker thread; never reached while max_in_flight is below it."""
MAX_CHANNELS_SEEN = 1024
JUDGED_MEMORY = 2 * wire.MAX_REPLAY_AGE + 2
"""Seconds after judging that an envelope can still pass the `ts` window (one dated up to
300 s ahead stays fresh until 300 s after its `ts`)."""
INBOX_PREFIX = "_INBOX."


def reply_target_allowed(reply: str) -> bool:
    """May the daemon answer onto the NATS reply subject `reply` the sender chose?

    Only onto a NATS inbox (`_INBOX.…`), whoever the sender: never an AGH subject or any
    other application's on the shared server, or a sender could make the daemon publish,
    signed, wherever it aims. An inbox of another peer can still be named; its client
    ignores an answer that does not name its own request's bytes (`answers`), and under
    per-peer NATS users nobody else can read that inbox.
    """
    return reply.startswith(INBOX_PREFIX)


class EnvelopeHandler:
    """Everything between NATS bytes and the runtime for one daemon.

    `greets`: a greet ledger its owner built and loaded (a cluster shard's, whose marks are
    in the database); None: one kept in `limits.greet_file`, loaded here."""

    def __init__(self, *, runtime: IngressRuntime, policy: TrustPolicy, key: Ed25519PrivateKey,
                 peer_id: str, handle: str, publish: Publish, metrics: Metrics,
                 greet_interval: float, max_envelope_bytes: int = wire.MAX_ENVELOPE_BYTES,
                 workers: int = 8, on_channel: Callable[[str, str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 limits: HandlerLimits | None = None,
                 greets: GreetLedger | None = None) -> None:
        self.rt = runtime
        self.policy = policy
        self.key = key
        self.peer_id = peer_id
        self.my_handle = handle
        self.publish = publish
        self.metrics = metrics
        self.greet_interval = greet_interval
        self.max_bytes = max_envelope_bytes
        self.on_channel = on_channel or (lambda protocol, channel: None)
        self.clock = clock
        self.limits = limits or HandlerLimits()
        self.budget = UnprovenBudget(self.limits.unproven_rate, self.limits.unproven_burst,
                                     clock)
        self.dropped = DropTally()
        self.slots = asyncio.Semaphore(self.limits.max_in_flight)
        self.handling = 0
        self.peak_handling = 0
        if greets is None:  # the single daemon's: its file, read now
            greet_file = self.limits.greet_file
            greets = GreetLedger(
                GreetFile(greet_file, capacity=self.limits.greet_capacity)
                if greet_file is not None else None,
                greet_interval=greet_interval, capacity=self.limits.greet_capacity,
                clock=clock)
            greets.load()
        self.greets = greets
        # Refusals of a full window are remembered as long as an envelope can stay fresh:
        # 600 s for one dated 300 s ahead.
        self.judged = JudgedWindow(JUDGED_MEMORY,
                                   capacity=self.limits.replay_capacity,
                                   per_peer=self.limits.replay_per_peer, clock=clock)
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ingress-io")
        # Signature checks and answer signatures, off the event loop (offload.py).
        self.crypto = BatchOffload()
        self._pending_work = 0
        self._greets: dict[tuple[str, str, str], asyncio.Future[None]] = {}
        self._report_timer: asyncio.TimerHandle | None = None
        self._reports: set[asyncio.Task[None]] = set()
        self.channels_seen: set[tuple[str, str]] = set()
        self.log = get_logger(component="nats.daemon")

    def close(self) -> None:
        """Audit what was dropped since the last report, then stop the worker threads
        (after the daemon answered what was in flight)."""
        timer, self._report_timer = self._report_timer, None
        if timer is not None:
            timer.cancel()
        for dropped in self.dropped.take_all():
            try:
                self._audit_dropped(dropped)
            except Exception as exc:
                self.log.error("ingress.dropped_unaudited", count=dropped.count,
                               error=repr(exc))
        self.executor.shutdown(wait=True, cancel_futures=False)
        self.crypto.close()
        self.greets.close()

    def remember_judged(self, records: Iterable[AuditRecord]) -> int:
        """Make the verdicts an earlier run of the daemon audited final again (SPEC 5): a
        refusal captured before a restart must not be judged afresh after it. `records`:
        the audit of the last `JUDGED_MEMORY` seconds, oldest first; only task requests
        this handler would have put in its window count (not forged, dropped or malformed
        messages, which never were). Returns how many ids it remembers."""
        for key, verdict, lifetime in earlier_verdicts(records, JUDGED_MEMORY, time.time()):
            self.judged.seed(key, verdict, lifetime)
        return len(self.judged)

    def me(self, protocol: str) -> str:
        """The daemon's own peer ID on this protocol: plain on v0, its handle on v1."""
        return self.my_handle if protocol == wire.PROTOCOL_V1 else self.peer_id

    # ---- entry -------------------------------------------------------------------
    async def dispatch(self, subject: str, data: bytes, reply: str) -> asyncio.Task[None]:
        """Start judging one message as soon as one of `max_in_flight` slots is free.

        Waiting here holds up the NATS subscription's delivery, so its pending limits and
        slow-consumer handling push back instead of tasks piling up without bound. Tasks
        start in arrival order (asyncio runs new tasks FIFO)."""
        await self.slots.acquire()
        self.handling += 1
        if self.handling > self.peak_handling:
            self.peak_handling = self.handling
            self.metrics.handling_peak.set(self.handling)
        self.metrics.handling.set(self.handling)
        task = asyncio.create_task(self.handle(subject, data, reply))
        task.add_done_callback(self._release_slot)
        return task

    def _release_slot(self, _task: asyncio.Task[None]) -> None:
        self.handling -= 1
        self.metrics.handling.set(self.handling)
        self.slots.release()

    async def handle(self, subject: str, data: bytes, reply: str) -> None:
        """Judge one message and publish the answer(s); never raises for bad input."""
        started = time.perf_counter()
        where = wire.parse_subject(subject)
        if where is None:  # our subscriptions only match AGH subjects; be defensive anyway
            self.log.warning("envelope.bad_subject", subject=gate.safe_field(subject))
            return
        try:
            form = wire.wire_form(data)
            if form == "json":
                await self._handle_json(where, data, reply, started)
            elif form == "msgpack":
                await self._handle_compact(where, data, reply, started)
            elif self._admit_unproven(where, len(data)):
                self.metrics.malformed.inc()
                await self._reject(where.workspace, where.channel, "", "", Action.UNKNOWN,
                                   len(data), Reason.INVALID_REQUEST, Trust.UNVERIFIED,
                                   "unknown wire form")
        except Exception as exc:  # a bug: log it, audit it, never kill the serve loop
            self.log.error("envelope.handler_failed", error=repr(exc), subject=subject)
            with contextlib.suppress(Exception):
                if self._admit_unproven(where, len(data)):
                    await self._reject(where.workspace, where.channel, "", "", Action.UNKNOWN,
                                       len(data), Reason.INVALID_REQUEST, Trust.UNVERIFIED,
                                       f"not judged: {type(exc).__name__}")

    # ---- the unproven budget -------------------------------------------------------
    def _proven(self, judged: Evaluation) -> bool:
        """A verified identity whose key the operator vouches for (the trust policy)."""
        return judged.trust is Trust.VERIFIED and self.policy.allows(judged.fingerprint)

    def _admit_unproven(self, where: wire.Subject, size: int) -> bool:
        """Spend one unit of the unproven budget; False (dropped, counted) when spent."""
        if self.budget.take():
            return True
        self._count_drop(DropKey(UNPROVEN, where.workspace, where.channel,
                                 where.protocol.rsplit("/", 1)[1],
                                 "peer" if where.direct else "broadcast"), size)
        return False

    def note_transport_error(self, exc: Exception) -> bool:
        """Count a message the NATS client dropped (slow consumer); True when handled, so
        the daemon does not log each one."""
        if type(exc).__name__ != "SlowConsumerError":
            return False
        where = wire.parse_subject(str(getattr(exc, "subject", "")))
        if where is None:
            return False
        self._count_drop(DropKey(SLOW_CONSUMER, where.workspace, where.channel,
                                 where.protocol.rsplit("/", 1)[1],
                                 "peer" if where.direct else "broadcast"), 0)
        return True

    def _count_drop(self, key: DropKey, size: int) -> None:
        self.dropped.add(key, size)
        self.metrics.dropped.labels(key.cause).inc()
        if self._report_timer is None:
            loop = asyncio.get_running_loop()
            self._report_timer = loop.call_later(self.limits.report_interval,
                                                 self._start_report)

    def _start_report(self) -> None:
        self._report_timer = None
        task = asyncio.create_task(self.report_dropped())
        self._reports.add(task)
        task.add_done_callback(self._reports.discard)

    async def report_dropped(self) -> None:
        """One audit record per subject for what was dropped since the last report."""
        for dropped in self.dropped.take_all():
            self.log.warning("ingress.dropped", cause=dropped.key.cause,
                             workspace=gate.safe_field(dropped.key.workspace),
                             channel=gate.safe_field(dropped.key.channel),
                             subject=f"{dropped.key.protocol}.{dropped.key.where}",
                             count=dropped.count)
            try:
                await asyncio.get_running_loop().run_in_executor(
                    self.executor, self._audit_dropped, dropped)
            except Exception as exc:
                self.log.error("ingress.dropped_unaudited", count=dropped.count,
                               error=repr(exc))

    def _audit_dropped(self, dropped: Dropped) -> None:
        ctx = IngressContext(workspace=dropped.key.workspace, peer_id="",
                             channel=dropped.key.channel,
                             request_id=dropped.key.request_id(dropped.count),
                             trust=Trust.UNVERIFIED.value)
        self.rt.reject(ctx, Action.UNKNOWN, Reason.OVERLOADED, dropped.size)

    # ---- JSON --------------------------------------------------------------------
    async def _handle_json(self, where: wire.Subject, data: bytes, reply: str,
                           started: float) -> None:
        try:
            env = wire.parse_envelope(data, max_bytes=self.max_bytes,
                                      protocols=frozenset({where.protocol}))
            if (env.workspace_id, env.channel) != (where.workspace, where.channel):
                raise wire.EnvelopeError("workspace/channel differ from the subject",
                                         kind=env.kind, id=env.id, sender=env.sender,
                                         workspace=env.workspace_id, channel=env.channel)
        except wire.EnvelopeError as err:
            if self._admit_unproven(where, len(data)):
                self.metrics.malformed.inc()
                await self._reject(where.workspace, where.channel, err.sender, err.id,
                                   Action.UNKNOWN, len(data), Reason.INVALID_REQUEST,
                                   Trust.UNVERIFIED, err.detail)
            return
        if env.sender in (self.peer_id, self.my_handle):
            return  # our own greets echo back on the broadcast subject
        self._note_channel(env.protocol, env.channel)
        task_say = taskmap.is_task_say(env) and env.to == self.me(env.protocol)
        if env.kind not in ("greet", "whois") and not task_say:
            self.metrics.ignored.labels(env.kind).inc()
            return
        # Every message passes the crypto worker once, so all leave it in arrival order.
        judged = await self.crypto.run(_evaluate_json, env)
        proven = self._proven(judged)  # the one read of the trust policy for a task say
        if not proven and not self._admit_unproven(where, env.size):
            return
        self.metrics.judged(env.kind, judged.trust.value)
        answered = taskmap.answers(data)
        if env.kind == "greet":
            await self._greet(env, judged, reply, answered)
        elif env.kind == "whois":
            await self._whois(env, judged)
        else:
            await self._task_say(where, env, judged, reply, started, answered, proven)

    def _note_channel(self, protocol: str, channel: str) -> None:
        key = (protocol, channel)
        if key not in self.channels_seen and len(self.channels_seen) < MAX_CHANNELS_SEEN:
            self.channels_seen.add(key)
            self.on_channel(protocol, channel)

    def _reply_allowed(self, reply: str) -> bool:
        """An answer goes onto the NATS reply subject only where `reply_target_allowed`
        says; a refused one is counted."""
        if not reply:
            return False
        if not reply_target_allowed(reply):
            self.metrics.replies_refused.inc()
            return False
        return True

    # ---- presence ----------------------------------------------------------------
    async def _greet(self, env: wire.Envelope, judged: Evaluation, reply: str,
                     answered: str) -> None:
        if judged.trust is Trust.REJECTED:
            self.metrics.greets.labels("rejected", judged.trust.value).inc()
            self.log.warning("greet.rejected", peer_id=env.sender, channel=env.channel,
                             trust=judged.trust.value, reason=judged.detail)
            await self._answer_greet(env, reply, applied=False, why="rejected",
                                     trust=judged.trust, task_write=False, answered=answered)
            return
        key = (env.workspace_id, env.channel, env.sender)
        why_not = self.greets.judge(key, env.ts, env.id)
        if why_not is not None:  # an older greet, or one already applied: never again
            self.metrics.greets.labels(why_not, judged.trust.value).inc()
            await self._answer_greet(env, reply, applied=False, why=why_not,
                                     trust=judged.trust, task_write=False, answered=answered)
            return
        mark = self.greets.note(key, env.ts, env.id)
        card = env.body["peer_card"]
        capabilities = wire.card_capabilities(card)
        claims = gate.TASK_WRITE in capabilities
        granted = (claims and judged.trust is Trust.VERIFIED
                   and self.policy.allows(judged.fingerprint))
        name = card.get("display_name")
        peer = PeerCard(peer_id=env.sender, capabilities=capabilities,
                        display_name=wire.ascii_strip(name) if isinstance(name, str) else "",
                        proof=f"{PROFILE}:{judged.fingerprint}" if granted else "")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        previous = self._greets.get(key)
        self._greets[key] = done
        try:
            if previous is not None:  # greets of one peer apply in arrival order
                await asyncio.shield(previous)
            await self._in_worker(self._apply_greet, env, peer,
                                  judged.trust is Trust.VERIFIED, granted)
            applied, why = True, ""
            self.greets.applied(key, mark, granted=granted, fingerprint=judged.fingerprint)
        except PresenceRefused as exc:  # the runtime audited it already (action greet)
            applied, why = False, exc.reason.value
            self.greets.failed(key, mark)
        except Exception as exc:
            applied, why = False, "failed"
            self.greets.failed(key, mark)
            self.log.error("greet.failed", peer_id=env.sender, error=repr(exc))
        finally:
            done.set_result(None)
            if self._greets.get(key) is done:
                del self._greets[key]
        self.metrics.greets.labels("applied" if applied else "failed",
                                   judged.trust.value).inc()
        self.log.info("greet.applied" if applied else "greet.not_applied",
                      peer_id=env.sender, channel=env.channel, trust=judged.trust.value,
                      task_write=granted, claims_task_write=claims)
        await self._answer_greet(env, reply, applied=applied, why=why, trust=judged.trust,
                                 task_write=applied and granted, answered=answered)

    def _apply_greet(self, env: wire.Envelope, peer: PeerCard, persist: bool,
                     granted: bool) -> None:
        # Written before it takes effect: after a crash the file never knows less than
        # the runtime was told. Unverified greets never grant task.write: memory only.
        if persist:
            card = json.dumps([sorted(peer.capabilities), granted])
            self.greets.persist((env.workspace_id, env.channel, env.sender), env.ts, env.id,
                                card)
        self.rt.greet(env.workspace_id, env.channel, peer)

    async def _after_greets(self, workspace: str, channel: str, peer_id: str) -> None:
        # A write that arrives while its sender's greet is being applied waits for it.
        pending = self._greets.get((workspace, channel, peer_id))
        if pending is not None:
            await asyncio.shield(pending)

    def card(self, protocol: str) -> dict[str, Any]:
        """The daemon's peer card (AGH PeerCard, envelope.go:347) for this protocol."""
        return {
            "peer_id": self.me(protocol), "display_name": "task-ingress",
            "profiles_supported": [wire.PROTOCOL_V0, wire.PROTOCOL_V1, PROFILE],
            "capabilities": sorted(taskmap.ACTIONS),
            "artifacts_supported": [],
            "trust_modes_supported": [Trust.UNVERIFIED.value, Trust.VERIFIED.value],
            "ext": {taskmap.EXT_CARD: {
                "request_ext": taskmap.EXT_REQUEST, "result_ext": taskmap.EXT_RESULT,
                "v0_peer_id": self.peer_id, "v1_handle": self.my_handle}},
        }

    def greet_envelope(self, protocol: str, workspace: str, channel: str) -> dict[str, Any]:
        """The daemon's own greet (signed on v1), as AGH's PublishGreet builds one."""
        env = wire.build_envelope(
            kind="greet", protocol=protocol, workspace=workspace, channel=channel,
            sender=self.me(protocol), body={
                "peer_card": self.card(protocol),
                "summary": "task ingress: say a task request to this peer; "
                           "the answer is a receipt"})
        return sign(env, self.key) if protocol == wire.PROTOCOL_V1 else env

    async def _answer_greet(self, env: wire.Envelope, reply: str, *, applied: bool, why: str,
                            trust: Trust, task_write: bool, answered: str) -> None:
        # AGH greets expect no answer; only request/reply callers get one.
        if not self._reply_allowed(reply):
            return
        answer = self._whois_response(env, ext={taskmap.EXT_CARD + ".presence": {
            "applied": applied, "reason": why or None, "task_write": task_write,
            "trust": trust.value, "answers": answered}})
        await self.publish_envelope(reply, answer)

    # ---- whois -------------------------------------------------------------------
    async def _whois(self, env: wire.Envelope, judged: Evaluation) -> None:
        if wire.ascii_strip(env.body.get("type", "")) != "request" or (
                judged.trust is Trust.REJECTED):
            self.metrics.ignored.labels("whois").inc()
            return
        me = self.me(env.protocol)
        query = env.body.get("query")
        query = wire.ascii_strip(query) if isinstance(query, str) else ""
        card = self.card(env.protocol)
        matches = env.to == me or (env.to is None and (not query or query in (
            me, card["display_name"], *card["capabilities"], *card["profiles_supported"],
            *card["trust_modes_supported"])))  # peer.go:842
        if not matches:
            self.metrics.ignored.labels("whois").inc()
            return
        self.metrics.whois.inc()
        answer = self._whois_response(env)
        await self.publish_envelope(
            wire.peer_subject(env.workspace_id, env.channel, env.sender, env.protocol), answer)

    def _whois_response(self, env: wire.Envelope,
                        ext: dict[str, Any] | None = None) -> dict[str, Any]:
        # buildWhoisResponseEnvelope (router.go:818): to the asker, reply_to its id.
        obj = wire.build_envelope(
            kind="whois", protocol=env.protocol, workspace=env.workspace_id,
            channel=env.channel, sender=self.me(env.protocol), to=env.sender,
            reply_to=env.id, causation_id=env.id, trace_id=env.trace_id,
            body={"type": "response", "peer_card": self.card(env.protocol)}, ext=ext)
        return sign(obj, self.key) if env.protocol == wire.PROTOCOL_V1 else obj

    # ---- task requests -----------------------------------------------------------
    async def _task_say(self, where: wire.Subject, env: wire.Envelope, judged: Evaluation,
                        reply: str, started: float, answered: str, proven: bool) -> None:
        said = taskmap.read_task_say(env, self.me(env.protocol))
        if not where.direct:  # one reading for every relay: requests go to the daemon
            said = taskmap.TaskSay(said.action, None,
                                   "task requests travel on the daemon's peer subject")
        ctx = IngressContext(workspace=env.workspace_id, peer_id=env.sender,
                             channel=env.channel, request_id=env.id,
                             work_id=env.work_id or "", trace_id=env.trace_id or "",
                             causation_id=env.causation_id or "", trust=judged.trust.value)
        outcome, duplicate = await self._judge(ctx, said.action, said.request, env.size,
                                               judged, said.problem, env.ts, proven)
        receipt = taskmap.build_receipt(
            protocol=env.protocol, workspace=env.workspace_id, channel=env.channel,
            daemon=self.me(env.protocol), to=env.sender, for_id=env.id, work_id=env.work_id,
            trace_id=env.trace_id, outcome=outcome, trust=judged.trust.value,
            duplicate=duplicate, answered=answered)
        if env.protocol == wire.PROTOCOL_V1:
            receipt = await self.crypto.run(sign, receipt, self.key)
        if judged.trust is not Trust.REJECTED:
            await self.publish_envelope(
                wire.peer_subject(env.workspace_id, env.channel, env.sender, env.protocol),
                receipt)
        if self._reply_allowed(reply):
            await self.publish_envelope(reply, receipt)
        self._observe(outcome, judged.trust, started)

    async def _judge(self, ctx: IngressContext, action: Action, request: AnyRequest | None,
                     size: int, judged: Evaluation, problem: str, ts: int,
                     proven: bool) -> tuple[Outcome, bool]:
        """The outcome of one request and whether it repeats a judged id (replay window).

        `proven` is what the trust policy said of the sender's key when the message was
        admitted, in the same loop turn: nothing between that read and `_revoked` waits, so
        a second stat of the trust file could only see the same file a few microseconds
        later (a `trust remove` still holds for every message read after it)."""
        if judged.trust is Trust.REJECTED:
            return await self._reject(ctx.workspace, ctx.channel, ctx.peer_id, ctx.request_id,
                                      action, size, Reason.INVALID_REQUEST, judged.trust,
                                      judged.detail), False
        key = (ctx.workspace, ctx.channel, ctx.peer_id, ctx.request_id)
        earlier = self.judged.lookup(key)
        if earlier is not None:
            first = (Verdict.of(await asyncio.shield(earlier))
                     if isinstance(earlier, asyncio.Future) else earlier)
            if first.accepted and request is not None:
                return await self._submit(ctx, request), True  # the runtime replays it
            return await self._reject(ctx.workspace, ctx.channel, ctx.peer_id,
                                      ctx.request_id, action, size,
                                      first.reason or Reason.INVALID_REQUEST, judged.trust,
                                      "repeated id"), True
        if not self.judged.admit(key):  # full: refused, and that refusal is final too
            return await self._reject(ctx.workspace, ctx.channel, ctx.peer_id,
                                      ctx.request_id, action, size, Reason.OVERLOADED,
                                      judged.trust, "replay window full"), False
        mine: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        # Remembered while the envelope could pass the ts window (replayable), no longer.
        self.judged.start(key, mine, ts + wire.MAX_REPLAY_AGE + 2 - time.time())
        try:
            if request is None:
                outcome = await self._reject(ctx.workspace, ctx.channel, ctx.peer_id,
                                             ctx.request_id, action, size,
                                             Reason.INVALID_REQUEST, judged.trust, problem)
            elif self._revoked(ctx, judged, proven):
                outcome = await self._reject(ctx.workspace, ctx.channel, ctx.peer_id,
                                             ctx.request_id, action, size,
                                             Reason.CAPABILITY_DENIED, judged.trust,
                                             "key no longer allowed by the trust policy")
            else:
                outcome = await self._submit(ctx, request)
        except BaseException:
            self.judged.discard(key)
            mine.cancel()
            raise
        mine.set_result(outcome)
        self.judged.finish(key, Verdict.of(outcome))
        return outcome, False

    def _revoked(self, ctx: IngressContext, judged: Evaluation, proven: bool) -> bool:
        """A verified peer whose card was granted task.write while the policy allowed its
        key, visible by the daemon's own record, and whose key the policy now refuses
        (`proven` False: the policy's answer for this message)."""
        if judged.trust is not Trust.VERIFIED:
            return False
        mark: GreetMark | None = self.greets.get((ctx.workspace, ctx.channel, ctx.peer_id))
        if mark is None or not mark.granted or mark.applied_at is None:
            return False
        if self.clock() - mark.applied_at >= 2 * self.greet_interval:
            return False  # expired: let the runtime say peer_not_found
        return not proven

    async def _submit(self, ctx: IngressContext, request: AnyRequest) -> Outcome:
        await self._after_greets(ctx.workspace, ctx.channel, ctx.peer_id)
        self.metrics.in_flight.inc()
        try:
            return await self.rt.asubmit(ctx, request)
        except Exception as exc:  # timeout or runtime closed: the outcome is unknown
            self.log.error("submit.failed", request_id=gate.safe_field(ctx.request_id),
                           error=repr(exc))
            return Outcome.rejected(gate.safe_field(ctx.request_id), request.action,
                                    Reason.TASK_INGRESS_UNAVAILABLE)
        finally:
            self.metrics.in_flight.dec()

    # ---- compact msgpack ---------------------------------------------------------
    async def _handle_compact(self, where: wire.Subject, data: bytes, reply: str,
                              started: float) -> None:
        try:
            compact = decode_compact(data)
        except CompactError as err:
            if self._admit_unproven(where, len(data)):
                outcome = await self._reject(where.workspace, where.channel, err.sender, "",
                                             Action.UNKNOWN, len(data),
                                             Reason.INVALID_REQUEST, Trust.UNVERIFIED,
                                             f"compact: {err}")
                await self._answer_compact(reply, data, outcome, Trust.UNVERIFIED, started)
            return
        decoded = decode_envelope(compact.inner, self.max_bytes)
        judged = await self.crypto.run(_evaluate_compact, compact, where)
        if judged.trust is not Trust.REJECTED:
            if not gate.is_peer_id(compact.sender):
                judged = Evaluation(Trust.REJECTED, "compact: from is malformed")
            elif compact.to not in (self.peer_id, self.my_handle):
                judged = Evaluation(Trust.REJECTED, "compact: not addressed to the daemon")
            elif abs(time.time() - compact.ts) > wire.MAX_REPLAY_AGE:
                judged = Evaluation(Trust.REJECTED, "compact: ts outside the replay window")
        proven = self._proven(judged)  # the one read of the trust policy for this message
        if not proven and not self._admit_unproven(where, len(data)):
            return
        self.metrics.judged("compact", judged.trust.value)
        if decoded.request is None and judged.trust is not Trust.REJECTED:
            # Judged as the runtime's own wire path would (deliver): same reason and size.
            outcome = await self._reject(where.workspace, where.channel, compact.sender,
                                         decoded.request_id, decoded.action, decoded.size,
                                         decoded.rejection or Reason.INVALID_REQUEST,
                                         judged.trust, "compact: unreadable request")
            await self._answer_compact(reply, data, outcome, judged.trust, started)
            return
        ctx = IngressContext(workspace=where.workspace, peer_id=compact.sender,
                             channel=where.channel, request_id=decoded.request_id,
                             trust=judged.trust.value)
        outcome, _ = await self._judge(ctx, decoded.action, decoded.request, len(data),
                                       judged, judged.detail, compact.ts, proven)
        await self._answer_compact(reply, data, outcome, judged.trust, started)

    async def _answer_compact(self, reply: str, request: bytes, outcome: Outcome, trust: Trust,
                              started: float) -> None:
        if self._reply_allowed(reply):  # compact replies never go onto AGH subjects
            signed = await self.crypto.run(sign_reply, encode_reply(outcome), request, self.key)
            await self.publish(reply, signed)
        self._observe(outcome, trust, started)

    # ---- rejections and publishing -----------------------------------------------
    async def _in_worker(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self._pending_work >= MAX_PENDING_WORK:
            raise OverflowError("presence/rejection workers saturated")
        self._pending_work += 1
        self.metrics.pending_presence.inc()
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self.executor, lambda: fn(*args, **kwargs))
        finally:
            self._pending_work -= 1
            self.metrics.pending_presence.dec()

    async def _reject(self, workspace: str, channel: str, peer_id: str, request_id: str,
                      action: Action, size: int, reason: Reason, trust: Trust,
                      detail: str) -> Outcome:
        """Audit a rejection the transport decided (SPEC 6: every bad input is audited)."""
        self.log.info("envelope.rejected", workspace=gate.safe_field(workspace),
                      channel=gate.safe_field(channel), peer_id=gate.safe_field(peer_id),
                      request_id=gate.safe_field(request_id), action=action.value,
                      outcome="rejected", reason=reason.value, trust=trust.value,
                      detail=detail)
        ctx = IngressContext(workspace=workspace, peer_id=peer_id, channel=channel,
                             request_id=request_id, trust=trust.value)
        try:
            outcome: Outcome = await self._in_worker(self.rt.reject, ctx, action, reason, size)
            return outcome
        except Exception as exc:
            self.log.error("envelope.reject_failed", error=repr(exc))
            return Outcome.rejected(gate.safe_field(request_id), action,
                                    Reason.TASK_INGRESS_UNAVAILABLE)

    async def publish_envelope(self, subject: str, obj: dict[str, Any]) -> None:
        """Publish an envelope only if AGH's rules accept it (as router.go:867 does)."""
        data = wire.encode_json(obj)
        try:
            wire.validate_object(obj, size=len(data), protocols=frozenset({obj["protocol"]}))
            if len(data) > wire.AGH_MAX_ENVELOPE_BYTES:
                raise wire.EnvelopeError("larger than AGH's 1 MiB")
        except wire.EnvelopeError as err:
            self.metrics.unsendable.inc()
            self.log.error("envelope.unsendable", kind=obj.get("kind"), detail=err.detail)
            return
        await self.publish(subject, data)

    def _observe(self, outcome: Outcome, trust: Trust, started: float) -> None:
        self.metrics.observe_request(outcome.action.value, outcome.accepted,
                                     outcome.reason.value if outcome.reason else None,
                                     trust.value, time.perf_counter() - started)


def _evaluate_json(env: wire.Envelope) -> Evaluation:
    # RFC 003 section 5.4: v0 proofs are opaque, every v0 message is unverified.
    if env.protocol == wire.PROTOCOL_V1:
        return evaluate(env.raw)
    return Evaluation(Trust.UNVERIFIED, "v0")


def _evaluate_compact(compact: Compact, where: wire.Subject) -> Evaluation:
    return evaluate_compact(compact, workspace=where.workspace, channel=where.channel)
