"""The peer side of the wire: what `task-ingress request` and the swarm's NATS transport use.

A `PeerClient` speaks AGH v1 as verified peers (RFC 004 handles and proofs): it greets on
the broadcast subject and sends task requests as `say`s in the direct room with the daemon
(taskmap.py), both as NATS requests, so the answer (a `whois` response for a greet, a
`receipt` for a request) comes back on the reply subject. It takes only an answer that is
proven by the daemon's own handle and names the exact bytes it sent (`answers`): anything
else arriving on its inbox (a forger's answer raced onto it, an injected message) is
ignored and counted, and the client keeps waiting for its own. On a server with per-peer
users (`nats_auth` "nkey") it connects as its key's NATS user with the inbox prefix
`_INBOX.<fingerprint>`, the only inboxes that user may read. The compact form
(compact.py) is the opt-in fast path; its replies are checked the same way against the
daemon's public key.
`LoopThread` runs one asyncio loop on a thread so synchronous callers can share it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from task_ingress.actors.log import get_logger
from task_ingress.messages.requests import AnyRequest
from task_ingress.runtime import eventloop
from task_ingress.runtime.nats import envelope as wire
from task_ingress.runtime.nats import taskmap
from task_ingress.runtime.nats.compact import CompactError, encode_compact, open_reply
from task_ingress.runtime.nats.identity import (
    Trust,
    b64url,
    evaluate,
    fingerprint,
    handle,
    handle_fingerprint,
    raw_public_key,
    sign,
    unb64url,
)
from task_ingress.runtime.nats.nkey import inbox_prefix, user_nkey, user_seed
from task_ingress.runtime.nats.policy import read_keys
from task_ingress.runtime.nats.ready import ReadyInfo, read_live_ready_file

T = TypeVar("T")
DEFAULT_TIMEOUT = 10.0
PRESENCE_EXT = taskmap.EXT_CARD + ".presence"
MAX_QUEUED_ANSWERS = 32
"""Messages kept per waiting request; a flood onto one inbox cannot grow the client."""
ADMISSION_RETRY = 0.1
"""Seconds between connects of an enrolled key the server does not admit yet (its reload
after `trust add` is under way)."""


class ClientError(Exception):
    """The daemon could not be reached, or answered with something it must not send."""


@dataclass(frozen=True)
class Identity:
    """A verified peer: its key and handle `nickname@fingerprint`."""

    key: Ed25519PrivateKey
    handle: str

    @classmethod
    def of(cls, key: Ed25519PrivateKey, nickname: str) -> Identity:
        """The identity of `key` under `nickname`."""
        return cls(key, handle(nickname, key))


@dataclass(frozen=True)
class DaemonAddress:
    """Where a daemon listens and who it is (from its ready file)."""

    nats_url: str
    token: str | None
    workspace: str
    peer_id: str
    handle: str
    trust_file: str | None
    greet_interval: float
    store: str = ""
    public_key: str = ""
    """The daemon's base64url Ed25519 public key: compact replies are checked against it."""
    nats_auth: str = "token"
    """nkey: each peer connects as its own key; token/url: one shared credential."""

    @classmethod
    def from_ready(cls, info: ReadyInfo) -> DaemonAddress:
        """The address a ready file describes."""
        return cls(nats_url=info.nats_url, token=info.credentials.get("token"),
                   workspace=info.workspace, peer_id=info.daemon_peer_id,
                   handle=info.daemon_handle, trust_file=info.trust_file,
                   greet_interval=info.greet_interval, store=info.store,
                   public_key=info.daemon_public_key, nats_auth=info.nats_auth)

    @classmethod
    def from_ready_file(cls, path: str) -> DaemonAddress:
        """Read a ready file (ValueError/OSError when missing or malformed; its subclass
        DaemonNotRunning at once when the daemon it names is gone)."""
        return cls.from_ready(read_live_ready_file(path))


async def connect(address: DaemonAddress, name: str, reconnects: int = 10,
                  timeout: float = 10.0, me: Identity | None = None) -> Any:
    """A nats-py connection to the daemon's server; ClientError when none is made within
    `timeout` (nats-py itself may retry a refused first connect forever).

    With per-peer users (`address.nats_auth == "nkey"`) `me` is the NATS user: a key the
    server does not admit fails at once, unless the trust file lists it (then the daemon's
    reload of the server is under way and the connect is retried until `timeout`).
    """
    import nats  # heavy import: only when a client runs

    log = get_logger(component="nats.client")

    async def on_error(exc: Exception) -> None:
        log.debug("nats.error", error=repr(exc))  # nats-py prints tracebacks without this

    options: dict[str, Any] = {"servers": [address.nats_url], "name": name,
                               "max_reconnect_attempts": reconnects, "error_cb": on_error}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    if address.nats_auth == "nkey":
        if me is None:
            raise ClientError(f"the NATS server at {address.nats_url} admits peers by their "
                              "own key: give one (--key)")
        options["nkeys_seed_str"] = user_seed(me.key)
        options["inbox_prefix"] = inbox_prefix(fingerprint(raw_public_key(me.key)))
        await _wait_admitted(address, options, me, deadline)
    else:
        token = address.token or os.environ.get("TASK_INGRESS_NATS_TOKEN")
        if token and not urlsplit(address.nats_url).username:
            options["token"] = token
    try:
        return await asyncio.wait_for(nats.connect(**options), max(0.0, deadline - loop.time()))
    except (TimeoutError, OSError) as exc:
        raise ClientError(f"cannot connect to {address.nats_url}: {type(exc).__name__}") from None


async def _wait_admitted(address: DaemonAddress, options: dict[str, Any], me: Identity,
                         deadline: float) -> None:
    """Return once the server admits `me` (one probe connection, closed again); ClientError
    when it refuses a key the trust file does not list, or past `deadline`."""
    import nats
    from nats.aio.client import Client

    loop = asyncio.get_running_loop()
    pub = raw_public_key(me.key)
    while True:
        probe = Client()
        try:
            await asyncio.wait_for(probe.connect(**{**options, "allow_reconnect": False}),
                                   max(0.0, deadline - loop.time()))
        except (TimeoutError, OSError) as exc:
            await _discard(probe)
            # The server may reset a connection it refuses before its -ERR is read: for a
            # key the trust file lists, that is the reload still under way, as below.
            if (isinstance(exc, TimeoutError) or loop.time() >= deadline
                    or not _enrolled(address, pub)):
                raise ClientError(f"cannot connect to {address.nats_url}: "
                                  f"{type(exc).__name__}") from None
            await asyncio.sleep(ADMISSION_RETRY)
            continue
        except nats.errors.Error as exc:
            await _discard(probe)
            if "authorization violation" not in str(exc).lower():
                raise ClientError(f"cannot connect to {address.nats_url}: {exc}") from None
            if not _enrolled(address, pub):
                raise ClientError(
                    f"the NATS server at {address.nats_url} does not admit {me.handle} (NATS "
                    f"user {user_nkey(pub)}): enrol its key with `task-ingress trust add "
                    f"{me.handle} --pubkey {b64url(pub)}`") from None
            if loop.time() >= deadline:
                raise ClientError(
                    f"the NATS server at {address.nats_url} still refuses {me.handle} though "
                    "the trust file lists its key: is the daemon running and its server "
                    "reloading? (see its log: nats_server.reload_failed)") from None
            await asyncio.sleep(ADMISSION_RETRY)
            continue
        await probe.close()
        return


def _enrolled(address: DaemonAddress, pub: bytes) -> bool:
    """True when the daemon's trust file lists the key `pub`."""
    return bool(address.trust_file) and fingerprint(pub) in read_keys(str(address.trust_file))


async def _discard(nc: Any) -> None:
    """Close a client whose connect failed (nats-py leaves its socket open)."""
    with contextlib.suppress(Exception):
        await nc.close()


class PeerClient:
    """Async AGH v1 peer operations against one daemon over one NATS connection."""

    def __init__(self, nc: Any, address: DaemonAddress,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self.nc = nc
        self.daemon = address
        self.timeout = timeout
        self.ignored = 0
        """Messages on this client's inboxes that were not its daemon's answer."""
        self.daemon_key = _pinned_key(address.public_key, address.handle)
        """The daemon's raw public key: from the ready file, else learned from its first
        verified answer (the handle's fingerprint pins it either way)."""
        self._inbox = nc.new_inbox()
        self._mux: asyncio.Future[Any] | None = None
        self._waiting: dict[str, asyncio.Queue[Any]] = {}

    # ---- building ----------------------------------------------------------------
    def greet_envelope(self, me: Identity, workspace: str, channel: str,
                       capabilities: list[str], display_name: str = "") -> bytes:
        """A signed v1 greet with an AGH peer card."""
        card: dict[str, Any] = {
            "peer_id": me.handle, "profiles_supported": [wire.PROTOCOL_V1],
            "capabilities": capabilities, "artifacts_supported": [],
            "trust_modes_supported": [Trust.VERIFIED.value]}
        if display_name:
            card["display_name"] = display_name
        env = wire.build_envelope(kind="greet", protocol=wire.PROTOCOL_V1, workspace=workspace,
                                  channel=channel, sender=me.handle, body={"peer_card": card})
        return wire.encode_json(sign(env, me.key))

    def request_envelope(self, me: Identity, workspace: str, channel: str,
                         request: AnyRequest, request_id: str,
                         work_id: str | None = None) -> bytes:
        """A signed v1 task `say` to the daemon."""
        env = taskmap.build_request(protocol=wire.PROTOCOL_V1, workspace=workspace,
                                    channel=channel, sender=me.handle,
                                    daemon=self.daemon.handle, request=request,
                                    request_id=request_id, work_id=work_id)
        return wire.encode_json(sign(env, me.key))

    # ---- exchanges ---------------------------------------------------------------
    async def _on_answer(self, msg: Any) -> None:
        queue = self._waiting.get(msg.subject.rsplit(".", 1)[-1])
        if queue is None or queue.full():
            self.ignored += 1
            return
        queue.put_nowait(msg)

    async def _exchange(self, subject: str, data: bytes, accept: Callable[[Any], T | None]) -> T:
        """Publish `data` with a reply inbox of our own and return the first message on it
        that `accept` takes (not None); others are ignored. ClientError on timeout."""
        if self._mux is None:  # one wildcard inbox subscription for every request
            self._mux = asyncio.ensure_future(
                self.nc.subscribe(self._inbox + ".*", cb=self._on_answer))
        await self._mux
        token = uuid.uuid4().hex
        queue: asyncio.Queue[Any] = asyncio.Queue(MAX_QUEUED_ANSWERS)
        self._waiting[token] = queue
        try:
            try:
                await self.nc.publish(subject, data, reply=f"{self._inbox}.{token}")
            except Exception as exc:  # closed connection, payload too large
                raise ClientError(f"cannot send to the daemon: {type(exc).__name__}") from None
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.timeout
            while True:
                try:
                    msg = await asyncio.wait_for(queue.get(), max(0.0, deadline - loop.time()))
                except TimeoutError:
                    raise ClientError("no answer from the daemon: TimeoutError") from None
                if msg.headers and msg.headers.get("Status") == "503":
                    raise ClientError("no answer from the daemon: NoRespondersError")
                answer = accept(msg)
                if answer is not None:
                    return answer
                self.ignored += 1
        finally:
            del self._waiting[token]

    async def _ask(self, subject: str, data: bytes) -> dict[str, Any]:
        """The daemon's signed JSON answer to exactly `data`."""
        expected = taskmap.answers(data)

        def accept(msg: Any) -> dict[str, Any] | None:
            try:
                answer = json.loads(msg.data)
            except ValueError:
                return None
            # Proven by the daemon itself (RFC 004 section 4.7), for these very bytes.
            if (not isinstance(answer, dict) or answer.get("from") != self.daemon.handle
                    or evaluate(answer).trust is not Trust.VERIFIED
                    or _answered(answer) != expected):
                return None
            if self.daemon_key is None:
                self.daemon_key = _pinned_key(answer["proof"]["pubkey"], self.daemon.handle)
            return answer

        return await self._exchange(subject, data, accept)

    async def greet(self, me: Identity, workspace: str, channel: str,
                    capabilities: list[str], display_name: str = "") -> dict[str, Any]:
        """Greet and wait until the daemon applied it; the daemon's presence verdict."""
        subject = wire.broadcast_subject(workspace, channel, wire.PROTOCOL_V1)
        answer = await self._ask(subject, self.greet_envelope(me, workspace, channel,
                                                              capabilities, display_name))
        ext = answer.get("ext")
        verdict = ext.get(PRESENCE_EXT) if isinstance(ext, dict) else None
        if not isinstance(verdict, dict):
            raise ClientError("the daemon's greet answer carries no presence verdict")
        return verdict

    async def request(self, me: Identity, workspace: str, channel: str, request: AnyRequest,
                      request_id: str | None = None,
                      work_id: str | None = None) -> dict[str, Any]:
        """Send one task request; the outcome from the daemon's receipt (SPEC 9 fields)."""
        rid = request_id or "req_" + uuid.uuid4().hex
        subject = wire.peer_subject(workspace, channel, self.daemon.handle, wire.PROTOCOL_V1)
        receipt = await self._ask(subject, self.request_envelope(me, workspace, channel,
                                                                 request, rid, work_id))
        body = receipt.get("body")
        if receipt.get("kind") != "receipt" or not isinstance(body, dict) or (
                body.get("for_id") != rid):
            raise ClientError("the daemon's answer is not a receipt for this request")
        return taskmap.outcome_from_receipt(receipt)

    async def deliver_compact(self, inner: bytes, *, workspace: str, channel: str,
                              peer_id: str, me: Identity | None, ts: int) -> bytes:
        """Send SPEC 7 envelope bytes in the compact form (signed when `me` is given)."""
        data = encode_compact(inner, workspace=workspace, channel=channel, sender=peer_id,
                              to=self.daemon.handle, ts=ts,
                              key=me.key if me is not None else None)
        subject = wire.peer_subject(workspace, channel, self.daemon.handle, wire.PROTOCOL_V1)
        public_key = self.daemon_key
        if public_key is None:
            raise ClientError("the daemon's public key is unknown: give a ready file, or "
                              "greet first")

        def accept(msg: Any) -> bytes | None:
            try:
                return open_reply(bytes(msg.data), request=data, public_key=public_key)
            except CompactError:
                return None

        return await self._exchange(subject, data, accept)


def _pinned_key(text: str, daemon_handle: str) -> bytes | None:
    """The raw key `text` (base64url) when it is the one `daemon_handle` names, else None."""
    key = unb64url(text) if text else None
    if key is None or len(key) != 32 or fingerprint(key) != handle_fingerprint(daemon_handle):
        return None
    return key


def _answered(answer: dict[str, Any]) -> str | None:
    """The `answers` an answer names: a receipt's result, or a greet's presence verdict."""
    ext = answer.get("ext")
    if not isinstance(ext, dict):
        return None
    for key in (taskmap.EXT_RESULT, PRESENCE_EXT):
        value = ext.get(key)
        if isinstance(value, dict) and isinstance(value.get("answers"), str):
            return str(value["answers"])
    return None


class LoopThread:
    """One asyncio event loop on a daemon thread, for synchronous callers."""

    def __init__(self, name: str) -> None:
        self.loop = eventloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def call(self, coro: Any, timeout: float) -> Any:
        """Run `coro` on the loop; its result, or TimeoutError after `timeout` seconds."""
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except FutureTimeout:
            future.cancel()
            raise TimeoutError("no answer from the daemon in time") from None

    def stop(self) -> None:
        """Stop the loop and join the thread; idempotent."""
        if not self.thread.is_alive():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
