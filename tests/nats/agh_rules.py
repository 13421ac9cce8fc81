"""A test-side checker of AGH's envelope rules, written from `compozy/agh`
`internal/network/validate.go` and `envelope.go` independently of the daemon's encoder and
parser (it imports nothing from task_ingress). `agh_problems(obj, now)` lists every rule an
envelope object breaks; [] means AGH's ParseEnvelope would accept it. v1 (RFC 004) keeps
every v0 rule but the protocol string and the peer-ID form (handles allowed).
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

V0_PEER = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")
HANDLE = re.compile(r"^[a-z0-9_-]{1,32}@[0-9a-f]{32}$")
CHANNEL = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
THREAD = re.compile(r"^thread_[a-z0-9][a-z0-9_-]{2,95}$")
DIRECT = re.compile(r"^direct_[a-f0-9]{32}$")
KINDS = {"greet", "whois", "say", "capability", "receipt", "trace"}
STATUSES = {"accepted", "rejected", "duplicate", "expired", "unsupported", "canceled"}
NEEDS_CODE = {"rejected", "duplicate", "expired", "unsupported"}
CODES = {"malformed", "expired", "duplicate", "unsupported_kind", "unsupported_profile",
         "verification_failed", "not_target", "not_found", "busy", "internal",
         "invalid_surface", "conversation_not_found", "work_closed",
         "work_container_mismatch", "legacy_field_rejected"}
STATES = {"submitted", "working", "needs_input", "completed", "failed", "canceled"}
SECRET_WORDS = ("api[_-]?key|access[_-]?token|refresh[_-]?token|mcp[_-]?auth[_-]?token|"
                "claim[_-]?token|lease[_-]?token|bot[_-]?token|oauth[_-]?code|"
                "authorization[_-]?code|oauth[_-]?client[_-]?secret|client[_-]?secret|"
                "webhook[_-]?secret|code[_-]?verifier|pkce[_-]?verifier|"
                "secret[_-]?binding|token|secret|password|authorization")
SECRET_KEYS = {"apikey", "accesstoken", "refreshtoken", "mcpauthtoken", "oauthcode",
               "authorizationcode", "codeverifier", "pkceverifier", "secretbinding",
               "clientsecret", "authorization", "password", "secret", "token", "claimtoken"}
SECRET_TEXT = [
    re.compile(r"(?i)\bBearer\s+[A-Za-z0-9._~+/=-]+", re.ASCII),
    re.compile(r"agh_claim_[A-Za-z0-9_-]+"),
    re.compile(r"(?i)\b(?:proxy[-_])?authorization\b\s*[=:]\s*[^\r\n,;]+", re.ASCII),
    re.compile(r"(?i)\b(?:" + SECRET_WORDS + r")\b\s*[=:]\s*(\"[^\"]*\"|'[^']*'|[^\s,;]+)",
               re.ASCII),
]


def _blank(v: object) -> bool:
    return not isinstance(v, str) or v.strip() == ""


def _secret_text(text: str) -> bool:
    return any(p.search(text) and "[REDACTED]" not in text for p in SECRET_TEXT)


def _secret(key: str, value: object) -> bool:
    flat = key.lower().strip().replace("-", "").replace("_", "").replace(".", "")
    filled = value not in (None, "", [], {}) and not (isinstance(value, str)
                                                      and not value.strip())
    if _secret_text(key) or (flat in SECRET_KEYS and "hash" not in flat and filled):
        return True
    if isinstance(value, str):
        return _secret_text(value)
    if isinstance(value, list):
        return any(_secret("", v) for v in value)
    if isinstance(value, dict):
        return any(_secret(k, v) for k, v in value.items())
    return False


def room(ws: str, ch: str, a: str, b: str) -> str:
    """DirectRoomIdentity (validate.go:218)."""
    lo, hi = sorted([a, b])
    digest = hashlib.sha256(f"agh-network/direct-room/v0\0{ws}\0{ch}\0{lo}\0{hi}".encode())
    return "direct_" + digest.hexdigest()[:32]


def _card(card: Any, out: list[str], where: str) -> str:
    if not isinstance(card, dict):
        out.append(f"{where}: peer_card is not an object")
        return ""
    peer = card.get("peer_id")
    if _blank(peer):
        out.append(f"{where}: peer_card.peer_id required")
    for key in ("profiles_supported", "capabilities", "artifacts_supported",
                "trust_modes_supported"):
        value = card.get(key)
        if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
            out.append(f"{where}: peer_card.{key} required list of strings")
    if card.get("display_name") is not None and not isinstance(card.get("display_name"), str):
        out.append(f"{where}: display_name not a string")
    caps = card.get("capabilities") if isinstance(card.get("capabilities"), list) else []
    if "task.write" in [c.strip() for c in caps if isinstance(c, str)]:
        out.append("__needs_proof__")
    return peer.strip() if isinstance(peer, str) else ""


def agh_problems(obj: Any, now: int, max_age: int = 300) -> list[str]:
    """Every AGH rule `obj` breaks (empty: AGH's ParseEnvelope accepts it)."""
    out: list[str] = []
    if not isinstance(obj, dict):
        return ["not an object"]
    if len(json.dumps(obj).encode()) > 1 << 20:
        out.append("larger than 1 MiB")
    if "interaction_id" in obj:
        out.append("legacy interaction_id")
    proto = obj.get("protocol")
    if proto not in ("agh-network/v0", "agh-network/v1"):
        out.append("protocol")
    peer_ok = (lambda p: bool(V0_PEER.match(p))) if proto == "agh-network/v0" else (
        lambda p: bool(V0_PEER.match(p) or HANDLE.match(p)))
    strip = {k: obj[k].strip() if isinstance(obj.get(k), str) else obj.get(k) for k in obj}
    if _blank(obj.get("id")):
        out.append("id required")
    ws = strip.get("workspace_id")
    if not isinstance(ws, str) or not ws or any(c in ws for c in ". *>") or any(
            ord(c) < 0x20 or ord(c) == 0x7F for c in ws):
        out.append("workspace_id")
    kind = strip.get("kind")
    if kind not in KINDS:
        out.append("kind")
    ch = strip.get("channel")
    if not isinstance(ch, str) or not CHANNEL.match(ch):
        out.append("channel")
    sender = strip.get("from")
    if not isinstance(sender, str) or not peer_ok(sender):
        out.append("from")
    for key in ("to", "work_id", "reply_to", "trace_id", "causation_id", "surface",
                "thread_id", "direct_id"):
        if obj.get(key) is not None and not isinstance(obj.get(key), str):
            out.append(f"{key} type")
    opt = {k: (strip.get(k) or None) for k in ("to", "work_id", "reply_to", "trace_id",
                                               "causation_id", "surface", "thread_id",
                                               "direct_id")}
    if opt["to"] is not None and not peer_ok(opt["to"]):
        out.append("to")
    ts = obj.get("ts")
    if type(ts) is not int or ts <= 0:
        out.append("ts")
        ts = now
    exp = obj.get("expires_at")
    if exp is not None and type(exp) is not int:
        out.append("expires_at type")
        exp = None
    work = opt["work_id"]
    if work is not None and (len(work) > 128 or "/" in work or "\\" in work or any(
            ord(c) < 0x20 or ord(c) == 0x7F for c in work)):
        out.append("work_id grammar")
    surf, thread, direct = opt["surface"], opt["thread_id"], opt["direct_id"]
    if kind in ("greet", "whois"):
        if surf or thread or direct or work:
            out.append("discovery kind carries conversation fields")
    elif kind in KINDS:
        if surf is None:
            out.append("surface required")
        elif surf == "thread":
            if not (thread and THREAD.match(thread)) or direct:
                out.append("thread container")
        elif surf == "direct":
            if not (direct and DIRECT.match(direct)) or thread:
                out.append("direct container")
        else:
            out.append("unknown surface")
        if kind in ("capability", "receipt", "trace") and work is None:
            out.append(f"{kind} needs work_id")
    body = obj.get("body")
    proof = obj.get("proof")
    if proof is not None and not isinstance(proof, dict):
        out.append("proof type")
    ext = obj.get("ext")
    if ext is not None and not isinstance(ext, dict):
        out.append("ext type")
    if not isinstance(body, dict):
        out.append("body object")
        body = {}
    needs_proof = False
    if kind == "greet":
        if _card(body.get("peer_card"), out, "greet") != sender:
            out.append("greet peer_card.peer_id != from")
    elif kind == "whois":
        wtype = body.get("type", "").strip() if isinstance(body.get("type"), str) else ""
        if wtype == "request":
            if body.get("peer_card") is not None:
                out.append("whois request with peer_card")
        elif wtype == "response":
            if opt["reply_to"] is None:
                out.append("whois response needs reply_to")
            if _card(body.get("peer_card"), out, "whois") != sender:
                out.append("whois card peer_id != from")
        else:
            out.append("whois type")
    elif kind == "say":
        if _blank(body.get("text")):
            out.append("say text")
        if body.get("artifacts") is not None and not isinstance(body.get("artifacts"), list):
            out.append("say artifacts")
        if body.get("intent") is not None and not isinstance(body.get("intent"), str):
            out.append("say intent")
    elif kind == "receipt":
        if _blank(body.get("for_id")):
            out.append("receipt for_id")
        status = body.get("status", "").strip() if isinstance(body.get("status"), str) else ""
        code = body.get("reason_code")
        if status not in STATUSES:
            out.append("receipt status")
        if code is not None and (not isinstance(code, str) or code.strip() not in CODES):
            out.append("receipt reason_code")
        if status == "accepted" and code is not None:
            out.append("accepted receipt with reason_code")
        if status in NEEDS_CODE and code is None:
            out.append("receipt status needs reason_code")
        if body.get("detail") is not None and not isinstance(body.get("detail"), str):
            out.append("receipt detail")
    elif kind == "trace":
        if not isinstance(body.get("state"), str) or body["state"].strip() not in STATES:
            out.append("trace state")
    elif kind == "capability":
        out.append("capability (digest cannot be checked here; the daemon never sends it)")
    if "__needs_proof__" in out:
        out.remove("__needs_proof__")
        needs_proof = True
    if needs_proof and not proof:
        out.append("task.write card without proof")
    proof_values = list(proof.values()) if isinstance(proof, dict) else []
    ext_values = list(ext.values()) if isinstance(ext, dict) else []
    if _secret("", body) or any(_secret("", v) for v in proof_values + ext_values):
        out.append("raw secret material")
    if ts - now > max_age:
        out.append("ts in the future")
    if exp is not None:
        if exp <= now:
            out.append("expired")
    elif now - ts > max_age:
        out.append("ts too old")
    return out


def direct_room_problem(obj: dict[str, Any]) -> str | None:
    """A direct-surface envelope whose direct_id is not the pair's room (router.go:1167)."""
    if obj.get("surface") != "direct" or obj.get("to") is None:
        return None
    expected = room(obj["workspace_id"], obj["channel"], obj["from"], obj["to"])
    return None if obj.get("direct_id") == expected else "direct_id is not the pair's room"
