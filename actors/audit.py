"""Audit actor: turns judged requests into keyed, chained records, durably, then answers.

Accepts:
- `Wiring` (from the runtime) -> opens the store file, checks the chain against its
  checkpoint (refusing to extend a log that does not match it), drains outbox rows a crash
  left behind into chained records, replies `Started`.
- `Verdicts` (from Router, Presence, Capability: one per batch they judged; from TaskStore:
  one per commit) -> buffered; on the next `Flush` all buffered records commit in one
  transaction, then each destination gets one message for the whole commit: `Replies` (to
  the requests' `reply_to`) and `Dones` (to the router, which frees their channel slots).
  A reply never precedes its durable record (SPEC §6).
- `LeaseWanted` (from TaskStore) -> commits what is buffered, then lends the chain's head
  (`ChainLease`): the store appends its batch's records in its own transaction and gives
  the lease back with that batch's `Verdicts` (`chained`: durable already, answered at
  once). While a lease is out Audit commits nothing, so the chain has one writer at a
  time. A lease whose store died (a `Probe` or `Rewire` arrives, or another store asks) is
  taken back from the database: the records the dead store committed become the head, and
  go to the router with the next `ProbeDone` so their requests get the outcome recorded.
  A take-back that cannot read the file is retried on a wakeup; meanwhile nothing is lent
  or committed and probes wait.
- `LeaseDropped` (from TaskStore at shutdown) -> the lease is back, unused.
- `Rewire` (from the router: the TaskStore was restarted) -> takes back a lease the dead
  store held.
- `ReadAudit` (from the runtime) -> `AuditRead` with every committed record.
- `Flush` (from itself) -> group commit.
- `Probe` (from TaskStore, started by the router) -> commits and answers what is buffered,
  then `ProbeDone` to the router.
- `ActorExitRequest` -> final checkpoint.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from task_ingress.actors.base import GateActor, group_by_address
from task_ingress.actors.log import get_logger, info_enabled
from task_ingress.actors.rules import gate
from task_ingress.actors.rules.chain import ChainKey
from task_ingress.actors.storage.auditlog import (
    AUDIT_COLUMNS,
    AUDIT_NAMES,
    INSERT_AUDIT_ROW,
    audit_fields,
    audit_row,
    read_records,
    write_checkpoint,
)
from task_ingress.actors.storage.chainstart import ChainRefused, open_chain
from task_ingress.actors.storage.schema import connect, decode_outbox
from task_ingress.messages.outcomes import Outcome
from task_ingress.messages.protocol import (
    AuditRead,
    ChainLease,
    Dones,
    Drained,
    Flush,
    InFlight,
    LeaseDropped,
    LeaseWanted,
    Probe,
    ProbeDone,
    QueryFailed,
    ReadAudit,
    Replied,
    Replies,
    Rewire,
    Settings,
    Started,
    Verdict,
    Verdicts,
    Wiring,
)

AUDIT_RETRY_SECONDS = 0.2


class Audit(GateActor):
    """Owner of the keyed chain; the only writer of audit rows and checkpoints."""

    def __init__(self) -> None:
        super().__init__()
        self.settings: Settings | None = None
        self.conn: sqlite3.Connection | None = None
        self.key: ChainKey | None = None
        self.store_id = ""
        self.seq = 0
        self.head = ""
        self.pending: list[Verdict] = []
        self.flush_queued = False
        self.unchecked = 0
        self.last_checkpoint = time.monotonic()
        self.lent: ChainLease | None = None
        self.lessee: Any = None
        self.orphans: list[Drained] = []
        """Records a dead store chained under a lease and never reported: for the router."""
        self.reclaiming = ""
        """Why a lease is being taken back, while reading it back failed: retried on a
        wakeup; until then nothing is committed or lent (`waiting`) and probes wait."""
        self.waiting: tuple[LeaseWanted, Any] | None = None
        self.held_probes: list[Probe] = []
        self.log = get_logger(actor="audit")

    def receiveMsg_Wiring(self, msg: Wiring, sender: Any) -> None:
        """Open the store, check and load the chain head, drain the outbox; reply Started."""
        try:
            self.settings = msg.settings
            try:
                self.key = ChainKey.from_hex(msg.settings.audit_key)
            except ValueError:
                raise ValueError("the audit key is missing or not hex") from None
            self.conn = connect(msg.settings.store_path, msg.settings.durable)
            chain = open_chain(self.conn, msg.settings.store_path, self.key)
            self.store_id, self.seq, self.head = chain.store_id, chain.seq, chain.head
            self._drain_outbox()
            self.send(sender, Started(ticket=msg.ticket))
        except Exception as exc:  # reported to the facade, which raises it to the embedder
            why = str(exc) if isinstance(exc, ChainRefused) else repr(exc)
            self.send(sender, Started(ticket=msg.ticket, error=f"audit: {why}"))

    def _drain_outbox(self) -> list[tuple[int, dict[str, Any]]]:
        """Chain the outbox rows nobody reported (crash, dead store); return each one's id
        and fields."""
        assert self.conn is not None
        rows = self.conn.execute("SELECT id, record FROM outbox ORDER BY id").fetchall()
        if not rows:
            return []
        decoded = [decode_outbox(blob) for _, blob in rows]
        # Outbox rows written before AuditRecord.trust existed have none to chain.
        fields = [dict({"trust": None}, **f) for f in decoded if f is not None]
        if len(fields) < len(rows):  # never chain garbage, never drop a write's record
            bad = [r[0] for r, f in zip(rows, decoded, strict=True) if f is None]
            raise ValueError(f"unreadable outbox rows {bad} (see `task-ingress audit verify`)")
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self._insert([self._chain(f) for f in fields])
            self.conn.executemany("DELETE FROM outbox WHERE id = ?", [(r[0],) for r in rows])
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self._checkpoint(force=True)
        self.log.warning("audit.outbox_drained", records=len(fields))
        return [(int(r[0]), f) for r, f in zip(rows, fields, strict=True)]

    def _chain(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Give the record its place in the chain (seq, prev_hash, hash) and advance the head."""
        assert self.key is not None
        record = self.key.link(fields, self.seq + 1, self.head, time.time())
        self.seq += 1
        self.head = record["hash"]
        self.unchecked += 1
        return record

    def _insert(self, records: list[dict[str, Any]]) -> None:
        assert self.conn is not None
        self.conn.executemany(INSERT_AUDIT_ROW, [audit_row(r) for r in records])

    def receiveMsg_Verdicts(self, msg: Verdicts, sender: Any) -> None:
        """Judged requests (one message per store commit or gate batch): buffered, in order,
        until the Flush behind them; a store's batch chained under a lease: answered now."""
        if msg.lease is not None:
            self._lease_back(msg, sender)
            return
        self.pending.extend(msg.items)
        if not self.flush_queued:
            self.flush_queued = True
            self.send(self.myAddress, Flush())

    def _lease_back(self, msg: Verdicts, sender: Any) -> None:
        """The store's batch with the lease it chained under, advanced when it committed."""
        assert msg.lease is not None
        ours = (self.lent is not None and msg.lease.lease_id == self.lent.lease_id
                and sender == self.lessee)
        if not ours:
            # Taken back already, so its store is dead: the router answers every request it
            # took (with the records it committed, found as orphans; failed otherwise).
            self.log.warning("audit.late_lease", records=len(msg.items))
            return
        self.lent = self.lessee = None
        if msg.chained:
            self.seq, self.head = msg.lease.seq, msg.lease.head
            self.unchecked += len(msg.items)
            self._answer([(v, v.outcome) for v in msg.items])
            self._checkpoint(force=False)
        else:  # nothing committed (a failed batch): its failures are chained here
            self.pending.extend(msg.items)
        if self.pending:
            self.receiveMsg_Flush(Flush(), sender)

    def receiveMsg_LeaseWanted(self, msg: LeaseWanted, sender: Any) -> None:
        """Commit what is buffered, then lend the head to the store for its next batch."""
        if self.lent is not None and not self._take_back("another lease asked for"):
            self.waiting = (msg, sender)  # lent once the lease is read back
            return
        if self.held_probes or self.reclaiming:
            # Settle a read back still owed first (or one the lease's return made moot) and
            # report the probes held for it, which came before this ask: a held probe
            # reported with the chain lent again, or a retry finding it lent, would take
            # this live store's lease back and drop its batch's answers.
            if self._read_back():
                self._release_probes(sender)
            elif self.held_probes:
                self.waiting = (msg, sender)
                return
        self.receiveMsg_Flush(Flush(), sender)
        self.lent = ChainLease(lease_id=msg.lease_id, seq=self.seq, head=self.head)
        self.lessee = sender
        self.send(sender, self.lent)

    def receiveMsg_LeaseDropped(self, msg: LeaseDropped, sender: Any) -> None:
        """The store will not use the lease (shutdown): Audit may commit again."""
        if self.lent is not None and self.lent.lease_id == msg.lease_id and sender == self.lessee:
            self.lent = self.lessee = None
            if self.pending:
                self.receiveMsg_Flush(Flush(), sender)

    def receiveMsg_Rewire(self, msg: Rewire, sender: Any) -> None:
        """The TaskStore was restarted: a lease the dead one held comes back from the file."""
        if (self.lent is not None and self.lessee != msg.store
                and not self._take_back("the store was restarted")):
            return
        if self.pending:
            self.receiveMsg_Flush(Flush(), sender)

    def _take_back(self, why: str) -> bool:
        """Take back a lease from a store that died: whatever it chained under it and
        committed is in the file after the head Audit lent; that becomes the head, and the
        records are kept for the router (`orphans`), whose requests were never answered.

        False when the file cannot be read: the lease stays out (lending or committing from
        the old head could not be right: the dead store's records may be past it, and every
        later transaction would fail on their seq) and the read is tried again on a wakeup,
        so a passing error (a lock, a full disk freed) stalls writes only while it lasts."""
        assert self.conn is not None
        try:
            rows = self.conn.execute(
                f"SELECT {AUDIT_COLUMNS} FROM audit WHERE seq > ? ORDER BY seq", (self.seq,)
            ).fetchall()
        except sqlite3.Error as exc:
            self.log.error("audit.take_back_failed", why=why, error=repr(exc), seq=self.seq)
            if not self.reclaiming:  # one retry chain: the wakeup schedules the next
                self.wakeupAfter(AUDIT_RETRY_SECONDS)
            self.reclaiming = why
            return False
        self.reclaiming = ""
        for row in rows:
            r = dict(zip(AUDIT_NAMES, row, strict=True))
            self.orphans.append(Drained.from_record(r))
            self.seq, self.head = int(r["seq"]), str(r["hash"])
            self.unchecked += 1
        self.lent = self.lessee = None
        self.log.warning("audit.lease_taken_back", why=why, records=len(rows))
        return True

    def receiveMsg_Flush(self, msg: Flush, sender: Any) -> None:
        """Group commit: chain and commit every buffered verdict, then answer each (not
        while the chain is lent: the lease comes back with the store's batch)."""
        self.flush_queued = False
        if self.lent is not None:
            return
        batch, self.pending = self.pending, []
        if not batch:
            return
        if self._commit(batch):
            answers = [(v, v.outcome) for v in batch]
        else:
            answers = self._uncommitted(batch)
        self._answer(answers)
        self._checkpoint(force=False)

    def _answer(self, answers: list[tuple[Verdict, Outcome]]) -> None:
        """Send the answers of durable (or failed) outcomes: one message per destination."""
        log_info = info_enabled()
        replies: list[tuple[Any, Replied]] = []
        dones: list[tuple[Any, int]] = []
        for verdict, outcome in answers:
            if log_info:
                self._log_outcome(verdict.flight, outcome)
            ticket = verdict.flight.submission.ticket
            replies.append((verdict.flight.reply_to,
                            Replied(ticket=ticket, outcome=outcome)))
            if verdict.flight.router is not None:
                dones.append((verdict.flight.router, ticket))
        # One message per destination per commit, replies first: a caller never learns of
        # a channel slot freeing before its own answer.
        for to, items in group_by_address(replies):
            self.send(to, Replies(items=tuple(items)))
        for to, tickets in group_by_address(dones):
            self.send(to, Dones(tickets=tuple(tickets)))

    def _uncommitted(self, batch: list[Verdict]) -> list[tuple[Verdict, Outcome]]:
        """A batch whose records did not commit: what to answer now (the rest is retried).

        A write the store already committed must not be answered "failed": its outbox row
        is durable and will be chained. Those verdicts are kept and retried shortly; the
        rest (nothing applied) are answered task_ingress_failed now."""
        kept = [v for v in batch if v.outbox_id is not None]
        if kept:
            self.pending = kept + self.pending
            self.wakeupAfter(AUDIT_RETRY_SECONDS)
        return [(v, Outcome.failed(v.outcome.request_id, v.outcome.action))
                for v in batch if v.outbox_id is None]

    def _commit(self, batch: list[Verdict]) -> bool:
        assert self.conn is not None
        seq, head, unchecked = self.seq, self.head, self.unchecked
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            boxed = [v.outbox_id for v in batch if v.outbox_id is not None]
            waiting = self._outbox_rows(boxed)
            self._insert([
                self._chain(audit_fields(v.flight, v.outcome)) for v in batch
                # an outbox row already chained by a start-up drain is never chained twice
                if v.outbox_id is None or v.outbox_id in waiting
            ])
            if boxed:
                self.conn.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in boxed])
            self.conn.execute("COMMIT")
            return True
        except Exception as exc:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            self.seq, self.head, self.unchecked = seq, head, unchecked
            self.log.error("audit.commit_failed", error=repr(exc), records=len(batch))
            return False

    def _outbox_rows(self, ids: list[int]) -> set[int]:
        """Which of these outbox rows still wait to be chained (one query per batch)."""
        if not ids:
            return set()
        assert self.conn is not None
        marks = ",".join("?" * len(ids))
        rows = self.conn.execute(f"SELECT id FROM outbox WHERE id IN ({marks})", ids)
        return {int(r[0]) for r in rows}

    def _log_outcome(self, flight: InFlight, outcome: Outcome) -> None:
        ctx = flight.context
        self.log.info(
            "ingress.outcome",
            peer_id=gate.safe_field(ctx.peer_id),
            channel=gate.safe_field(ctx.channel),
            workspace=gate.safe_field(ctx.workspace),
            request_id=gate.safe_field(ctx.request_id),
            action=outcome.action.value,
            outcome="accepted" if outcome.accepted else "rejected",
            reason=outcome.reason.value if outcome.reason else None,
            trust=ctx.trust,
        )

    def _checkpoint(self, force: bool) -> None:
        """Write (store, seq, head, HMAC) beside the store every N records / T seconds / on
        exit; a write that fails is logged and tried again at the next commit."""
        settings = self.settings
        if settings is None or self.key is None:
            return
        due = (
            self.unchecked >= settings.checkpoint_every
            or time.monotonic() - self.last_checkpoint >= settings.checkpoint_seconds
        )
        if not (force or (due and self.unchecked)):
            return
        try:
            write_checkpoint(settings.store_path, self.key, self.store_id, self.seq, self.head)
        except OSError as exc:
            # A checkpoint only bounds what the next start re-checks: it is retried at the
            # next commit. Raising here would cut short the handler that committed (a lease
            # never lent leaves the store waiting for good; a probe never reported).
            self.log.error("audit.checkpoint_failed", error=repr(exc), seq=self.seq)
            return
        self.unchecked = 0
        self.last_checkpoint = time.monotonic()

    def receiveMsg_Probe(self, msg: Probe, sender: Any) -> None:
        """Commit and answer everything received before the marker, chain what a dead store
        committed but never reported (its outbox rows), then report back with those and the
        records of a lease taken back.

        A live store passes the probe on only after giving back the lease it asked for, so
        a lease still out here belongs to a store that died."""
        if self.reclaiming or (self.lent is not None
                               and not self._take_back("a probe came through the new store")):
            self.held_probes.append(msg)  # reported once the lease is read back
            return
        self.receiveMsg_Flush(Flush(), sender)
        drained = self._drain_outbox()
        # Rows of writes whose verdicts Audit holds for a commit retry: durable now, so
        # answered here, once (the router learns it from the Dones ahead of ProbeDone);
        # reported to the router as well, they would be answered twice.
        held = {v.outbox_id: v for v in self.pending if v.outbox_id is not None}
        chained = {i for i, _ in drained if i in held}
        if chained:
            self.pending = [v for v in self.pending if v.outbox_id not in chained]
            self._answer([(held[i], held[i].outcome) for i in sorted(chained)])
        found = [Drained.from_record(f) for i, f in drained if i not in held] + self.orphans
        self.orphans = []
        self.send(msg.reply_to, ProbeDone(probe_id=msg.probe_id, drained=tuple(found)))

    def receiveMsg_WakeupMessage(self, msg: Any, sender: Any) -> None:
        """Retry a lease's take-back that could not read the file, or a failed audit commit
        of writes the store already made durable."""
        if self.reclaiming and not self._read_back():
            self.wakeupAfter(AUDIT_RETRY_SECONDS)
            return
        if self.held_probes or self.waiting is not None:
            self._after_take_back(sender)
        elif self.pending and not self.flush_queued and self.lent is None:
            self.receiveMsg_Flush(Flush(), sender)

    def _read_back(self) -> bool:
        """Try again a take-back whose read failed; True once done (or the lease came back
        meanwhile: its store was alive after all), with nothing left owed (`reclaiming`)."""
        if self.lent is None:
            self.reclaiming = ""
            return True
        return self._take_back(self.reclaiming)

    def _after_take_back(self, sender: Any) -> None:
        """What waited for a lease to be read back: the probes, then the lease asked for."""
        self._release_probes(sender)
        waiting, self.waiting = self.waiting, None
        if waiting is not None:
            self.receiveMsg_LeaseWanted(*waiting)
        elif self.pending:
            self.receiveMsg_Flush(Flush(), sender)

    def _release_probes(self, sender: Any) -> None:
        """Report the probes held while a lease was read back, in arrival order.

        One whose report fails is lost, as a probe whose handler fails always is
        (GateActor), but only it: raising here would also strand the lease asked for
        behind it (nothing asks again: the new store would wait for good)."""
        probes, self.held_probes = self.held_probes, []
        for probe in probes:
            try:
                self.receiveMsg_Probe(probe, sender)
            except Exception as exc:
                self.log.error("actor.handler_failed", message_type="Probe", request_ids=[],
                               error=repr(exc))

    def receiveMsg_ReadAudit(self, msg: ReadAudit, sender: Any) -> None:
        """Answer with every committed record, in commit order."""
        try:
            assert self.conn is not None
            records = tuple(read_records(self.conn, msg.since))
            self.send(sender, AuditRead(ticket=msg.ticket, records=records))
        except Exception as exc:
            self.send(sender, QueryFailed(ticket=msg.ticket, error=repr(exc)))

    def receiveMsg_ActorExitRequest(self, msg: Any, sender: Any) -> None:
        """Shutdown: flush what is buffered, write the final checkpoint, close the file.

        A lease still out now (its store stopped first, or died) is taken back first, so
        the rejections waiting behind it are recorded. Were the store still to commit under
        it, its first record would meet the one Audit wrote at the same seq (the primary
        key): its transaction fails whole, and the chain does not fork."""
        if self.pending:
            if self.lent is not None:
                self._take_back("shutdown")
            self.receiveMsg_Flush(Flush(), sender)
        if self.pending or self.held_probes:
            # The lease could not be read back (or a commit kept failing): these outcomes
            # go unrecorded and their callers learn the runtime closed. Said, not silent.
            self.log.error("audit.shutdown_unrecorded", records=len(self.pending),
                           probes=len(self.held_probes),
                           request_ids=[v.flight.context.request_id for v in self.pending])
        if self.conn is not None:
            self._checkpoint(force=True)
            self.conn.close()
            self.conn = None

