"""Judges one NATS message: greet -> presence, task envelope -> runtime, anything else -> audit.

Called from the daemon's event loop; never raises for bad bytes. What happens, by input:

- JSON greet, signed by `from`'s enrolled key: `rt.greet` with the card (proof = the
  signature, so a `task.write` claim is granted). Unsigned, forged or malformed: not
  applied, audited `invalid_request` (action `unknown`). A greet id already seen from that
  peer within the replay window is dropped (no refresh; logged, counted, not audited).
- JSON task envelope (`task.create|update|cancel|run.enqueue`) `to` the daemon, signed by
  `from`: `await rt.asubmit`. Envelope id = request ID, so a replayed id gets the
  runtime's durable idempotency (accepted: the first outcome again, audited as a replay;
  rejected: judged afresh). Bad signature or body: audited `invalid_request`.
- Compact msgpack: same identity rules; the inner SPEC §7 envelope goes to the runtime.
- Other valid AGH kinds (say, whois, ...): not ours, ignored (counted). Anything else,
  garbage included: audited `invalid_request`.

Replies go to the verified sender's peer subject and to the message's reply subject;
rejections of unverified envelopes only to the reply subject (a forger must not make the
daemon write onto its victim's subject).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError
from task_ingress.actors.log import get_logger
from task_ingress.actors.rules import gate
from task_ingress.messages.codec import decode_envelope, encode_reply
from task_ingress.messages.outcomes import Outcome
from task_ingress.messages.peers import PeerCard
from task_ingress.messages.reasons import Action, Reason
from task_ingress.messages.requests import REQUEST_BY_ACTION, AnyRequest, IngressContext
from task_ingress.runtime.errors import PresenceRefused
from task_ingress.runtime.facade import IngressRuntime
from task_ingress.runtime.nats import envelope as wire
from task_ingress.runtime.nats.compact import CompactError, decode_compact
from task_ingress.runtime.nats.metrics import Metrics
from task_ingress.runtime.nats.replay import SeenWindow
from task_ingress.runtime.nats.signing import (
    b64url,
    compact_signing_bytes,
    proof_signature,
    sign_envelope,
    verify,
    verify_envelope,
)
from task_ingress.runtime.nats.trust import TrustStore

Publish = Callable[[str, bytes], Awaitable[None]]
MAX_PENDING_WORK = 1024
"""Greets and rejections waiting for a worker thread; beyond this they are shed (logged)."""


class EnvelopeHandler:
    """Everything between NATS bytes and the runtime for one daemon."""

    def __init__(self, *, runtime: IngressRuntime, trust: TrustStore, key: Ed25519PrivateKey,
                 peer_id: str, publish: Publish, metrics: Metrics,
                 max_envelope_bytes: int = wire.MAX_ENVELOPE_BYTES, workers: int = 8,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rt = runtime
        self.trust = trust
        self.key = key
        self.peer_id = peer_id
        self.publish = publish
        self.metrics = metrics
        self.max_bytes = max_envelope_bytes
        self.seen_greets = SeenWindow(clock=clock)
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ingress-io")
        self._pending_work = 0
        self._greets: dict[tuple[str, str, str], asyncio.Future[None]] = {}
        self.log = get_logger(component="nats.daemon")

    def close(self) -> None:
        """Stop the worker threads (after the daemon answered what was in flight)."""
        self.executor.shutdown(wait=True, cancel_futures=False)

    # ---- entry -------------------------------------------------------------------
    async def handle(self, subject: str, data: bytes, reply: str) -> None:
        """Judge one message and publish the answer(s); never raises for bad input."""
        started = time.perf_counter()
        where = wire.parse_subject(subject)
        if where is None:  # our subscriptions only match v0 subjects; be defensive anyway
            self.log.warning("envelope.bad_subject", subject=gate.safe_field(subject))
            return
        try:
            form = wire.wire_form(data)
            if form == "json":
                await self._handle_json(where, data, reply, started)
            elif form == "msgpack":
                await self._handle_compact(where, data, reply, started)
            else:
                outcome = await self._reject(where.workspace, where.channel, "", "",
                                             Action.UNKNOWN, len(data), "unknown wire form")
                await self._answer_json(where, None, outcome, reply, started)
        except Exception as exc:  # a bug: log it, never kill the serve loop
            self.log.error("envelope.handler_failed", error=repr(exc), subject=subject)

    # ---- JSON --------------------------------------------------------------------
    async def _handle_json(self, where: wire.Subject, data: bytes, reply: str,
                           started: float) -> None:
        try:
            env = wire.parse_envelope(data, max_bytes=self.max_bytes)
        except wire.EnvelopeError as err:
            action = _action(err.kind)
            outcome = await self._reject(where.workspace, where.channel, err.sender, err.id,
                                         action, len(data), err.detail)
            await self._answer_json(where, None, outcome, reply, started)
            return
        if env.kind == wire.KIND_GREET:
            await self._greet(where, env, reply)
        elif env.kind in wire.TASK_KINDS:
            await self._task_json(where, env, reply, started)
        elif env.kind in wire.AGH_KINDS or env.kind in (wire.KIND_TASK_RESULT,
                                                        wire.KIND_GREET_RESULT):
            self.metrics.ignored.labels(env.kind).inc()
        else:
            outcome = await self._reject(env.workspace_id, env.channel, env.sender, env.id,
                                         Action.UNKNOWN, env.size, "unknown kind")
            await self._answer_json(where, None, outcome, reply, started)

    def _mismatch(self, where: wire.Subject, env: wire.Envelope) -> str:
        if (env.workspace_id, env.channel) != (where.workspace, where.channel):
            return "workspace/channel differ from the subject"
        return ""

    def _signed_by_sender(self, env: wire.Envelope) -> bool:
        key = self.trust.lookup(env.sender)
        return key is not None and verify_envelope(env.raw, key)

    async def _greet(self, where: wire.Subject, env: wire.Envelope, reply: str) -> None:
        problem = self._mismatch(where, env)
        card: wire.GreetCard | None = None
        if not problem:
            try:
                card = wire.greet_card(env)
            except wire.EnvelopeError as err:
                problem = err.detail
        if not problem and not self._signed_by_sender(env):
            problem = "missing or invalid signature"
        if problem or card is None:
            self.metrics.greets.labels("rejected").inc()
            await self._reject(env.workspace_id, env.channel, env.sender, env.id,
                               Action.UNKNOWN, env.size, "greet: " + problem)
            await self._answer_greet(env, reply, applied=False,
                                     reason=Reason.INVALID_REQUEST.value)
            return
        if self.seen_greets.seen((env.sender, env.id)):
            self.metrics.greets.labels("duplicate").inc()
            self.log.info("greet.duplicate", peer_id=env.sender, id=gate.safe_field(env.id))
            await self._answer_greet(env, reply, applied=False, reason="duplicate")
            return
        signature = proof_signature(env.proof)
        peer = PeerCard(peer_id=card.peer_id, display_name=card.display_name,
                        capabilities=card.capabilities, proof=b64url(signature or b""))
        key = (env.workspace_id, env.channel, env.sender)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        previous = self._greets.get(key)
        self._greets[key] = done
        try:
            if previous is not None:  # greets of one peer apply in arrival order
                await asyncio.shield(previous)
            await self._in_worker(self.rt.greet, env.workspace_id, env.channel, peer)
            applied, reason = True, ""
        except PresenceRefused as exc:  # the runtime audited it already (action greet)
            applied, reason = False, exc.reason.value
        except ValueError as exc:
            applied, reason = False, Reason.INVALID_REQUEST.value
            await self._reject(env.workspace_id, env.channel, env.sender, env.id,
                               Action.UNKNOWN, env.size, f"greet: {exc}")
        except Exception as exc:
            applied, reason = False, Reason.TASK_INGRESS_UNAVAILABLE.value
            self.log.error("greet.failed", peer_id=env.sender, error=repr(exc))
        finally:
            done.set_result(None)
            if self._greets.get(key) is done:
                del self._greets[key]
        self.metrics.greets.labels("applied" if applied else "failed").inc()
        await self._answer_greet(env, reply, applied=applied, reason=reason,
                                 task_write=applied and gate.TASK_WRITE in card.capabilities)

    async def _after_greets(self, workspace: str, channel: str, peer_id: str) -> None:
        # A write that arrives while its sender's greet is being applied waits for it.
        pending = self._greets.get((workspace, channel, peer_id))
        if pending is not None:
            await asyncio.shield(pending)

    async def _task_json(self, where: wire.Subject, env: wire.Envelope, reply: str,
                         started: float) -> None:
        action = Action(env.kind)
        problem = self._mismatch(where, env)
        if not problem and env.to != self.peer_id:
            problem = "task envelopes must be addressed to the daemon"
        if not problem and not self._signed_by_sender(env):
            problem = "missing or invalid signature"
        verified = not problem  # from here on the sender is proven
        request: AnyRequest | None = None
        if verified:
            try:
                request = REQUEST_BY_ACTION[action].model_validate(env.body)
            except (ValidationError, TypeError, ValueError, RecursionError):
                problem = "body does not fit the request"
        if request is None:
            outcome = await self._reject(env.workspace_id, env.channel, env.sender, env.id,
                                         action, env.size, problem)
            await self._answer_json(where, env if verified else None, outcome, reply, started)
            return
        ctx = IngressContext(
            workspace=env.workspace_id, peer_id=env.sender, channel=env.channel,
            request_id=env.id, work_id=env.work_id or "", trace_id=env.trace_id or "",
            causation_id=env.causation_id or "",
        )
        outcome = await self._submit(ctx, request)
        await self._answer_json(where, env, outcome, reply, started)

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
            outcome = await self._reject(where.workspace, where.channel, err.sender, "",
                                         Action.UNKNOWN, len(data), f"compact: {err}")
            await self._answer_compact(where, "", outcome, reply, started)
            return
        decoded = decode_envelope(compact.inner, self.max_bytes)
        problem = ""
        if compact.to != self.peer_id:
            problem = "compact: not addressed to the daemon"
        elif abs(time.time() - compact.ts) > wire.MAX_REPLAY_AGE:
            problem = "compact: ts outside the replay window"
        else:
            key = self.trust.lookup(compact.sender)
            signed = compact_signing_bytes(
                workspace=where.workspace, channel=where.channel, sender=compact.sender,
                to=compact.to, ts=compact.ts, inner=compact.inner)
            if key is None or not verify(key, compact.signature, signed):
                problem = "compact: missing or invalid signature"
        if problem:
            outcome = await self._reject(where.workspace, where.channel, compact.sender,
                                         decoded.request_id, decoded.action, len(data), problem)
            await self._answer_compact(where, "", outcome, reply, started)
            return
        if decoded.request is None:
            # The runtime's own wire path audits it with the right reason and size.
            raw = await self._in_worker(self.rt.deliver, compact.inner,
                                        workspace=where.workspace, channel=where.channel,
                                        peer_id=compact.sender)
            await self._publish_reply(where, compact.sender, raw, reply)
            self.metrics.observe_request(decoded.action.value, False, decoded.rejection,
                                         time.perf_counter() - started)
            return
        ctx = IngressContext(workspace=where.workspace, peer_id=compact.sender,
                             channel=where.channel, request_id=decoded.request_id)
        outcome = await self._submit(ctx, decoded.request)
        await self._answer_compact(where, compact.sender, outcome, reply, started)

    # ---- rejections and replies --------------------------------------------------
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
                      action: Action, size: int, detail: str) -> Outcome:
        """Audit a rejection the transport decided (SPEC §6: every bad input is audited)."""
        self.log.info("envelope.rejected", workspace=gate.safe_field(workspace),
                      channel=gate.safe_field(channel), peer_id=gate.safe_field(peer_id),
                      request_id=gate.safe_field(request_id), action=action.value,
                      detail=detail)
        ctx = IngressContext(workspace=workspace, peer_id=peer_id, channel=channel,
                             request_id=request_id)
        try:
            outcome: Outcome = await self._in_worker(self.rt.reject, ctx, action,
                                                     Reason.INVALID_REQUEST, size)
            return outcome
        except Exception as exc:
            self.log.error("envelope.reject_failed", error=repr(exc))
            return Outcome.rejected(gate.safe_field(request_id), action,
                                    Reason.TASK_INGRESS_UNAVAILABLE)

    async def _answer_json(self, where: wire.Subject, env: wire.Envelope | None,
                           outcome: Outcome, reply: str, started: float) -> None:
        body = {
            "request_id": outcome.request_id, "action": outcome.action.value,
            "accepted": outcome.accepted,
            "reason": outcome.reason.value if outcome.reason else None,
            "task_id": outcome.task_id, "run_id": outcome.run_id, "replay": outcome.replay,
        }
        to = env.sender if env is not None else None
        message = wire.build_envelope(
            kind=wire.KIND_TASK_RESULT, workspace=where.workspace, channel=where.channel,
            sender=self.peer_id, body=body, to=to,
            reply_to=(env.id if env is not None else None) or (outcome.request_id or None),
            trace_id=env.trace_id if env is not None else None,
            causation_id=env.id if env is not None else None,
        )
        raw = wire.encode_json(sign_envelope(message, self.key))
        await self._publish_reply(where, to or "", raw, reply)
        self.metrics.observe_request(outcome.action.value, outcome.accepted,
                                     outcome.reason.value if outcome.reason else None,
                                     time.perf_counter() - started)

    async def _answer_compact(self, where: wire.Subject, sender: str, outcome: Outcome,
                              reply: str, started: float) -> None:
        await self._publish_reply(where, sender, encode_reply(outcome), reply)
        self.metrics.observe_request(outcome.action.value, outcome.accepted,
                                     outcome.reason.value if outcome.reason else None,
                                     time.perf_counter() - started)

    async def _answer_greet(self, env: wire.Envelope, reply: str, *, applied: bool,
                            reason: str, task_write: bool = False) -> None:
        if not reply:  # AGH greets expect no answer; only request/reply callers get one
            return
        message = wire.build_envelope(
            kind=wire.KIND_GREET_RESULT, workspace=env.workspace_id, channel=env.channel,
            sender=self.peer_id, to=env.sender, reply_to=env.id, causation_id=env.id,
            body={"applied": applied, "reason": reason or None, "task_write": task_write},
        )
        await self.publish(reply, wire.encode_json(sign_envelope(message, self.key)))

    async def _publish_reply(self, where: wire.Subject, sender: str, raw: bytes,
                             reply: str) -> None:
        if sender and gate.is_peer_id(sender):
            await self.publish(wire.peer_subject(where.workspace, where.channel, sender), raw)
        if reply:
            await self.publish(reply, raw)


def _action(kind: str) -> Action:
    return Action(kind) if kind in wire.TASK_KINDS else Action.UNKNOWN
