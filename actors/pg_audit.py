"""PgAudit: the Audit actor of a runtime on PostgreSQL — the fence's shard's keyed chain.

Accepts what Audit accepts and answers the same way (a reply never precedes its durable
record), with the chain in PostgreSQL (actors/storage/pg_auditlog.py):
- `Wiring` -> connects; in one fenced transaction writes the chain roster if the cluster
  has none (pg_roster: every shard's genesis row), then checks the shard's chain against
  the roster and its head row (refusing to extend a chain deleted, replaced, or not ending
  there); then chains the outbox rows a previous holder (or a crash) left for the shard;
  replies `Started`.
- every group commit is ONE transaction that starts with `pg_store.lock_fence` (the
  shard's lease row `FOR UPDATE`, compared with the runtime's fence), checks the head row
  still names this actor's head, deletes the batch's outbox rows still waiting, inserts
  the records and moves the head row, in two round trips (pg_auditlog.append_fenced). A
  deposed holder therefore never appends: the chain cannot fork. What it cannot audit it
  answers `task_ingress_unavailable`, counts (`fenced_off`) and logs (`audit.fenced_off`);
  the outbox rows of writes its store did commit stay behind for the shard's next holder
  to chain.
- a lost connection: accepted writes (outbox rows) are retried, on a new connection,
  until they are chained or the lease is found gone; everything else is answered
  `task_ingress_unavailable` at once.
- `LeaseWanted` -> lends the shard chain's position; the store chains its batch in its own
  fenced transaction (pg_auditlog.write_chained) and gives the lease back advanced. A
  lease given back unused, or taken back from a dead store, is settled by a fenced read
  of the records after the lent head (pg_auditlog.records_after): records a store of this
  holding committed there become the head, and their requests are answered as recorded
  (by the router, for a dead store's), never recorded twice.
There is no checkpoint file: the head row, rewritten in every append, is the checkpoint.
"""

from __future__ import annotations

from typing import Any

import psycopg
from task_ingress.actors.audit import AUDIT_RETRY_SECONDS, Audit
from task_ingress.actors.rules.chain import ChainKey
from task_ingress.actors.rules.shards import Fence
from task_ingress.actors.storage import pg_auditlog, pg_store
from task_ingress.actors.storage.auditlog import audit_fields, record_key
from task_ingress.actors.storage.chainstart import ChainRefused
from task_ingress.actors.storage.pg_auditlog import ChainMoved, ShardChain
from task_ingress.actors.storage.pg_roster import rostered_chain_id
from task_ingress.actors.storage.pg_schema import ensure_store_schema
from task_ingress.actors.storage.pg_store import Fenced
from task_ingress.actors.storage.schema import decode_outbox
from task_ingress.messages.outcomes import Outcome
from task_ingress.messages.protocol import (
    AuditRead,
    Drained,
    Flush,
    LeaseWanted,
    QueryFailed,
    ReadAudit,
    Started,
    Verdict,
    Verdicts,
    Wiring,
)
from task_ingress.messages.reasons import Reason


class PgAudit(pg_store.PgSession, Audit):
    """The only writer of its shard's chain while its runtime holds the shard's lease."""

    UNREACHABLE = "audit.database_unreachable"

    def __init__(self) -> None:
        super().__init__()
        self.pg: psycopg.Connection[Any] | None = None
        self.fence: Fence | None = None
        self.chain: ShardChain | None = None
        self.deposed = False
        """The lease (or the chain) moved on once: nothing is ever appended again."""
        self.fenced_off = 0
        """Records not written (and answered `task_ingress_unavailable`) once deposed."""
        self.unsure = False
        """A lease came back unused from a store that may have committed under it (its
        connection lost after COMMIT) or was taken back unread: the records after the head
        are read (`_adopt`) before the chain is appended to or lent again."""

    def receiveMsg_Wiring(self, msg: Wiring, sender: Any) -> None:
        """Connect, check or start the shard's chain, chain left-over outbox rows."""
        try:
            s = msg.settings
            self.settings = s
            try:
                self.key = ChainKey.from_hex(s.audit_key)
            except ValueError:
                raise ValueError("the audit key is missing or not hex") from None
            if s.fence is None or not s.database_url:
                raise ValueError("a PostgreSQL audit needs database_url and a fence")
            fence = self.fence = Fence(*s.fence)
            self.pg = self._connect()
            ensure_store_schema(self.pg)
            with self.pg.transaction():
                pg_store.lock_fence(self.pg, fence)
                chain_id = rostered_chain_id(self.pg, self.key, fence.shard)
                self.chain = pg_auditlog.open_shard_chain(self.pg, fence.shard, self.key,
                                                          chain_id)
            self.seq, self.head = self.chain.seq, self.chain.head
            self._drain_outbox()
            self.send(sender, Started(ticket=msg.ticket))
        except Exception as exc:  # reported to the facade, which raises it to the embedder
            why = str(exc) if isinstance(exc, ChainRefused | Fenced) else repr(exc)
            self.send(sender, Started(ticket=msg.ticket, error=f"audit: {why}"))

    def receiveMsg_LeaseWanted(self, msg: LeaseWanted, sender: Any) -> None:
        """As Audit's, lending a head checked first when a lease came back in doubt."""
        if self.lent is None and self.unsure and not self.reclaiming:
            self._settle()  # a take-back's read still owed is tried by Audit's (`_read_back`)
        super().receiveMsg_LeaseWanted(msg, sender)

    def _lease_back(self, msg: Verdicts, sender: Any) -> None:
        """As Audit's; a lease back unused (the store was fenced off, found the chain moved,
        lost its connection or failed) is settled first: what the store may have committed
        under it all the same is read back (`_adopt`), and its requests answered as
        recorded, never recorded twice."""
        assert msg.lease is not None and self.chain is not None
        lent = self.lent
        if (msg.chained or lent is None or msg.lease.lease_id != lent.lease_id
                or sender != self.lessee):
            super()._lease_back(msg, sender)
            self.chain.seq, self.chain.head = self.seq, self.head
            return
        self.lent = self.lessee = None
        self.unsure = True
        found = self._settle()
        if found is None:
            # Unreadable now, as an append on a lost connection: answered unavailable,
            # nothing recorded; the next append or lease reads back first.
            self._answer([(v, _unavailable(v)) for v in msg.items])
            if self.pending:
                self.receiveMsg_Flush(Flush(), sender)
            return
        recorded = {d.key: d for d in map(Drained.from_record, found)}
        done = [(v, recorded[key].outcome(v.outcome.request_id, v.outcome.action))
                for v in msg.items if (key := record_key(v.flight.context)) in recorded]
        if done:
            self._answer(done)
        rest = tuple(v for v in msg.items if record_key(v.flight.context) not in recorded)
        # Give Audit the lease back again (it was cleared above) with what is left.
        self.lent, self.lessee = lent, sender
        super()._lease_back(Verdicts(items=rest, lease=msg.lease), sender)

    def _settle(self) -> list[dict[str, Any]] | None:
        """`_adopt` on the current connection: the records found after the head (empty
        when deposed now), or None when the database cannot be read now."""
        conn = None if self.deposed else self._connection()
        found: list[dict[str, Any]] = []
        if conn is None and not self.deposed:
            return None
        try:
            if conn is not None:
                found = self._adopt(conn)
        except (Fenced, ChainMoved) as exc:
            self.log.error("audit.chain_moved" if isinstance(exc, ChainMoved)
                           else "audit.fenced", error=str(exc))
            self._depose(str(exc))
        except psycopg.Error as exc:
            self.log.error("audit.settle_failed", error=repr(exc))
            return None
        self.reclaiming = ""  # read (`_adopt` handed the records on), or deposed: unreadable
        return found

    def _adopt(self, conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
        """Read the records after the head (`pg_auditlog.records_after`, fenced) that a
        store of this holding committed under a lease not given back advanced; they become
        the head. Raises as records_after."""
        fence, chain, key = self.fence, self.chain, self.key
        assert fence is not None and chain is not None and key is not None
        records = pg_auditlog.records_after(conn, fence, key, self.seq, self.head)
        if records:
            self.seq, self.head = int(records[-1]["seq"]), str(records[-1]["hash"])
            chain.seq, chain.head = self.seq, self.head
            self.log.warning("audit.lease_records_adopted", records=len(records))
        self.unsure = False
        if self.reclaiming:
            # A dead store's lease still unread: what is found is (also) its records, for
            # the router, whichever read finds them (a take-back's retry, or an append's
            # read-back first). A live store's among them are answered by Audit first (its
            # Dones reach the router before the ProbeDone), so the router finds them
            # answered.
            self.orphans.extend(Drained.from_record(r) for r in records)
            self.reclaiming = ""
        return records

    def _take_back(self, why: str) -> bool:
        """Audit's, on the shard's chain: what a dead store committed under the lease is
        read back (fenced) and becomes the head; its records go to the router.

        False while the database cannot be read: the chain is `unsure` (the next append,
        or lease, reads it back first) and, as Audit's, the read is retried on a wakeup and
        probes wait for it, so the router never answers failed (and records again) a
        request whose write the dead store committed."""
        self.lent = self.lessee = None
        self.unsure = True
        first = not self.reclaiming
        self.reclaiming = why  # whichever read succeeds first hands the records on
        found = self._settle()
        self.log.warning("audit.lease_taken_back", why=why, records=len(found or []),
                         read=found is not None)
        if found is None:
            if first:  # one retry chain: the wakeup schedules the next
                self.wakeupAfter(AUDIT_RETRY_SECONDS)
            return False
        return True

    def _read_back(self) -> bool:
        """A take-back's read tried again, when one is still owed (the lease itself is back
        already): one attempt per handler, a connection attempt may take seconds."""
        return not self.reclaiming or self._settle() is not None

    def _append(self, conn: psycopg.Connection[Any], batch: list[Verdict],
                boxed: list[int] | None) -> list[tuple[int, bytes]]:
        """One fenced transaction (`pg_auditlog.append_fenced`) that chains the batch's
        records, or (`boxed` None) every outbox row of the shard; returns the outbox rows it
        took. The chain's position is restored when the transaction does not commit."""
        if self.unsure:
            self._adopt(conn)
        fence, chain, key = self.fence, self.chain, self.key
        assert fence is not None and chain is not None and key is not None

        def records_for(taken: list[tuple[int, bytes]]) -> list[dict[str, Any]]:
            if boxed is None:
                return self._decoded(taken)
            waiting = {i for i, _ in taken}
            return [audit_fields(v.flight, v.outcome) for v in batch
                    # an outbox row already chained by a drain is not chained twice
                    if v.outbox_id is None or v.outbox_id in waiting]

        taken = pg_auditlog.append_fenced(conn, fence, key, chain, boxed, records_for)
        self.seq, self.head = chain.seq, chain.head
        return taken

    @staticmethod
    def _decoded(rows: list[tuple[int, bytes]]) -> list[dict[str, Any]]:
        fields = []
        for row_id, blob in rows:
            decoded = decode_outbox(blob)
            if decoded is None:  # never chain garbage, never drop a write's record
                raise ValueError(f"unreadable outbox row {row_id}")
            fields.append(dict({"trust": None}, **decoded))
        return fields

    def _drain_outbox(self) -> list[tuple[int, dict[str, Any]]]:
        """Chain every outbox row of the shard (a previous holder's, or a dead store's)."""
        conn = None if self.deposed else self._connection()
        if conn is None:
            return []
        try:
            taken = self._append(conn, [], None)
        except Fenced as exc:
            self._depose(str(exc))
            return []
        except (ChainMoved, psycopg.Error) as exc:
            self.log.error("audit.drain_failed", error=repr(exc))
            if isinstance(exc, ChainMoved):
                self._depose(str(exc))
            return []
        if taken:
            self.log.warning("audit.outbox_drained", records=len(taken))
        return list(zip((i for i, _ in taken), self._decoded(taken), strict=True))

    def _commit(self, batch: list[Verdict]) -> bool:
        conn = None if self.deposed else self._connection()
        if conn is None:
            return False
        try:
            self._append(conn, batch, [v.outbox_id for v in batch if v.outbox_id is not None])
        except Fenced as exc:
            self._depose(str(exc))
            return False
        except ChainMoved as exc:
            self.log.error("audit.chain_moved", error=str(exc))
            self._depose(str(exc))
            return False
        except Exception as exc:  # a database error, or a bug: nothing was appended
            self.log.error("audit.commit_failed", error=repr(exc), records=len(batch))
            return False
        return True

    def _depose(self, why: str) -> None:
        if not self.deposed:
            fence = self.fence
            self.log.warning("audit.deposed", shard=fence.shard if fence else None,
                             epoch=fence.epoch if fence else None, why=why)
        self.deposed = True

    def _uncommitted(self, batch: list[Verdict]) -> list[tuple[Verdict, Outcome]]:
        """Deposed: everything is answered unavailable, unaudited (counted and logged).
        Connection lost: accepted writes are retried, the rest answered unavailable.
        Any other database error: as the SQLite Audit (retry writes, fail the rest)."""
        if self.deposed:
            self.fenced_off += len(batch)
            self.log.warning(
                "audit.fenced_off", outcome="rejected",
                reason=Reason.TASK_INGRESS_UNAVAILABLE.value, fenced_off=self.fenced_off,
                request_ids=[v.flight.context.request_id for v in batch])
            return [(v, _unavailable(v)) for v in batch]
        if pg_store.lost(self.pg):
            kept = [v for v in batch if v.outbox_id is not None]
            if kept:
                self.pending = kept + self.pending
                self.wakeupAfter(0.2)
            return [(v, _unavailable(v)) for v in batch if v.outbox_id is None]
        return super()._uncommitted(batch)

    def _checkpoint(self, force: bool) -> None:
        """Nothing to do: the head row is written in every append's transaction."""

    def receiveMsg_ReadAudit(self, msg: ReadAudit, sender: Any) -> None:
        """Answer with every committed record of the shard's chain, in seq order."""
        for attempt in (1, 2):
            try:
                conn = self._connection()
                if conn is None or self.fence is None:
                    raise RuntimeError("the database cannot be reached")
                records = pg_auditlog.read_shard_records(conn, self.fence.shard, msg.since)
                self.send(sender, AuditRead(ticket=msg.ticket, records=tuple(records)))
                return
            except Exception as exc:
                # A connection found lost by this read (the store now writes the records,
                # so a read may be the first use in a while) is retried once, reconnected.
                if attempt == 1 and isinstance(exc, psycopg.Error) and pg_store.lost(self.pg):
                    continue
                self.send(sender, QueryFailed(ticket=msg.ticket, error=repr(exc)))
                return

    def receiveMsg_ActorExitRequest(self, msg: Any, sender: Any) -> None:
        """Shutdown: commit and answer what is buffered, then close (a lease still out is
        taken back first, as Audit does: were its store still to commit under it, it would
        find the head row moved and write nothing)."""
        if self.pending:
            if self.lent is not None:
                self._take_back("shutdown")
            self.receiveMsg_Flush(Flush(), sender)
        if self.pg is not None:
            self.pg.close()
            self.pg = None


def _unavailable(verdict: Verdict) -> Outcome:
    return Outcome.rejected(verdict.outcome.request_id, verdict.outcome.action,
                            Reason.TASK_INGRESS_UNAVAILABLE)
