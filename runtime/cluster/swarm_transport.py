"""ClusterSwarmTransport: the swarm (and the cluster tests' and bench's load) against a
cluster of daemons — the NATS transport, with the cluster's ways of trusting and checking.

- Peers are enrolled in the cluster's trust policy in PostgreSQL (`trust add --database`),
  not in a trust file; every daemon picks them up within its `--trust-poll-interval`.
- Peers may use any workspace the cluster serves (`workspace` is None: the swarm spreads its
  peers over `ws-0 .. ws-N`, and so over the shards and daemons).
- After the run the invariants read the database: every shard's chain is verified
  (runtime/audit/pg_verify.py) and all shards' records are the run's records — run it
  against a fresh cluster database (`audit_head` is 0).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import psycopg
from task_ingress.actors.storage.pg_auditlog import read_shard_records
from task_ingress.runtime.audit.pg_verify import shards_to_check, verify_database
from task_ingress.runtime.audit.verify import VerifyResult
from task_ingress.runtime.cluster import pg_trust
from task_ingress.runtime.cluster.history import writes_after_leave
from task_ingress.runtime.nats.client import Identity
from task_ingress.runtime.nats.identity import raw_public_key
from task_ingress.runtime.nats.swarm_transport import NatsSwarmTransport
from task_ingress.runtime.swarm.history import PresenceHistory
from task_ingress.runtime.swarm.invariants import RunEvidence
from task_ingress.runtime.swarm.journal import Sent


class ClusterSwarmTransport(NatsSwarmTransport):
    """Drives a cluster over NATS (any daemon's ready file gives the shared identity)."""

    def __init__(self, *, ready_file: str, database: str, nats_url: str | None = None,
                 request_timeout: float = 30.0) -> None:
        self.database = database
        self._trust = psycopg.connect(database, autocommit=True)
        try:
            super().__init__(ready_file=ready_file, nats_url=nats_url,
                             request_timeout=request_timeout)
        except BaseException:
            self._trust.close()
            raise
        self.trust_file = None  # the cluster's policy is in the database
        self.leave_problems: list[str] = []
        """`writes_after_leave` over the run, set by `gather`."""
        self.workspace = None  # type: ignore[assignment]  # any workspace the cluster serves

    def _identity(self, name: str) -> Identity:
        known = self._known(name)
        if known is not None:
            return known
        me = super()._identity(name)
        with self._keys_lock:
            pg_trust.allow(self._trust, [me.handle], [raw_public_key(me.key)])
        return me

    def store_path(self) -> str:
        """No store file: the evidence is in the database (`gather`)."""
        return ""

    def audit_head(self) -> int:
        """Records of every shard count as this run's (a fresh database)."""
        return 0

    def gather(self, start_seq: int, sent: list[Sent], history: PresenceHistory,
               key: str | None, refused_greets: Counter[tuple[str, str, str]] | None
               ) -> RunEvidence:
        """The swarm's evidence from the cluster database: every shard's records (in commit
        order within each shard: a task's records are all in its workspace's shard), the
        chains verified with `key`, and the tasks' stored channel bindings."""
        if not key:
            raise ValueError("the cluster swarm needs the audit key to verify the chains")
        self.leave_problems = writes_after_leave(sent, history)
        with psycopg.connect(self.database, autocommit=True) as conn:
            verdict = verify_database(conn, bytes.fromhex(key))
            verdicts = verdict.shards
            records = [r for shard in shards_to_check(conn)
                       for r in read_shard_records(conn, shard)]
            bindings = {str(t): str(c) for t, c in conn.execute(
                "SELECT task_id, network_channel FROM tasks").fetchall()}
            tasks = int(conn.execute("SELECT count(*) FROM tasks").fetchone()[0])  # type: ignore[index]
            runs = int(conn.execute("SELECT count(*) FROM runs").fetchone()[0])  # type: ignore[index]
        verify = VerifyResult(
            records=sum(v.records for v in verdicts), head_seq=0, head_hash="",
            checkpoint=None, pending_outbox=sum(v.pending_outbox for v in verdicts),
            tasks=tasks, runs=runs,
            problems=tuple(p for v in verdicts for p in v.problems) + verdict.problems,
            notes=tuple(f"shard {v.shard}: {v.records} records" for v in verdicts))
        # A daemon may be killed mid-run: requests it never answered are answered
        # task_ingress_unavailable by the transport, unaudited and unacknowledged.
        return RunEvidence(records, start_seq, sent, verify, bindings, history, [],
                           Counter(refused_greets or {}), unavailable_unacknowledged=True)

    def close(self) -> None:
        """Close the NATS side and the trust connection; idempotent."""
        super().close()
        if not self._trust.closed:
            self._trust.close()

    def __enter__(self) -> Any:
        return self
