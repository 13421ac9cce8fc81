"""NatsSwarmTransport: the swarm's simulated peers talking to a daemon over NATS.

It uses the same client code as `task-ingress request` (client.py). Each simulated peer is
a verified AGH peer: the transport gives it an Ed25519 key and the handle
`<swarm peer id>@<fingerprint>` (`peer_name`, which the swarm runner uses to name its
peers), and allows that handle in the daemon's trust policy (from the ready file) before
its first message. Plain peer IDs (the swarm's ghost peers) travel unsigned: unverified.
On a daemon's own server with per-peer users the transport's one NATS connection is a peer
of its own (`swarm@<fingerprint>`, enrolled with its key like the simulated peers, whose
keys are enrolled too), so it connects once the daemon has reloaded its server.

- `greet` sends a signed AGH v1 greet on the broadcast subject as a NATS request and
  returns once the daemon answered that it applied it; the transport then re-greets the
  peer every half `greet_interval` (AGH heartbeats) until `leave`.
- `leave` just stops greeting (AGH has no leave message) and returns once the re-greets
  already sent were applied: the peer expires on the daemon at most 2 x greet_interval
  after `leave` returns, not at once (`leave_revokes = False`).
- `deliver` wraps the SPEC 7 msgpack envelope in the compact form (compact.py; the opt-in
  fast path, not AGH), signed by the peer's key, and returns the SPEC 7 msgpack reply.
- A card that claims `task.write` with an empty proof is greeted without `task.write`:
  over the wire the proof is the signature, and such a card grants nothing in-process.

Thread-safe: one asyncio loop runs in a background thread (client.LoopThread).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import Any, TypeVar

from task_ingress.actors.rules import gate
from task_ingress.messages.codec import decode_envelope, encode_reply
from task_ingress.messages.outcomes import Outcome
from task_ingress.messages.peers import PeerCard
from task_ingress.messages.reasons import Reason
from task_ingress.runtime.nats import envelope as wire
from task_ingress.runtime.nats.client import (
    PRESENCE_EXT,
    ClientError,
    DaemonAddress,
    Identity,
    LoopThread,
    PeerClient,
    connect,
)
from task_ingress.runtime.nats.identity import generate_key, raw_public_key
from task_ingress.runtime.nats.policy import allow

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
                 daemon_handle: str | None = None, greet_interval: float | None = None,
                 request_timeout: float = DEFAULT_TIMEOUT) -> None:
        self.request_timeout = request_timeout
        if ready_file:
            address = DaemonAddress.from_ready_file(ready_file)
            if nats_url:
                address = DaemonAddress(**{**address.__dict__, "nats_url": nats_url})
        elif nats_url and daemon_handle:
            # A daemon elsewhere: its trust policy must be shared (or peers allowed out of
            # band), the token comes from the URL or TASK_INGRESS_NATS_TOKEN.
            address = DaemonAddress(
                nats_url=nats_url, token=token, workspace=workspace,
                peer_id=daemon_peer_id or "task-ingress", handle=daemon_handle,
                trust_file=trust_file, greet_interval=float(greet_interval or 30.0))
        else:
            raise ValueError("NatsSwarmTransport needs ready_file, or nats_url and "
                             "daemon_handle")
        self.address = address
        self.nats_url = address.nats_url
        self.workspace = address.workspace  # the only workspace the daemon serves
        self.trust_file = trust_file or address.trust_file
        self.daemon_peer_id = address.peer_id
        self.greet_interval = float(greet_interval or address.greet_interval)
        self._identities: dict[str, Identity] = {}
        self._keys_lock = threading.Lock()
        self._greeted: dict[tuple[str, str, str], tuple[PeerCard, float]] = {}
        self._greeted_lock = threading.Lock()
        self._heartbeats: dict[tuple[str, str, str], set[asyncio.Task[None]]] = {}
        self._loop = LoopThread("nats-swarm-transport")
        self._client: PeerClient | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        try:
            self._call(self._connect(), timeout=15.0)
        except BaseException:
            self.close()
            raise

    # ---- loop plumbing -----------------------------------------------------------
    def _call(self, coro: Any, timeout: float) -> Any:
        return self._loop.call(coro, timeout)

    async def _connect(self) -> None:
        me = None
        if self.address.nats_auth == "nkey":
            me = Identity.of(generate_key(), "swarm")
            if self.trust_file:
                allow(self.trust_file, [me.handle], [raw_public_key(me.key)])
        nc = await connect(self.address, "task-ingress-swarm", me=me)
        self._client = PeerClient(nc, self.address, timeout=self.request_timeout)
        self._heartbeat = asyncio.create_task(self._heartbeat_loop())

    @property
    def client(self) -> PeerClient:
        """The connected peer client."""
        assert self._client is not None, "not connected"
        return self._client

    # ---- identities --------------------------------------------------------------
    def peer_name(self, peer_id: str) -> str:
        """The verified handle the swarm's peer `peer_id` uses over NATS (allowed in the
        daemon's trust policy); the swarm names its peers with it."""
        return self._identity(peer_id).handle

    def _identity(self, name: str) -> Identity:
        with self._keys_lock:
            known = self._identities.get(name)
            if known is not None:
                return known
            nickname = name.split("@", 1)[0]
            me = Identity.of(generate_key(), nickname)
            if self.trust_file:
                allow(self.trust_file, [me.handle], [raw_public_key(me.key)])
            self._identities[name] = me
            self._identities[me.handle] = me
            return me

    def _known(self, peer_id: str) -> Identity | None:
        with self._keys_lock:
            return self._identities.get(peer_id)

    # ---- presence ----------------------------------------------------------------
    def _greet_bytes(self, workspace: str, channel: str, card: PeerCard) -> bytes:
        capabilities = list(card.capabilities)
        if not card.proof:
            capabilities = [c for c in capabilities if c.strip() != gate.TASK_WRITE]
        me = self._known(card.peer_id) or self._identity(card.peer_id)
        return self.client.greet_envelope(me, workspace, channel, capabilities,
                                          card.display_name)

    def greet(self, workspace: str, channel: str, card: PeerCard) -> None:
        """Signed greet; returns once the daemon applied it, then heartbeats until leave."""
        key = (workspace, channel, card.peer_id)
        verdict = self._call(self._greet(key, card), self.request_timeout + 1)
        if not verdict.get("applied"):
            with self._greeted_lock:
                self._greeted.pop(key, None)
            raise RuntimeError(f"daemon refused greet of {card.peer_id!r}: {verdict!r}")

    async def _greet(self, key: tuple[str, str, str], card: PeerCard) -> Any:
        # From now on heartbeats carry the new card; a heartbeat with the old card that is
        # already on its way must land first, or it would undo a card that drops task.write.
        with self._greeted_lock:
            self._greeted[key] = (card, time.monotonic())
        await self._settle_heartbeats(key)
        # Dated only now, after those heartbeats: one built after this greet's bytes would
        # carry a later ts (a new second), and the daemon applies only a peer's newest
        # greet, so it would refuse this one as stale.
        data = self._greet_bytes(key[0], key[1], card)
        try:
            return await self._greet_request(key[0], key[1], data)
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
            await self._greet_request(ws, ch, self._greet_bytes(ws, ch, card))

    # ---- requests ----------------------------------------------------------------
    async def _greet_request(self, workspace: str, channel: str, data: bytes) -> Any:
        subject = wire.broadcast_subject(workspace, channel, wire.PROTOCOL_V1)
        answer = await self.client._ask(subject, data)
        ext = answer.get("ext")
        verdict = ext.get(PRESENCE_EXT) if isinstance(ext, dict) else None
        if not isinstance(verdict, dict):
            raise ClientError("the daemon's greet answer carries no presence verdict")
        return verdict

    def deliver(self, envelope: bytes, *, workspace: str, channel: str, peer_id: str) -> bytes:
        """Send SPEC 7 envelope bytes as `peer_id` (compact form, signed when the peer is
        one of ours); the msgpack reply."""
        me = self._known(peer_id)
        try:
            coro = self.client.deliver_compact(bytes(envelope), workspace=workspace,
                                               channel=channel,
                                               peer_id=me.handle if me else peer_id,
                                               me=me, ts=int(time.time()))
            return bytes(self._call(coro, self.request_timeout + 1))
        except Exception:  # no responder, timeout, malformed subject: nothing was judged
            decoded = decode_envelope(bytes(envelope))
            return encode_reply(Outcome.rejected(gate.safe_field(decoded.request_id),
                                                 decoded.action, Reason.TASK_INGRESS_UNAVAILABLE))

    def store_path(self) -> str:
        """The daemon's store (from the ready file; '' when driving a remote daemon)."""
        return self.address.store

    def close(self) -> None:
        """Stop heartbeats, close the connection and the loop thread; idempotent."""
        if not self._loop.thread.is_alive():
            return

        async def _close() -> None:
            in_flight = [t for tasks in self._heartbeats.values() for t in tasks]
            if self._heartbeat is not None:
                in_flight.append(self._heartbeat)
            for task in in_flight:
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)
            if self._client is not None:
                with contextlib.suppress(Exception):  # a broken connection: nothing to do
                    await asyncio.wait_for(self._client.nc.close(), 5)

        with contextlib.suppress(Exception):  # close must not raise; the loop still stops
            self._loop.call(_close(), 10)
        self._loop.stop()

    def __enter__(self) -> NatsSwarmTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
