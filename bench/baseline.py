"""The benchmark's baseline: a plain lock-based implementation of the SPEC §7 contract.

What a careful engineer writes without actors: threads, locks, one SQLite connection.

- One lock per (workspace, channel): a request holds it from the presence check to its
  commit, and greet/leave take it too, so a leave never slips between check and write
  (the same race freedom the runtime gets from its channel fence).
- One lock around the database connection: the store-side checks (rules 5-10, the same
  `actors.storage.store_ops.judge_and_apply` the runtime uses), the mutation, and the hash-chained
  audit record are ONE transaction, committed with synchronous=FULL before the reply.
  That is the same durability as the runtime: a reply means write + audit are on disk.
- No group commit: one durable transaction per request. That is the point of comparison.

It speaks the same wire envelopes (`deliver`) and keeps the same store schema, so
`task-ingress audit verify` can check its file too (checkpoints every 1,000 records).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import msgpack
from task_ingress.actors.rules import gate
from task_ingress.actors.rules.chain import ChainKey, genesis_hash
from task_ingress.actors.storage import store_ops
from task_ingress.actors.storage.auditlog import (
    INSERT_AUDIT,
    read_head,
    read_records,
    write_checkpoint,
)
from task_ingress.actors.storage.chainstart import open_chain
from task_ingress.actors.storage.schema import connect
from task_ingress.messages.audit import CHECKPOINT_EVERY, AuditRecord
from task_ingress.messages.codec import decode_envelope, encode_reply
from task_ingress.messages.limits import SPEC_LIMITS
from task_ingress.messages.outcomes import Outcome
from task_ingress.messages.peers import PeerCard
from task_ingress.messages.reasons import Action, Reason
from task_ingress.messages.requests import AnyRequest, IngressContext


class LockBaseline:
    """greet / leave / submit / deliver / audit with locks and one durable txn per request."""

    def __init__(self, store_path: str, *, greet_interval: float = 30.0,
                 clock: Callable[[], float] = time.monotonic, durable: bool = True,
                 audit_key: str | None = None, local_peer_id: str = "local") -> None:
        self.store_path = os.path.abspath(store_path)
        self.greet_interval = greet_interval
        self.clock = clock
        self.durable = durable
        self.key = ChainKey(bytes.fromhex(audit_key) if audit_key else os.urandom(32))
        self.local_peer_id = local_peer_id
        self.limits = SPEC_LIMITS
        self._channels: dict[tuple[str, str], threading.Lock] = {}
        self._channels_lock = threading.Lock()
        self._greets: dict[tuple[str, str, str], tuple[float, bool]] = {}
        self._db_lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._store_id = ""
        self._seq = 0
        self._head = ""
        self._since_checkpoint = 0

    # ---- lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        """Open the store (WAL, synchronous=FULL), check and load the chain head (as Audit
        does: `chainstart.open_chain`)."""
        self._conn = connect(self.store_path, self.durable)
        chain = open_chain(self._conn, self.store_path, self.key)
        self._store_id, self._seq, self._head = chain.store_id, chain.seq, chain.head

    def close(self) -> None:
        """Write the final checkpoint and close the connection."""
        with self._db_lock:
            if self._conn is not None:
                self._checkpoint()
                self._conn.close()
                self._conn = None

    def __enter__(self) -> LockBaseline:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # ---- presence ----------------------------------------------------------------
    def _channel_lock(self, workspace: str, channel: str) -> threading.Lock:
        with self._channels_lock:
            return self._channels.setdefault((workspace, channel), threading.Lock())

    def greet(self, workspace: str, channel: str, card: PeerCard) -> None:
        """Visible from now, with this card; waits for the channel's request in flight."""
        with self._channel_lock(workspace, channel):
            self._greets[(workspace, channel, card.peer_id)] = (
                self.clock(), gate.grants_write(card.capabilities, card.proof))

    def leave(self, workspace: str, channel: str, peer_id: str) -> None:
        """Invisible from now; waits for the channel's request in flight."""
        with self._channel_lock(workspace, channel):
            self._greets.pop((workspace, channel, peer_id), None)

    # ---- requests ----------------------------------------------------------------
    def submit(self, context: IngressContext, request: Any) -> Outcome:
        """Judge, apply and audit one request in one durable transaction."""
        size = len(msgpack.packb(request.model_dump(exclude_none=True), use_bin_type=True)) \
            if isinstance(request, AnyRequest) else 0
        return self._judge(context, request, None, size)

    def deliver(self, envelope: bytes, *, workspace: str, channel: str, peer_id: str) -> bytes:
        """The wire path, as `IngressRuntime.deliver`."""
        decoded = decode_envelope(envelope)
        ctx = IngressContext(workspace=workspace, peer_id=peer_id, channel=channel,
                             request_id=decoded.request_id)
        outcome = self._judge(ctx, decoded.request, decoded.rejection, decoded.size,
                              decoded.action)
        return encode_reply(outcome)

    def _judge(self, context: IngressContext, request: Any, preset: Reason | None, size: int,
               action: Action | None = None) -> Outcome:
        ctx = gate.normalize_context(context)
        act = request.action if isinstance(request, AnyRequest) else (action or Action.UNKNOWN)
        reason = preset or gate.check_context(ctx)
        if reason is not None or request is None:
            return self._reject(ctx, act, reason or Reason.INVALID_REQUEST, size)
        with self._channel_lock(ctx.workspace, ctx.channel):
            seen = self._greets.get((ctx.workspace, ctx.channel, ctx.peer_id))
            now = self.clock()
            if seen is None or now - seen[0] >= 2 * self.greet_interval \
                    or ctx.peer_id == self.local_peer_id:
                return self._reject(ctx, act, Reason.PEER_NOT_FOUND, size)
            if not seen[1]:
                return self._reject(ctx, act, Reason.CAPABILITY_DENIED, size)
            return self._record(ctx, size, lambda conn: store_ops.judge_and_apply(
                conn, ctx, request, self.limits, time.time()))

    def _reject(self, ctx: IngressContext, action: Action, reason: Reason, size: int) -> Outcome:
        outcome = Outcome.rejected(gate.safe_field(ctx.request_id), action, reason)
        return self._record(ctx, size, lambda conn: outcome)

    def _record(self, ctx: IngressContext, size: int,
                judge: Callable[[sqlite3.Connection], Outcome]) -> Outcome:
        """One durable transaction: `judge` (which may write) and the chained audit record."""
        with self._db_lock:
            conn = self._open()
            conn.execute("BEGIN IMMEDIATE")
            try:
                outcome = judge(conn)
                self._append(ctx, outcome, size)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                self._reload_head()
                raise
            self._maybe_checkpoint()
        return outcome

    # ---- audit -------------------------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("the baseline is not running")
        return self._conn

    def _append(self, ctx: IngressContext, outcome: Outcome, size: int) -> None:
        """Chain and insert the record (caller holds the db lock, inside the txn)."""
        actor = gate.derived_actor(ctx) if gate.check_context(ctx) is None else ""
        record: dict[str, Any] = {
            "seq": self._seq + 1, "at": time.time(),
            "workspace": gate.safe_field(ctx.workspace), "channel": gate.safe_field(ctx.channel),
            "peer_id": gate.safe_field(ctx.peer_id), "actor": gate.safe_field(actor, 300),
            "request_id": gate.safe_field(ctx.request_id), "action": outcome.action.value,
            "outcome": "accepted" if outcome.accepted else "rejected",
            "reason": outcome.reason.value if outcome.reason else None,
            "task_id": outcome.task_id, "run_id": outcome.run_id, "payload_size": size,
            "replay": outcome.replay, "prev_hash": self._head, "trust": ctx.trust,
        }
        record["hash"] = self.key.seal(record)
        self._open().execute(INSERT_AUDIT, record)
        self._seq, self._head = record["seq"], record["hash"]
        self._since_checkpoint += 1

    def _reload_head(self) -> None:
        self._seq, self._head = read_head(self._open(), genesis_hash(self._store_id))

    def _maybe_checkpoint(self) -> None:
        if self._since_checkpoint >= CHECKPOINT_EVERY:
            self._checkpoint()

    def _checkpoint(self) -> None:
        if self._seq == 0:
            return
        write_checkpoint(self.store_path, self.key, self._store_id, self._seq, self._head)
        self._since_checkpoint = 0

    def audit(self) -> list[AuditRecord]:
        """Every committed record, in commit order."""
        with self._db_lock:
            return read_records(self._open())

    def store_file(self) -> str:
        """The SQLite file."""
        return self.store_path


def remove_store(path: str) -> None:
    """Delete a store file and its WAL/SHM/checkpoint companions."""
    for suffix in ("", "-wal", "-shm", ".checkpoint", ".key"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path + suffix)
