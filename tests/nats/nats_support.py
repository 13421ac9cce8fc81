"""Helpers for the NATS tests: a synchronous NATS client and signing peers."""

from __future__ import annotations

import asyncio
import json
import threading
from concurrent.futures import Future
from typing import Any

from task_ingress.runtime.nats import envelope as wire
from task_ingress.runtime.nats.signing import generate_key, public_key_text, sign_envelope
from task_ingress.runtime.nats.trust import enroll

WS = "default"
DAEMON = "task-ingress"


class Wire:
    """A synchronous NATS client for tests (its own loop on a thread)."""

    def __init__(self, url: str, token: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.nc: Any = self._run(self._connect(url, token))

    async def _connect(self, url: str, token: str) -> Any:
        import nats

        return await nats.connect(url, token=token)

    def _run(self, coro: Any, timeout: float = 15.0) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def request(self, subject: str, data: bytes, timeout: float = 10.0) -> bytes:
        msg = self._run(self.nc.request(subject, data, timeout=timeout), timeout + 5)
        return bytes(msg.data)

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
    """A simulated remote peer with its own Ed25519 key (enrolled unless told not to)."""

    def __init__(self, peer_id: str, trust_file: str | None) -> None:
        self.peer_id = peer_id
        self.key = generate_key()
        if trust_file:
            enroll(trust_file, {peer_id: public_key_text(self.key)})

    def greet(self, channel: str = "ops", capabilities: tuple[str, ...] = ("task.write",),
              *, sender: str | None = None, ws: str = WS, env_id: str | None = None,
              signed: bool = True) -> bytes:
        """A greet envelope claiming `sender` (default: this peer), signed by this peer."""
        who = sender or self.peer_id
        body = {"peer_card": {"peer_id": who, "profiles_supported": [wire.PROTOCOL],
                              "capabilities": list(capabilities), "artifacts_supported": [],
                              "trust_modes_supported": ["ed25519"]}}
        env = wire.build_envelope(kind="greet", workspace=ws, channel=channel, sender=who,
                                  body=body, env_id=env_id)
        return wire.encode_json(sign_envelope(env, self.key) if signed else env)

    def task(self, kind: str, body: dict[str, Any], request_id: str, channel: str = "ops",
             *, sender: str | None = None, ws: str = WS, to: str | None = DAEMON,
             signed: bool = True) -> bytes:
        """A task envelope (id = request ID) claiming `sender`, signed by this peer."""
        env = wire.build_envelope(kind=kind, workspace=ws, channel=channel,
                                  sender=sender or self.peer_id, body=body, to=to,
                                  env_id=request_id)
        return wire.encode_json(sign_envelope(env, self.key) if signed else env)


def daemon_subject(channel: str = "ops", ws: str = WS) -> str:
    """The daemon's peer subject in (ws, channel)."""
    return wire.peer_subject(ws, channel, DAEMON)


def broadcast(channel: str = "ops", ws: str = WS) -> str:
    """The broadcast subject of (ws, channel)."""
    return wire.broadcast_subject(ws, channel)


def body_of(raw: bytes) -> dict[str, Any]:
    """The body of a JSON reply envelope."""
    obj = json.loads(raw)
    assert isinstance(obj, dict)
    body = obj["body"]
    assert isinstance(body, dict)
    return body
