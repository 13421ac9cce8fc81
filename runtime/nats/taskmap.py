"""Task requests in AGH's vocabulary, and their answers as AGH receipts (pure functions).

A request is a `say` on the `direct` surface between the peer and the daemon (AGH's
deterministic `direct_id` of the pair), `to` the daemon, opening work (`work_id`), with the
action as `body.intent` and the SPEC 5 fields under one namespaced ext key (RFC 004
section 5.1). The envelope `id` is the request ID. The answer is a `receipt` in the same
room and work: `for_id` = the request's id, a registered status and reason code, SPEC 6's
reason in `detail`, and the whole outcome under our ext key. docs/wire-protocol.md has the
table.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from task_ingress.messages.outcomes import Outcome
from task_ingress.messages.reasons import Action, Reason
from task_ingress.messages.requests import REQUEST_BY_ACTION, AnyRequest
from task_ingress.runtime.nats import envelope as wire

EXT_REQUEST = "dev.task-ingress.request"
EXT_RESULT = "dev.task-ingress.result"
EXT_CARD = "dev.task-ingress.card"
ACTIONS = frozenset(a.value for a in REQUEST_BY_ACTION)

AGH_REASON: dict[Reason, str] = {
    # SPEC 6 reason -> AGH's registry (envelope.go:117). AGH has no authorization code:
    # `detail` and the ext result carry the exact SPEC reason.
    Reason.INVALID_REQUEST: "malformed",
    Reason.VALIDATION_FAILED: "malformed",
    Reason.PEER_NOT_FOUND: "not_found",
    Reason.TASK_NOT_FOUND: "not_found",
    Reason.CAPABILITY_DENIED: "verification_failed",
    Reason.PERMISSION_DENIED: "verification_failed",
    Reason.CHANNEL_MISMATCH: "work_container_mismatch",
    Reason.STALE_CHANNEL: "work_container_mismatch",
    Reason.TASK_INGRESS_UNAVAILABLE: "busy",
    Reason.OVERLOADED: "busy",
    Reason.TASK_INGRESS_FAILED: "internal",
}


@dataclass(frozen=True)
class TaskSay:
    """A say that asks the daemon for a task action; `problem` is why it cannot be judged."""

    action: Action
    request: AnyRequest | None
    problem: str = ""


def is_task_say(env: wire.Envelope) -> bool:
    """True for a say that carries our request ext key (anything else is chat: ignored)."""
    return env.kind == "say" and EXT_REQUEST in env.ext


def read_task_say(env: wire.Envelope, daemon: str) -> TaskSay:
    """The action and typed request of a task say, or why it is malformed."""
    intent = env.body.get("intent")
    intent = wire.ascii_strip(intent) if isinstance(intent, str) else ""
    action = Action(intent) if intent in ACTIONS else Action.UNKNOWN
    problem = ""
    if action is Action.UNKNOWN:
        problem = "intent is not a task action"
    elif env.to != daemon:
        problem = "task requests must be addressed to the daemon"
    elif env.surface != "direct" or env.direct_id != expected_room(env, daemon):
        problem = "task requests travel in the direct room of the peer and the daemon"
    elif env.work_id is None:
        problem = "task requests open work: work_id is required"
    if problem:
        return TaskSay(action, None, problem)
    fields = env.ext.get(EXT_REQUEST)
    try:
        request = REQUEST_BY_ACTION[action].model_validate(fields)
    except (ValidationError, TypeError, ValueError, RecursionError):
        return TaskSay(action, None, "request fields do not fit the action")
    return TaskSay(action, request)


def expected_room(env: wire.Envelope, daemon: str) -> str | None:
    """AGH's direct room id of (sender, daemon) in the envelope's workspace and channel."""
    try:
        return wire.direct_id(env.workspace_id, env.channel, env.sender, daemon)
    except ValueError:
        return None


def receipt_work_id(env_id: str, work_id: str | None) -> str:
    """The request's work_id; for a request without one (rejected) a stable stand-in."""
    if work_id:
        return work_id
    return "work_" + hashlib.sha256(env_id.encode()).hexdigest()[:32]


def receipt_status(outcome: Outcome, duplicate: bool) -> tuple[str, str | None]:
    """(status, reason_code) of a receipt for `outcome` (registered values only)."""
    if duplicate or outcome.replay:
        return "duplicate", "duplicate"
    if outcome.accepted:
        return "accepted", None
    return "rejected", AGH_REASON.get(outcome.reason or Reason.TASK_INGRESS_FAILED, "internal")


def answers(request: bytes) -> str:
    """Which request an answer is for: `sha256:<hex>` of the exact bytes received, so a
    client can tell its own answer from one the daemon gave a forger's copy."""
    return "sha256:" + hashlib.sha256(request).hexdigest()


def result_ext(outcome: Outcome, trust: str, duplicate: bool = False,
               answered: str = "") -> dict[str, Any]:
    """The outcome under our ext key: what the receipt cannot say in AGH's words."""
    return {EXT_RESULT: {
        "request_id": outcome.request_id, "action": outcome.action.value,
        "accepted": outcome.accepted,
        "reason": outcome.reason.value if outcome.reason else None,
        "task_id": outcome.task_id, "run_id": outcome.run_id,
        "replay": outcome.replay or duplicate, "trust": trust, "answers": answered,
    }}


def build_receipt(*, protocol: str, workspace: str, channel: str, daemon: str, to: str,
                  for_id: str, work_id: str | None, trace_id: str | None,
                  outcome: Outcome, trust: str, duplicate: bool = False,
                  status: tuple[str, str | None] | None = None,
                  answered: str = "") -> dict[str, Any]:
    """An unsigned receipt envelope answering request `for_id` of `to` (router.go:1186);
    `answered` names the request's bytes (`answers`)."""
    state, code = status or receipt_status(outcome, duplicate)
    body: dict[str, Any] = {"for_id": for_id, "status": state}
    if code is not None:
        body["reason_code"] = code
    if outcome.reason is not None:
        body["detail"] = outcome.reason.value
    return wire.build_envelope(
        kind="receipt", protocol=protocol, workspace=workspace, channel=channel,
        sender=daemon, to=to, surface="direct", work_id=receipt_work_id(for_id, work_id),
        reply_to=for_id, causation_id=for_id, trace_id=trace_id, body=body,
        ext=result_ext(outcome, trust, duplicate, answered))


def build_request(*, protocol: str, workspace: str, channel: str, sender: str, daemon: str,
                  request: AnyRequest, request_id: str, work_id: str | None = None,
                  trace_id: str | None = None, text: str = "") -> dict[str, Any]:
    """An unsigned task say (client side): the mapping read_task_say undoes."""
    action = request.action.value
    fields = request.model_dump(mode="json", exclude_none=True)
    return wire.build_envelope(
        kind="say", protocol=protocol, workspace=workspace, channel=channel, sender=sender,
        to=daemon, surface="direct", work_id=work_id or "work_" + request_id[:123],
        trace_id=trace_id, env_id=request_id,
        body={"text": text or f"{action} request", "intent": action, "artifacts": []},
        ext={EXT_REQUEST: fields})


def outcome_from_receipt(obj: dict[str, Any]) -> dict[str, Any]:
    """A receipt envelope's outcome as the client prints it (SPEC 9)."""
    ext = obj.get("ext")
    result = ext.get(EXT_RESULT) if isinstance(ext, dict) else None
    if not isinstance(result, dict):
        raw_body = obj.get("body")
        body: dict[str, Any] = raw_body if isinstance(raw_body, dict) else {}
        return {"accepted": body.get("status") == "accepted", "reason": body.get("detail"),
                "task_id": None, "run_id": None, "request_id": body.get("for_id")}
    return {key: result.get(key) for key in ("accepted", "reason", "task_id", "run_id",
                                             "request_id", "replay", "trust")}
