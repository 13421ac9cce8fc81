"""Helpers for the NATS tests: a synchronous NATS client, AGH peers (verified and plain).

Envelopes are written here by hand in AGH's shapes (RFC 003 section 5, RFC 004 section
4.5), signed with the `rfc8785` package and `cryptography` directly, so the daemon's own
encoder is not what produces the traffic it is tested with.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import threading
import time
import uuid
from concurrent.futures import Future
from typing import Any

import rfc8785
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.nats.agh_rules import room

WS = "default"
DAEMON = "task-ingress"
V0, V1 = "agh-network/v0", "agh-network/v1"
PROFILE = "agh-network.trust.ed25519-jcs/v1"
EXT_REQUEST = "dev.task-ingress.request"
EXT_RESULT = "dev.task-ingress.result"
PRESENCE = "dev.task-ingress.card.presence"


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def route(peer: str) -> str:
    """v0 route token (validate.go:362) or, for a handle, its fingerprint (RFC 004 6.1)."""
    if "@" in peer:
        return peer.rsplit("@", 1)[1]
    return hashlib.sha256(peer.encode()).hexdigest()[:32]


def prefix(protocol: str) -> str:
    return "agh.network.v1" if protocol == V1 else "agh.network.v0"


def broadcast(channel: str = "ops", ws: str = WS, protocol: str = V1) -> str:
    return f"{prefix(protocol)}.{ws}.{channel}.broadcast"


def peer_subject(peer: str, channel: str = "ops", ws: str = WS, protocol: str = V1) -> str:
    return f"{prefix(protocol)}.{ws}.{channel}.peer.{route(peer)}"


def sign_rfc004(env: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """RFC 004 section 4.5/4.6: proof over the JCS envelope with only proof.sig left out."""
    pub = key.public_key().public_bytes(serialization.Encoding.Raw,
                                        serialization.PublicFormat.Raw)
    proof = {"profile": PROFILE, "alg": "Ed25519",
             "key_id": "sha256:" + hashlib.sha256(pub).hexdigest(), "pubkey": b64u(pub)}
    unsigned = {**env, "proof": proof}
    return {**unsigned, "proof": {**proof, "sig": b64u(key.sign(rfc8785.dumps(unsigned)))}}


def envelope(kind: str, sender: str, body: dict[str, Any], *, protocol: str = V1,
             channel: str = "ops", ws: str = WS, env_id: str | None = None,
             **fields: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {"protocol": protocol, "id": env_id or "msg_" + uuid.uuid4().hex,
                           "workspace_id": ws, "kind": kind, "channel": channel,
                           "from": sender}
    obj.update({k: v for k, v in fields.items() if v is not None})
    obj.setdefault("ts", int(time.time()))
    obj["body"] = body
    obj.setdefault("proof", None)
    return obj


def encode(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


class Wire:
    """A synchronous NATS client for tests (its own loop on a thread)."""

    def __init__(self, url: str, token: str | None = None, **options: Any) -> None:
        """Connect with `token`, or with nats-py `options` (nkeys_seed_str, inbox_prefix…);
        server errors (permission violations) are collected in `errors`."""
        self.errors: list[str] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.nc: Any = self._run(self._connect(url, token, options))

    async def _connect(self, url: str, token: str | None, options: dict[str, Any]) -> Any:
        import nats

        async def on_error(exc: Exception) -> None:
            self.errors.append(str(exc))

        if token is not None:
            options = {**options, "token": token}
        return await nats.connect(url, error_cb=on_error, **options)

    def flush(self) -> None:
        """A round trip to the server: everything sent before was processed, everything
        the server sent this client before its answer has arrived."""
        self._run(self.nc.flush())

    def subscribe_quietly(self, subject: str) -> list[bytes]:
        """`collect` without waiting for the server's verdict (a refusal lands in
        `errors` after the next flush)."""
        got: list[bytes] = []

        async def cb(msg: Any) -> None:
            got.append(bytes(msg.data))

        self._run(self.nc.subscribe(subject, cb=cb))
        return got

    def _run(self, coro: Any, timeout: float = 15.0) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def request(self, subject: str, data: bytes, timeout: float = 10.0) -> bytes:
        msg = self._run(self.nc.request(subject, data, timeout=timeout), timeout + 5)
        return bytes(msg.data)

    def ask(self, subject: str, obj: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        answer = json.loads(self.request(subject, encode(obj), timeout))
        assert isinstance(answer, dict)
        return answer

    def publish(self, subject: str, data: bytes) -> None:
        async def go() -> None:
            await self.nc.publish(subject, data)
            await self.nc.flush()

        self._run(go())

    def collect(self, subject: str) -> list[bytes]:
        """Subscribe; the returned list fills with every payload that arrives."""
        got: list[bytes] = []

        async def cb(msg: Any) -> None:
            got.append(bytes(msg.data))

        async def go() -> None:
            await self.nc.subscribe(subject, cb=cb)
            await self.nc.flush()

        self._run(go())
        return got

    def close(self) -> None:
        try:
            self._run(self.nc.close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            self.loop.close()


class Peer:
    """An AGH peer: verified (RFC 004 handle, v1, signed) or plain (v0, unverified)."""

    def __init__(self, nickname: str, *, verified: bool = True,
                 daemon: str = DAEMON, daemon_handle: str = "") -> None:
        self.key = Ed25519PrivateKey.generate()
        pub = self.key.public_key().public_bytes(serialization.Encoding.Raw,
                                                 serialization.PublicFormat.Raw)
        self.verified = verified
        self.id = f"{nickname}@{hashlib.sha256(pub).hexdigest()[:32]}" if verified else nickname
        self.protocol = V1 if verified else V0
        self.daemon = daemon_handle if verified else daemon

    def finish(self, env: dict[str, Any], signed: bool | None = None) -> dict[str, Any]:
        return sign_rfc004(env, self.key) if (self.verified if signed is None else signed) \
            else env

    def greet(self, capabilities: tuple[str, ...] = ("task.write",), channel: str = "ops",
              *, ws: str = WS, env_id: str | None = None, signed: bool | None = None,
              sender: str | None = None) -> dict[str, Any]:
        who = sender or self.id
        card = {"peer_id": who, "profiles_supported": [self.protocol],
                "capabilities": list(capabilities), "artifacts_supported": [],
                "trust_modes_supported": ["verified" if self.verified else "unverified"]}
        env = envelope("greet", who, {"peer_card": card}, protocol=self.protocol,
                       channel=channel, ws=ws, env_id=env_id)
        if "task.write" in capabilities and not self.verified:
            env["proof"] = {"note": "v0 proofs are opaque"}  # AGH requires a proof here
        return self.finish(env, signed)

    def task(self, action: str, fields: dict[str, Any], request_id: str,
             channel: str = "ops", *, ws: str = WS, to: str | None = None,
             work_id: str | None = "work_default", signed: bool | None = None,
             sender: str | None = None, direct_id: str | None = None) -> dict[str, Any]:
        who = sender or self.id
        target = to or self.daemon
        env = envelope("say", who, {"text": f"please {action}", "intent": action,
                                    "artifacts": []}, protocol=self.protocol,
                       channel=channel, ws=ws, env_id=request_id, to=target,
                       surface="direct",
                       direct_id=direct_id or room(ws, channel, who, target),
                       work_id=work_id)
        env["ext"] = {EXT_REQUEST: fields}
        return self.finish(env, signed)

    def whois(self, to: str | None, query: str = "", channel: str = "ops",
              ws: str = WS) -> dict[str, Any]:
        env = envelope("whois", self.id, {"type": "request", "query": query},
                       protocol=self.protocol, channel=channel, ws=ws, to=to)
        return self.finish(env)

    def daemon_subject(self, channel: str = "ops", ws: str = WS) -> str:
        return peer_subject(self.daemon, channel, ws, self.protocol)

    def own_subject(self, channel: str = "ops", ws: str = WS) -> str:
        return peer_subject(self.id, channel, ws, self.protocol)

    def broadcast(self, channel: str = "ops", ws: str = WS) -> str:
        return broadcast(channel, ws, self.protocol)


def result(receipt: dict[str, Any]) -> dict[str, Any]:
    """The outcome a receipt carries under our ext key."""
    assert receipt["kind"] == "receipt", receipt
    value = receipt["ext"][EXT_RESULT]
    assert isinstance(value, dict)
    return value


def presence(answer: dict[str, Any]) -> dict[str, Any]:
    """The daemon's presence verdict on a greet sent as a NATS request."""
    assert answer["kind"] == "whois" and answer["body"]["type"] == "response", answer
    value = dict(answer["ext"][PRESENCE])
    assert str(value.pop("answers")).startswith("sha256:")  # whom it answers (issue 13)
    return value
