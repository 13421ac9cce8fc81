"""The gate's pure rules (SPEC §2 grammar, §4 checks 1, 5, 7-10), free of actors and I/O.

Each check returns the `Reason` that rejects, or None to let the request continue; the
actors call them in SPEC order. Identifiers are checked after trimming surrounding
ASCII whitespace (never NBSP or other Unicode spaces, so "peer-b\\u00a0" is not read as
"peer-b"); `fullmatch` with ASCII classes so a trailing newline or a Unicode look-alike
never passes (Python's `$` would accept "peer\\n").
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Protocol

from task_ingress.messages.limits import CardLimits, Limits
from task_ingress.messages.peers import PeerCard
from task_ingress.messages.reasons import Reason
from task_ingress.messages.requests import (
    AnyRequest,
    CancelTask,
    CreateTask,
    EnqueueRun,
    IngressContext,
    UpdateTask,
)

PEER_ID_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}")
# AGH RFC 004 section 4.4: a verified handle, nickname@fingerprint (32 lowercase hex of sha256).
HANDLE_RE = re.compile(r"[a-z0-9_-]{1,32}@[0-9a-f]{32}")
# AGH's ValidateWorkspaceID (validate.go:118) plus SPEC 2: 1-128 chars, no '.', space, '*',
# '>', '/', '\\' or control characters (C0, DEL, C1); any case (real IDs are uppercase ULIDs).
WORKSPACE_RE = re.compile(r"[^. *>/\\\x00-\x1f\x7f-\x9f\u2028\u2029]{1,128}")
CHANNEL_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
CAPABILITY_RE = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*")
MAX_ID_CHARS = 128
# The request-ID rule as one compiled pattern (run on every request, several times per
# request before this was a regex): 1-128 chars, no slashes, no C0/DEL/C1 controls, no
# line/paragraph separators.
REQUEST_ID_RE = re.compile(r"[^/\\\x00-\x1f\x7f-\x9f\u2028\u2029]{1,128}")
TASK_WRITE = "task.write"
MAX_PRIORITY = 100
WHITESPACE = " \t\n\r\x0b\x0c"
"""What surrounding identifiers is trimmed: ASCII whitespace only."""

# Keys the runtime writes into task metadata; payload values under these names are replaced.
TRUSTED_ACTOR_KEY = "ingress.actor"
TRUSTED_ORIGIN_KEY = "ingress.origin"
TRUSTED_REQUEST_KEY = "ingress.request_id"


class TaskFacts(Protocol):
    """What rules 9-10 read of a stored task: a `StoredTask`, or the store's own row
    (store_batch.TaskRow), which it judges as it is rather than copy into one per request."""

    @property
    def status(self) -> str:
        """'open' or 'canceled'."""
        ...

    @property
    def version(self) -> int:
        """The task's version."""
        ...

    @property
    def locked(self) -> int:
        """Truthy when the operator locked the task."""
        ...


@dataclass(frozen=True)
class StoredTask:
    """The facts about a stored task that rules 6-10 judge."""

    workspace: str
    network_channel: str
    status: str
    version: int
    locked: bool


def is_peer_id(value: str) -> bool:
    """True when `value` (already trimmed) is a peer ID: AGH v0 form or a verified handle."""
    return PEER_ID_RE.fullmatch(value) is not None or HANDLE_RE.fullmatch(value) is not None


def is_workspace(value: str) -> bool:
    """True when `value` (already trimmed) is a grammatical workspace ID (SPEC 2)."""
    return WORKSPACE_RE.fullmatch(value) is not None


def is_channel(value: str) -> bool:
    """True when `value` is a grammatical channel (or workspace) name."""
    return CHANNEL_RE.fullmatch(value) is not None


def is_request_id(value: str) -> bool:
    """True for a non-empty ID of at most 128 chars without slashes or control characters."""
    return REQUEST_ID_RE.fullmatch(value) is not None


def trim(value: str) -> str:
    """`value` without surrounding ASCII whitespace."""
    return value.strip(WHITESPACE)


def normalize_context(ctx: IngressContext) -> IngressContext:
    """Trim every identifier, as the grammar is checked after trimming."""
    w, p, c, r = ctx.workspace, ctx.peer_id, ctx.channel, ctx.request_id
    wk, tr, ca = ctx.work_id, ctx.trace_id, ctx.causation_id
    if (trim(w) == w and trim(p) == p and trim(c) == c and trim(r) == r
            and trim(wk) == wk and trim(tr) == tr and trim(ca) == ca):
        return ctx  # the common case: nothing to trim, no new model to build
    return IngressContext(
        workspace=trim(w), peer_id=trim(p), channel=trim(c), request_id=trim(r),
        work_id=trim(wk), trace_id=trim(tr), causation_id=trim(ca), trust=ctx.trust,
    )


def check_context(ctx: IngressContext) -> Reason | None:
    """Rule 1: workspace, peer, channel and request ID present and grammatical."""
    return None if _grammatical(normalize_context(ctx)) else Reason.INVALID_REQUEST


def checked_context(ctx: IngressContext) -> tuple[IngressContext, bool]:
    """`ctx` trimmed (`normalize_context`), and whether rule 1 holds for it
    (`check_context`), trimming once: what the runtime's edge works out for every request,
    so that the router can take both as they are (`Submission.checked`)."""
    ctx = normalize_context(ctx)
    return ctx, _grammatical(ctx)


def _grammatical(ctx: IngressContext) -> bool:
    """Rule 1 on a context already trimmed."""
    return (
        is_workspace(ctx.workspace)
        and is_peer_id(ctx.peer_id)
        and is_channel(ctx.channel)
        and is_request_id(ctx.request_id)
        and _optional_ok(ctx.work_id) and _optional_ok(ctx.trace_id)
        and _optional_ok(ctx.causation_id)
    )


def _optional_ok(value: str) -> bool:
    """Optional IDs (work, trace, causation; already trimmed) follow the request-ID rule
    when set."""
    return value == "" or REQUEST_ID_RE.fullmatch(value) is not None


def check_presence(workspace: str, channel: str, peer_id: str) -> Reason | None:
    """Rule 1 for a greet or leave (trimmed identifiers): workspace, channel and peer ID
    grammatical. A presence change has no request ID."""
    ok = is_workspace(workspace) and is_channel(channel) and is_peer_id(peer_id)
    return None if ok else Reason.INVALID_REQUEST


def grants_write(capabilities: list[str], proof: str) -> bool:
    """Rule 4: the card claims `task.write` and backs it with a non-empty proof."""
    return TASK_WRITE in (c.strip() for c in capabilities) and proof.strip() != ""


def is_capability(value: str) -> bool:
    """True when `value` (already trimmed) is a lowercase dotted capability name (SPEC §2)."""
    return CAPABILITY_RE.fullmatch(value) is not None


def check_card(card: PeerCard, limits: CardLimits) -> Reason | None:
    """What a greet may make the runtime hold: at most `max_capabilities` names, each a
    grammatical capability (after trimming) of at most `max_capability_chars`; a display
    name and a proof within their sizes (proof in UTF-8 bytes). Else `invalid_request`.

    A card is held until its peer leaves or expires, so an unchecked one is memory a peer
    can grow at will (one key once grew a daemon by 750 MB with 60 KB capability lists).
    """
    caps = card.capabilities
    ok = (
        len(caps) <= limits.max_capabilities
        and all(len(c.strip()) <= limits.max_capability_chars and is_capability(c.strip())
                for c in caps)
        and len(card.display_name) <= limits.max_display_name_chars
        and len(card.proof) <= limits.max_proof_bytes  # chars <= bytes: skips most encodes
        and len(card.proof.encode()) <= limits.max_proof_bytes
    )
    return None if ok else Reason.INVALID_REQUEST


def requested_channel(request: AnyRequest) -> str | None:
    """The channel a request asks for, or None when it asks for none."""
    if isinstance(request, CancelTask):
        return None
    if isinstance(request, UpdateTask):
        return request.network_channel
    return request.network_channel


def check_requested_channel(request: AnyRequest, ingress_channel: str) -> Reason | None:
    """Rule 5: a requested channel is empty or ours; malformed is invalid, foreign mismatched."""
    wanted = requested_channel(request)
    if wanted is None:
        return None
    wanted = wanted.strip()
    if wanted == "" or wanted == ingress_channel:
        return None
    if not is_channel(wanted):
        return Reason.INVALID_REQUEST
    return Reason.CHANNEL_MISMATCH


def is_rebind_only(request: AnyRequest, ingress_channel: str) -> bool:
    """True for an update that only clears the binding or binds it to the ingress channel."""
    if not isinstance(request, UpdateTask) or request.network_channel is None:
        return False
    untouched = request.title is None and request.description is None and request.metadata is None
    return untouched and request.network_channel.strip() in ("", ingress_channel)


def check_binding(task_channel: str, ingress_channel: str, request: AnyRequest) -> Reason | None:
    """Rules 7-8: a bound task is mutated only from its channel; a stale binding only repaired.

    A binding that fails today's grammar is stale (rule 8) and is not compared with the
    ingress channel (rule 7): the only write allowed is one that clears or re-binds it.
    """
    if task_channel == "":
        return None
    if not is_channel(task_channel):
        return None if is_rebind_only(request, ingress_channel) else Reason.STALE_CHANNEL
    if task_channel != ingress_channel:
        return Reason.CHANNEL_MISMATCH
    return None


def check_payload(request: AnyRequest, limits: Limits) -> Reason | None:
    """Rule 9: task-domain validation of the payload (sizes counted in UTF-8 bytes)."""
    ok = True
    if isinstance(request, CreateTask):
        ok = (
            _title_ok(request.title, limits)
            and _description_ok(request.description, limits)
            and _metadata_ok(request.metadata, limits)
            and (request.priority is None or 0 <= request.priority <= MAX_PRIORITY)
        )
    elif isinstance(request, UpdateTask):
        ok = (
            is_request_id(request.task_id.strip())
            and (request.title is None or _title_ok(request.title, limits))
            and (request.description is None or _description_ok(request.description, limits))
            and _metadata_ok(request.metadata, limits)
            and (request.expected_version is None or request.expected_version >= 1)
        )
    elif isinstance(request, CancelTask):
        ok = len(request.reason.encode()) <= limits.max_description_bytes
    elif isinstance(request, EnqueueRun):
        key = request.idempotency_key.strip()
        ok = key != "" and is_request_id(key)
    return None if ok else Reason.VALIDATION_FAILED


def check_version(request: AnyRequest, task: TaskFacts) -> Reason | None:
    """Rule 9, store side: an `expected_version` that is not current is a stale write."""
    stale = (
        isinstance(request, UpdateTask)
        and request.expected_version is not None
        and request.expected_version != task.version
    )
    return Reason.VALIDATION_FAILED if stale else None


def authorize(request: AnyRequest, task: TaskFacts) -> Reason | None:
    """Rule 10: the task domain's own authorization of a network actor.

    Documented rules: a task the operator locked accepts no network write, and a
    cancelled task can be neither updated nor given runs (cancelling again is a no-op).
    """
    if task.locked:
        return Reason.PERMISSION_DENIED
    if task.status == "canceled" and isinstance(request, UpdateTask | EnqueueRun):
        return Reason.PERMISSION_DENIED
    return None


def _title_ok(title: str, limits: Limits) -> bool:
    return 1 <= len(title.strip()) <= limits.max_title_chars


def _description_ok(description: str, limits: Limits) -> bool:
    return len(description.encode()) <= limits.max_description_bytes


def _metadata_ok(metadata: dict[str, str] | None, limits: Limits) -> bool:
    if metadata is None:
        return True
    if len(metadata) > limits.max_metadata_entries or any(k.strip() == "" for k in metadata):
        return False
    encoded = json.dumps(metadata, ensure_ascii=False, separators=(",", ":")).encode()
    return len(encoded) <= limits.max_metadata_bytes


def derived_actor(ctx: IngressContext) -> str:
    """The task-domain actor a peer acts as: `peer:<peer_id>/channel:<channel>`."""
    return f"peer:{ctx.peer_id}/channel:{ctx.channel}"


def origin(ctx: IngressContext) -> str:
    """Where the write came from: `workspace:<ws>/channel:<channel>/peer:<peer_id>`."""
    return f"workspace:{ctx.workspace}/channel:{ctx.channel}/peer:{ctx.peer_id}"


def trusted_metadata(payload: dict[str, str] | None, ctx: IngressContext) -> dict[str, str]:
    """Payload metadata with the runtime's trusted keys written over any colliding ones."""
    merged = dict(payload or {})
    merged[TRUSTED_ACTOR_KEY] = derived_actor(ctx)
    merged[TRUSTED_ORIGIN_KEY] = origin(ctx)
    merged[TRUSTED_REQUEST_KEY] = ctx.request_id
    return merged


def safe_field(value: object, limit: int = MAX_ID_CHARS) -> str:
    """A malformed field in a form safe to store and log: printable, escaped, truncated."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) <= limit and text.isprintable() and "\\" not in text:
        return text  # the common case: a well-formed ID is its own safe form
    escaped = "".join(c if c.isprintable() and c not in "\\" else _escape(c) for c in text)
    return escaped if len(escaped) <= limit else escaped[: limit - 1] + "…"


def _escape(c: str) -> str:
    return "\\\\" if c == "\\" else f"\\u{ord(c):04x}"
