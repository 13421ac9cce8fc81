"""The chain lease between TaskStore and Audit, message by message (docs/durability.md).

The two production actors run outside any actor system here: their `send` is captured and
a test delivers each message when it chooses, so an interleaving a live system produces
only now and then (a rejection reaching Audit while the chain is lent, a probe overtaking
a lease, a store dying holding one) is played exactly.
"""

from __future__ import annotations

import secrets
import sqlite3
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from task_ingress.actors.audit import Audit
from task_ingress.actors.base import rejected_verdict
from task_ingress.actors.task_store import TaskStore
from task_ingress.messages import CreateTask, IngressContext, Reason
from task_ingress.messages.protocol import (
    ChainLease,
    InFlight,
    InFlights,
    LeaseDropped,
    LeaseWanted,
    Probe,
    ProbeDone,
    Replies,
    Rewire,
    Settings,
    Started,
    Submission,
    Verdicts,
    Wiring,
)
from task_ingress.messages.reasons import Action
from task_ingress.runtime.audit.read import open_readonly
from task_ingress.runtime.audit.verify import verify_store
from thespian.actors import ActorExitRequest, WakeupMessage


class Wire:
    """Actors by name, and every message they sent, in order, until delivered."""

    def __init__(self) -> None:
        self.actors: dict[str, Any] = {}
        self.queue: deque[tuple[str, str, Any]] = deque()  # (to, from, message)
        self.outside: list[tuple[str, Any]] = []  # to names that are not actors here

    def add(self, name: str, actor: Any) -> Any:
        actor._myRef = SimpleNamespace(address=name)  # what Actor.myAddress reads
        actor.send = lambda to, msg: self.queue.append((to, name, msg))
        actor.wakeupAfter = lambda delay, payload=None: self.queue.append(
            (name, name, WakeupMessage(delay, payload)))
        self.actors[name] = actor
        return actor

    def deliver(self, count: int = 1) -> None:
        """Deliver the next `count` messages addressed to actors (others are kept aside)."""
        for _ in range(count):
            to, sender, msg = self.queue.popleft()
            if to in self.actors:
                self.actors[to].receiveMessage(msg, sender)
            else:
                self.outside.append((to, msg))

    def next_is(self, to: str, kind: type) -> Any:
        assert self.queue, "nothing was sent"
        assert self.queue[0][0] == to and isinstance(self.queue[0][2], kind), self.queue[0]
        return self.queue[0][2]

    def settle(self) -> None:
        while self.queue:
            self.deliver()

    def replied(self) -> list[str]:
        """Request IDs answered so far, in answer order."""
        return [item.outcome.request_id for _, msg in self.outside
                if isinstance(msg, Replies) for item in msg.items]


def flight(request_id: str, peer: str = "pa") -> InFlight:
    ctx = IngressContext(workspace="ws", peer_id=peer, channel="ops", request_id=request_id)
    sub = Submission(ticket=len(request_id), context=ctx, request=CreateTask(title="t"),
                     action=Action.CREATE, payload_size=1, now=0.0)
    return InFlight(submission=sub, context=ctx, reply_to="caller", router=None, checked=True)


@pytest.fixture
def wire(tmp_path: Path) -> Iterator[Wire]:
    w = Wire()
    settings = Settings(store_path=str(tmp_path / "store.db"), durable=True,
                        local_peer_id="local", greet_interval=30.0, tasks_enabled=True,
                        audit_key=secrets.token_hex(32))
    audit, store = w.add("audit", Audit()), w.add("store", TaskStore())
    for name, actor in (("audit", audit), ("store", store)):
        actor.receiveMessage(Wiring(ticket=1, settings=settings, audit="audit"), "runtime")
        started = w.queue.pop()
        assert isinstance(started[2], Started) and not started[2].error, (name, started)
    yield w
    for actor in (store, audit):
        if actor.conn is not None:
            actor.conn.close()


def records(wire: Wire) -> list[tuple[int, str, str]]:
    path = wire.actors["audit"].settings.store_path
    with open_readonly(path) as conn:
        return [(int(r[0]), str(r[1]), str(r[2])) for r in conn.execute(
            "SELECT seq, request_id, outcome FROM audit ORDER BY seq")]


def verified(wire: Wire) -> bool:
    """`audit verify` of the store with the key it was written under."""
    settings = wire.actors["audit"].settings
    result = verify_store(settings.store_path, key=settings.audit_key)
    assert result.ok, [str(p) for p in result.problems]
    return True


def test_a_batch_and_its_records_commit_in_the_stores_one_transaction(wire: Wire) -> None:
    wire.actors["store"].receiveMessage(InFlights(items=(flight("a"), flight("b"))), "cap")
    assert wire.next_is("audit", LeaseWanted)
    wire.deliver()  # Audit lends
    lease = wire.next_is("store", ChainLease)
    assert (lease.seq, wire.actors["audit"].lent) == (0, lease)
    wire.deliver()  # the store applies and chains
    back = wire.next_is("audit", Verdicts)
    assert back.chained and back.lease.seq == 2
    assert records(wire) == [(1, "a", "accepted"), (2, "b", "accepted")]
    with open_readonly(wire.actors["audit"].settings.store_path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0
    wire.settle()
    assert wire.replied() == ["a", "b"] and wire.actors["audit"].lent is None
    assert verified(wire)


def test_audit_commits_nothing_while_the_chain_is_lent(wire: Wire) -> None:
    wire.actors["store"].receiveMessage(InFlights(items=(flight("w"),)), "cap")
    wire.deliver()  # Audit lends the head at seq 0
    # A rejection decided before the store reaches Audit while the lease is out.
    rejected = rejected_verdict(flight("r", peer="pb"), Reason.PEER_NOT_FOUND)
    wire.actors["audit"].receiveMessage(Verdicts(items=(rejected,)), "router")
    while not isinstance(wire.queue[0][2], ChainLease):
        wire.deliver()  # Audit's own Flush finds the chain lent: nothing committed
    assert records(wire) == [] and wire.replied() == []
    wire.settle()
    # The store's write took seq 1 from the lent head; the rejection came after it.
    assert records(wire) == [(1, "w", "accepted"), (2, "r", "rejected")]
    assert wire.replied() == ["w", "r"]
    assert verified(wire)


def test_a_probe_reaching_the_store_waits_behind_the_batch_its_lease_is_for(
    wire: Wire,
) -> None:
    wire.actors["store"].receiveMessage(InFlights(items=(flight("w"),)), "cap")
    wire.actors["store"].receiveMessage(Probe(probe_id=7, reply_to="router"), "cap")
    assert [type(m) for _, _, m in wire.queue] == [LeaseWanted]  # the probe is held
    wire.settle()
    done = [m for to, m in wire.outside if isinstance(m, ProbeDone)]
    assert wire.replied() == ["w"] and len(done) == 1 and done[0].drained == ()


def test_a_stale_lease_is_never_used(wire: Wire) -> None:
    store = wire.actors["store"]
    store.receiveMessage(InFlights(items=(flight("w"),)), "cap")
    asked = wire.next_is("audit", LeaseWanted).lease_id
    store.receiveMessage(ChainLease(lease_id=asked + 1, seq=0, head="x"), "audit")
    assert records(wire) == [] and store.pending and store.lease_asked == asked


def test_a_lease_whose_store_died_is_taken_back_with_what_it_committed(wire: Wire) -> None:
    audit = wire.actors["audit"]
    wire.actors["store"].receiveMessage(InFlights(items=(flight("a"), flight("b"))), "cap")
    wire.deliver(2)  # lent, applied and chained, committed ...
    late = wire.queue.popleft()  # ... and the store dies before its verdicts arrive
    assert isinstance(late[2], Verdicts) and late[2].chained
    audit.receiveMessage(Rewire(store="store-2"), "router")
    assert audit.lent is None and audit.seq == 2
    assert [(o.request_id, o.reason) for o in audit.orphans] == [("a", None), ("b", None)]
    # Were its verdicts still on their way, they are not answered a second time.
    audit.receiveMessage(late[2], late[1])
    audit.receiveMessage(Probe(probe_id=3, reply_to="router"), "store-2")
    wire.settle()
    done = [m for _, m in wire.outside if isinstance(m, ProbeDone)]
    assert [d.request_id for d in done[0].drained] == ["a", "b"] and not audit.orphans
    assert wire.replied() == []  # the router answers them, from the probe's report
    # The chain goes on from the dead store's records.
    rejected = rejected_verdict(flight("r", peer="pb"), Reason.PEER_NOT_FOUND)
    audit.receiveMessage(Verdicts(items=(rejected,)), "router")
    wire.settle()
    assert records(wire)[-1] == (3, "r", "rejected")
    assert verified(wire)


def test_a_store_shutting_down_with_a_lease_asked_drops_it_and_writes_outbox_rows(
    wire: Wire,
) -> None:
    store = wire.actors["store"]
    store.receiveMessage(InFlights(items=(flight("w"),)), "cap")
    wire.deliver()  # the lease is lent, on its way to a store that is stopping
    store.receiveMessage(ActorExitRequest(), "system")
    kinds = [type(m) for _, _, m in wire.queue]
    assert kinds == [ChainLease, LeaseDropped, Verdicts]
    wire.queue.popleft()  # the stopped store never reads it
    wire.settle()
    assert records(wire) == [(1, "w", "accepted")] and wire.replied() == ["w"]
    with open_readonly(wire.actors["audit"].settings.store_path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0


def _checkpoints_fail(wire: Wire, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every record due for a checkpoint, and writing one fails (a full disk: SQLite may
    still commit into its WAL's space while a new file cannot be made). Returns the seqs
    whose checkpoint was attempted."""
    audit = wire.actors["audit"]
    audit.settings = audit.settings.model_copy(update={"checkpoint_every": 1})
    tried: list[int] = []

    def no_space(path: str, key: Any, store_id: str, seq: int, head: str) -> Any:
        tried.append(seq)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("task_ingress.actors.audit.write_checkpoint", no_space)
    return tried


def test_a_checkpoint_that_cannot_be_written_before_a_lease_still_lends_the_chain(
    wire: Wire, monkeypatch: pytest.MonkeyPatch,
) -> None:
    tried = _checkpoints_fail(wire, monkeypatch)
    rejected = rejected_verdict(flight("r", peer="pb"), Reason.PEER_NOT_FOUND)
    wire.actors["audit"].receiveMessage(Verdicts(items=(rejected,)), "router")
    wire.actors["store"].receiveMessage(InFlights(items=(flight("w"),)), "cap")
    # The store's LeaseWanted reached Audit ahead of Audit's own Flush: Audit commits the
    # rejection before lending, and its checkpoint fails.
    wanted = next(m for m in wire.queue if isinstance(m[2], LeaseWanted))
    wire.queue.remove(wanted)
    wire.actors["audit"].receiveMessage(wanted[2], wanted[1])
    assert tried == [1]
    # Without the lease the store would wait for good: nothing else makes it ask again.
    assert [to for to, _, m in wire.queue if isinstance(m, ChainLease)] == ["store"]
    wire.settle()
    assert records(wire) == [(1, "r", "rejected"), (2, "w", "accepted")]
    assert wire.replied() == ["r", "w"] and wire.actors["audit"].lent is None
    assert verified(wire)


def test_a_checkpoint_that_cannot_be_written_at_a_lease_return_still_answers_the_rest(
    wire: Wire, monkeypatch: pytest.MonkeyPatch,
) -> None:
    wire.actors["store"].receiveMessage(InFlights(items=(flight("w"),)), "cap")
    wire.deliver()  # Audit lends the head at seq 0
    rejected = rejected_verdict(flight("r", peer="pb"), Reason.PEER_NOT_FOUND)
    wire.actors["audit"].receiveMessage(Verdicts(items=(rejected,)), "router")
    while not isinstance(wire.queue[0][2], ChainLease):
        wire.deliver()  # the rejection waits behind the lease
    tried = _checkpoints_fail(wire, monkeypatch)
    wire.settle()  # the lease comes back, its checkpoint fails
    assert tried and records(wire) == [(1, "w", "accepted"), (2, "r", "rejected")]
    assert wire.replied() == ["w", "r"]
    assert verified(wire)


def test_a_batch_whose_verdicts_cannot_be_built_commits_nothing_and_the_chain_goes_on(
    wire: Wire, monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(**fields: Any) -> Any:
        raise RuntimeError("a bug building the verdicts")

    monkeypatch.setattr("task_ingress.actors.task_store.Verdict", broken)
    wire.actors["store"].receiveMessage(InFlights(items=(flight("a"),)), "cap")
    wire.settle()
    monkeypatch.undo()
    # Answered failed, with a record Audit chained: the batch itself committed nothing, or
    # its records would sit in the file past the head Audit still holds.
    assert records(wire) == [(1, "a", "rejected")] and wire.replied() == ["a"]
    wire.actors["store"].receiveMessage(InFlights(items=(flight("b"),)), "cap")
    wire.settle()
    assert records(wire) == [(1, "a", "rejected"), (2, "b", "accepted")]
    assert verified(wire)


def test_audit_stopping_with_the_chain_lent_records_what_waits_and_the_chain_never_forks(
    wire: Wire,
) -> None:
    audit, store = wire.actors["audit"], wire.actors["store"]
    store.receiveMessage(InFlights(items=(flight("w"),)), "cap")
    wire.deliver()  # lent; the ChainLease waits in the queue
    rejected = rejected_verdict(flight("r", peer="pb"), Reason.PEER_NOT_FOUND)
    audit.receiveMessage(Verdicts(items=(rejected,)), "router")
    audit.receiveMessage(ActorExitRequest(), "system")
    assert records(wire) == [(1, "r", "rejected")]
    # The store, stopping later, still uses the lease it got: its batch fails whole.
    lease = next(m for to, _, m in wire.queue if to == "store")
    assert isinstance(lease, ChainLease)
    store.receiveMessage(lease, "audit")
    to, _, back = wire.queue[-1]
    assert to == "audit" and isinstance(back, Verdicts)
    assert not back.chained and [v.outcome.reason for v in back.items] == [
        Reason.TASK_INGRESS_FAILED]
    assert records(wire) == [(1, "r", "rejected")] and verified(wire)


class UnreadableTail:
    """Audit's connection, with the read of the records after a lent head failing `times`
    times (a disk error, a lock held too long) and everything else passed through."""

    def __init__(self, conn: sqlite3.Connection, times: int) -> None:
        self.conn, self.times = conn, times

    def execute(self, sql: str, *args: Any) -> Any:
        if "WHERE seq > ?" in sql and self.times:
            self.times -= 1
            raise sqlite3.OperationalError("disk I/O error")
        return self.conn.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)


def _store_dies_holding_the_lease(wire: Wire, times: int) -> Any:
    """Two writes committed under a lease whose store dies before reporting them; Audit's
    reads of them back fail `times` times. Returns Audit."""
    audit = wire.actors["audit"]
    wire.actors["store"].receiveMessage(InFlights(items=(flight("a"), flight("b"))), "cap")
    wire.deliver(2)  # lent, applied, chained and committed ...
    wire.queue.popleft()  # ... and its verdicts are lost with the store
    audit.conn = UnreadableTail(audit.conn, times)
    return audit


def test_a_lease_that_cannot_be_read_back_is_lent_again_once_it_can(wire: Wire) -> None:
    audit = _store_dies_holding_the_lease(wire, times=2)
    audit.receiveMessage(LeaseWanted(lease_id=9), "store-2")
    rejected = rejected_verdict(flight("r", peer="pb"), Reason.PEER_NOT_FOUND)
    audit.receiveMessage(Verdicts(items=(rejected,)), "router")
    wire.deliver(2)  # Audit's Flush (nothing: still lent), the first retry (fails again)
    # Nothing lent or committed from a head the dead store's records may be past.
    assert audit.lent is not None and records(wire) == [(1, "a", "accepted"),
                                                        (2, "b", "accepted")]
    assert not [m for _, m in wire.outside if isinstance(m, ChainLease)]
    wire.settle()  # the next retry reads them back
    lent = [(to, m.lease_id, m.seq) for to, m in wire.outside if isinstance(m, ChainLease)]
    # The rejection waiting behind the lease commits first, after the dead store's records.
    assert lent == [("store-2", 9, 3)] and records(wire)[-1] == (3, "r", "rejected")
    assert [o.request_id for o in audit.orphans] == ["a", "b"]
    assert verified(wire)


def test_a_probe_waits_for_a_lease_that_cannot_be_read_back(wire: Wire) -> None:
    audit = _store_dies_holding_the_lease(wire, times=1)
    audit.receiveMessage(Probe(probe_id=4, reply_to="router"), "store-2")
    assert not [m for _, m in wire.outside if isinstance(m, ProbeDone)]
    wire.settle()
    done = [m for _, m in wire.outside if isinstance(m, ProbeDone)]
    # Reported with the dead store's records, so the router answers them as recorded.
    assert len(done) == 1 and [d.request_id for d in done[0].drained] == ["a", "b"]
    assert audit.lent is None and not audit.orphans and wire.replied() == []


def test_a_write_held_for_a_commit_retry_and_chained_by_a_probe_is_answered_once(
    wire: Wire, monkeypatch: pytest.MonkeyPatch,
) -> None:
    audit, store = wire.actors["audit"], wire.actors["store"]
    store.key = None  # not chaining: the outbox path (as testing.OUTBOX_STORE)
    calls: list[int] = []
    real = audit._outbox_rows

    def busy_twice(ids: list[int]) -> set[int]:
        calls.append(len(ids))
        if len(calls) <= 2:
            raise sqlite3.OperationalError("database is locked")
        return real(ids)

    monkeypatch.setattr(audit, "_outbox_rows", busy_twice)
    store.receiveMessage(InFlights(items=(flight("w"),)), "cap")
    while not calls:
        wire.deliver()  # the write commits with its outbox row; Audit's commit fails
    assert wire.replied() == [] and [v.outbox_id for v in audit.pending] == [1]
    # A probe comes through before the retry; its commit fails too, its drain does not.
    audit.receiveMessage(Probe(probe_id=5, reply_to="router"), "store")
    wire.settle()
    done = [m for _, m in wire.outside if isinstance(m, ProbeDone)]
    assert len(done) == 1 and done[0].drained == ()  # not the router's to answer ...
    assert wire.replied() == ["w"]  # ... answered once, by Audit
    assert records(wire) == [(1, "w", "accepted")] and verified(wire)


def _second_store(wire: Wire) -> Any:
    """A restarted store, as the router starts one: the same file, its own name."""
    store = wire.add("store-2", TaskStore())
    store.receiveMessage(Wiring(ticket=1, settings=wire.actors["audit"].settings,
                                audit="audit"), "runtime")
    started = wire.queue.pop()
    assert isinstance(started[2], Started) and not started[2].error, started
    return store


def _ask_now(wire: Wire, store: Any, request_id: str) -> None:
    """`store` takes a batch; its LeaseWanted reaches Audit at once (ahead of whatever
    Audit has queued for itself)."""
    store.receiveMessage(InFlights(items=(flight(request_id),)), "cap")
    to, sender, wanted = wire.queue.pop()
    assert to == "audit" and isinstance(wanted, LeaseWanted)
    wire.actors["audit"].receiveMessage(wanted, sender)


def test_a_probe_held_for_a_read_back_is_reported_before_the_chain_is_lent_again(
    wire: Wire,
) -> None:
    audit = _store_dies_holding_the_lease(wire, times=1)
    store = _second_store(wire)
    audit.receiveMessage(Rewire(store="store-2"), "router")  # its read fails: retried
    # The new store passes a probe on, then asks for the chain; by now the file reads.
    audit.receiveMessage(Probe(probe_id=4, reply_to="router"), "store-2")
    _ask_now(wire, store, "c")
    wire.settle()
    done = [m for _, m in wire.outside if isinstance(m, ProbeDone)]
    assert len(done) == 1 and [d.request_id for d in done[0].drained] == ["a", "b"]
    # The probe came before the new store's ask: reported before the lease went out, it
    # cannot take that live store's lease back (dropping its batch's answers).
    assert wire.replied() == ["c"] and audit.lent is None
    assert records(wire)[-1] == (3, "c", "accepted") and verified(wire)


def test_a_lease_back_from_its_store_ends_a_read_back_that_failed(wire: Wire) -> None:
    audit = wire.actors["audit"]
    wire.actors["store"].receiveMessage(InFlights(items=(flight("a"),)), "cap")
    wire.deliver(2)  # lent, applied, chained and committed; its verdicts on their way
    late = wire.queue.popleft()
    store = _second_store(wire)
    audit.conn = UnreadableTail(audit.conn, 1)
    audit.receiveMessage(Rewire(store="store-2"), "router")  # its read fails: retried
    # The old store's verdicts were still in transit: the lease is back, read or not.
    audit.receiveMessage(late[2], late[1])
    assert audit.lent is None and not audit.orphans
    _ask_now(wire, store, "c")  # lent to the new store
    wire.settle()  # the retry must not take the live store's lease back
    assert wire.replied() == ["a", "c"] and audit.lent is None
    assert records(wire) == [(1, "a", "accepted"), (2, "c", "accepted")] and verified(wire)


@pytest.mark.parametrize("unreadable", [1, 2], ids=["read at the ask", "read at a retry"])
def test_a_held_probe_that_fails_does_not_keep_the_chain_from_the_new_store(
    wire: Wire, monkeypatch: pytest.MonkeyPatch, unreadable: int,
) -> None:
    audit = _store_dies_holding_the_lease(wire, times=unreadable)
    store = _second_store(wire)
    audit.receiveMessage(Rewire(store="store-2"), "router")  # its read fails: retried
    audit.receiveMessage(Probe(probe_id=4, reply_to="router"), "store-2")  # held
    real = audit._drain_outbox
    failures: list[bool] = []

    def fails_once() -> Any:
        if not failures:
            failures.append(True)
            raise sqlite3.OperationalError("disk I/O error")
        return real()

    monkeypatch.setattr(audit, "_drain_outbox", fails_once)
    _ask_now(wire, store, "c")  # the read succeeds (now or at a retry); reporting the held
    # probe fails
    wire.settle()
    # The probe is lost, as any probe whose report fails; the lease is not: the new
    # store's batch commits and is answered.
    assert failures and wire.replied() == ["c"] and audit.lent is None
    assert records(wire)[-1] == (3, "c", "accepted") and verified(wire)


def test_audit_stopping_while_a_lease_cannot_be_read_back_says_what_goes_unrecorded(
    wire: Wire, capsys: pytest.CaptureFixture[str],
) -> None:
    audit = _store_dies_holding_the_lease(wire, times=99)
    rejected = rejected_verdict(flight("r", peer="pb"), Reason.PEER_NOT_FOUND)
    audit.receiveMessage(Verdicts(items=(rejected,)), "router")
    audit.receiveMessage(ActorExitRequest(), "system")
    assert [r for r in records(wire) if r[1] == "r"] == []  # not chained from a stale head
    logged = [line for line in capsys.readouterr().err.splitlines()
              if "audit.shutdown_unrecorded" in line]
    assert len(logged) == 1 and '"records": 1' in logged[0] and '"r"' in logged[0]
