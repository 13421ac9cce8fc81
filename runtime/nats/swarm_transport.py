"""NatsSwarmTransport: the swarm's simulated peers talking to a daemon over NATS.

Thread-safe: one asyncio loop runs in a background thread; callers hand it coroutines with
`run_coroutine_threadsafe`. Each simulated peer gets its own Ed25519 key, enrolled in the
daemon's trust file (from the ready file) before its first message.

- `greet` sends a signed AGH greet on the broadcast subject as a NATS request and returns
  once the daemon answered that it applied it; the transport then re-greets the peer every
  half `greet_interval` (AGH heartbeats) until `leave`.
- `leave` just stops greeting (AGH has no leave message) and returns once the re-greets
  already sent were applied: the peer expires on the daemon at most 2 x greet_interval
  after `leave` returns, not at once (`leave_revokes = False`).
- `deliver` wraps the SPEC §7 msgpack envelope in the signed compact form, sends it to the
  daemon's peer subject as a NATS request and returns the SPEC §7 msgpack reply.
- A card that claims `task.write` with an empty proof is greeted without `task.write`:
  over the wire the proof is the signature, and such a card grants nothing in-process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from task_ingress.actors.log import get_logger
from task_ingress.actors.rules import gate
from task_ingress.messages.codec import decode_envelope, encode_reply
from task_ingress.messages.outcomes import Outcome
from task_ingress.messages.peers import PeerCard
from task_ingress.messages.reasons import Reason
from task_ingress.runtime.nats import envelope as wire
from task_ingress.runtime.nats.compact import encode_compact
from task_ingress.runtime.nats.ready import read_ready_file
from task_ingress.runtime.nats.signing import generate_key, public_key_text, sign_envelope
from task_ingress.runtime.nats.trust import enroll

T = TypeVar("T")
DEFAULT_TIMEOUT = 30.0


class NatsSwarmTransport:
    """Drives a running `task-ingress serve` over NATS (see the module docstring)."""

    greet_interval: float
    leave_revokes = False
    """Over NATS a leave is silence: only expiry (2 x greet_interval) revokes."""

    def __init__(self, *, ready_file: str | None = None, nats_url: str | None = None,
                 workspace: str = "default", trust_file: str | None = None,
                 token: str | None = None, daemon_peer_id: str | None = None,
                 greet_interval: float | None = None,
                 request_timeout: float = DEFAULT_TIMEOUT) -> None:
        self.request_timeout = request_timeout
        self._store = ""
        if ready_file:
            info = read_ready_file(ready_file)
            url = nats_url or info.nats_url
            token = token or info.credentials.get("token")
            trust_file = trust_file or info.trust_file
            daemon_peer_id = daemon_peer_id or info.daemon_peer_id
            greet_interval = greet_interval or info.greet_interval
            self._store = info.store
            workspace = info.workspace  # the only workspace the daemon serves
        elif nats_url:
            # A daemon elsewhere: its trust file must be shared (or peers enrolled out of
            # band), the token comes from the URL or TASK_INGRESS_NATS_TOKEN.
            url = nats_url
            token = token or os.environ.get("TASK_INGRESS_NATS_TOKEN") or None
            trust_file = trust_file or os.environ.get("TASK_INGRESS_TRUST_FILE") or None
        else:
            raise ValueError("NatsSwarmTransport needs ready_file or nats_url")
        self.nats_url = url
        self.workspace = workspace
        self.trust_file = trust_file
        self.daemon_peer_id = daemon_peer_id or "task-ingress"
        self.greet_interval = float(greet_interval or 30.0)
        self._token = token
        self._keys: dict[str, Ed25519PrivateKey] = {}
        self._keys_lock = threading.Lock()
        self._greeted: dict[tuple[str, str, str], tuple[PeerCard, float]] = {}
        self._greeted_lock = threading.Lock()
        self._heartbeats: dict[tuple[str, str, str], set[asyncio.Task[None]]] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever,
                                        name="nats-swarm-transport", daemon=True)
        self._thread.start()
        self._nc: Any = None
        self._heartbeat: asyncio.Task[None] | None = None
        try:
            self._call(self._connect(), timeout=15.0)
        except BaseException:
            self.close()
            raise

    # ---- loop plumbing -----------------------------------------------------------
    def _call(self, coro: Any, timeout: float) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except FutureTimeout:
            future.cancel()
            raise TimeoutError("no answer from the daemon in time") from None

    async def _connect(self) -> None:
        import nats  # heavy import: only when this transport is used

        log = get_logger(component="nats.swarm_transport")

        async def on_error(exc: Exception) -> None:
            # nats-py prints a traceback per reconnect attempt without this.
            log.debug("nats.error", error=repr(exc))

        options: dict[str, Any] = {"servers": [self.nats_url], "name": "task-ingress-swarm",
                                   "max_reconnect_attempts": 10, "error_cb": on_error}
        if self._token and not urlsplit(self.nats_url).username:
            options["token"] = self._token
        self._nc = await nats.connect(**options)
        self._heartbeat = asyncio.create_task(self._heartbeat_loop())

    # ---- identities --------------------------------------------------------------
    def _key_for(self, peer_id: str) -> Ed25519PrivateKey:
        with self._keys_lock:
            key = self._keys.get(peer_id)
            if key is None:
                key = generate_key()
                if self.trust_file and gate.is_peer_id(peer_id):
                    enroll(self.trust_file, {peer_id: public_key_text(key)})
                self._keys[peer_id] = key
            return key

    # ---- presence ----------------------------------------------------------------
    def _greet_bytes(self, workspace: str, channel: str, card: PeerCard) -> bytes:
        capabilities = list(card.capabilities)
        if not card.proof:
            capabilities = [c for c in capabilities if c.strip() != gate.TASK_WRITE]
        peer_card: dict[str, Any] = {
            "peer_id": card.peer_id, "profiles_supported": [wire.PROTOCOL],
            "capabilities": capabilities, "artifacts_supported": [],
            "trust_modes_supported": ["ed25519"],
        }
        if card.display_name:
            peer_card["display_name"] = card.display_name
        env = wire.build_envelope(kind=wire.KIND_GREET, workspace=workspace, channel=channel,
                                  sender=card.peer_id, body={"peer_card": peer_card})
        return wire.encode_json(sign_envelope(env, self._key_for(card.peer_id)))

    def greet(self, workspace: str, channel: str, card: PeerCard) -> None:
        """Signed greet; returns once the daemon applied it, then heartbeats until leave."""
        data = self._greet_bytes(workspace, channel, card)
        key = (workspace, channel, card.peer_id)
        msg = self._call(self._greet(key, card, data), self.request_timeout + 1)
        answer = json.loads(msg.data)
        body = answer.get("body", {}) if isinstance(answer, dict) else {}
        if not body.get("applied"):
            with self._greeted_lock:
                self._greeted.pop(key, None)
            raise RuntimeError(f"daemon refused greet of {card.peer_id!r}: {body!r}")

    async def _greet(self, key: tuple[str, str, str], card: PeerCard, data: bytes) -> Any:
        # From now on heartbeats carry the new card; a heartbeat with the old card that is
        # already on its way must land first, or it would undo a card that drops task.write.
        with self._greeted_lock:
            self._greeted[key] = (card, time.monotonic())
        await self._settle_heartbeats(key)
        try:
            return await self._request(wire.broadcast_subject(key[0], key[1]), data)
        except BaseException:
            with self._greeted_lock:
                self._greeted.pop(key, None)
            raise

    async def _settle_heartbeats(self, key: tuple[str, str, str]) -> None:
        pending = self._heartbeats.pop(key, set())
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    def leave(self, workspace: str, channel: str, peer_id: str) -> None:
        """Go silent: stop re-greeting (AGH has no leave message; the daemon expires it).

        Returns once every re-greet already sent for the peer has been applied, so the
        peer's expiry clock on the daemon runs from no later than this return.
        """
        self._call(self._leave((workspace, channel, peer_id)), self.request_timeout + 1)

    async def _leave(self, key: tuple[str, str, str]) -> None:
        with self._greeted_lock:
            self._greeted.pop(key, None)
        await self._settle_heartbeats(key)

    async def _heartbeat_loop(self) -> None:
        tick = max(0.01, min(1.0, self.greet_interval / 4))
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            with self._greeted_lock:
                due = [(k, card) for k, (card, last) in self._greeted.items()
                       if now - last >= self.greet_interval / 2]
                for k, card in due:
                    self._greeted[k] = (card, now)
            for key, card in due:
                task = asyncio.create_task(self._heartbeat_greet(key, card))
                tasks = self._heartbeats.setdefault(key, set())
                tasks.add(task)
                task.add_done_callback(tasks.discard)

    async def _heartbeat_greet(self, key: tuple[str, str, str], card: PeerCard) -> None:
        ws, ch, _peer = key
        # Request/reply, so that `leave` can wait until a re-greet was applied.
        with contextlib.suppress(Exception):  # a lost heartbeat is retried next period
            await self._request(wire.broadcast_subject(ws, ch), self._greet_bytes(ws, ch, card))

    # ---- requests ----------------------------------------------------------------
    async def _request(self, subject: str, data: bytes) -> Any:
        return await self._nc.request(subject, data, timeout=self.request_timeout)

    def deliver(self, envelope: bytes, *, workspace: str, channel: str, peer_id: str) -> bytes:
        """Send SPEC §7 envelope bytes as `peer_id` (signed compact form); the msgpack reply."""
        data = encode_compact(bytes(envelope), workspace=workspace, channel=channel,
                              sender=peer_id, to=self.daemon_peer_id, ts=int(time.time()),
                              key=self._key_for(peer_id))
        try:
            subject = wire.peer_subject(workspace, channel, self.daemon_peer_id)
            msg = self._call(self._request(subject, data), self.request_timeout + 1)
        except Exception:  # no responder, timeout, malformed subject: nothing was judged
            decoded = decode_envelope(bytes(envelope))
            return encode_reply(Outcome.rejected(gate.safe_field(decoded.request_id),
                                                 decoded.action, Reason.TASK_INGRESS_UNAVAILABLE))
        return bytes(msg.data)

    def store_path(self) -> str:
        """The daemon's store (from the ready file; '' when driving a remote daemon)."""
        return self._store

    def close(self) -> None:
        """Stop heartbeats, close the connection and the loop thread; idempotent."""
        if not self._thread.is_alive():
            return

        async def _close() -> None:
            if self._heartbeat is not None:
                self._heartbeat.cancel()
            in_flight = [t for tasks in self._heartbeats.values() for t in tasks]
            if self._heartbeat is not None:
                in_flight.append(self._heartbeat)
            for task in in_flight:
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)
            if self._nc is not None:
                try:
                    await asyncio.wait_for(self._nc.close(), 5)
                except Exception:  # closing a broken connection: nothing left to do
                    return

        with contextlib.suppress(Exception):  # close must not raise; the loop still stops
            asyncio.run_coroutine_threadsafe(_close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> NatsSwarmTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
