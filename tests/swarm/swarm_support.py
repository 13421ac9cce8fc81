"""Helpers for the swarm tests: one small in-process swarm whose files are kept."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass

from task_ingress.runtime.config import RuntimeConfig
from task_ingress.runtime.swarm.config import SwarmConfig
from task_ingress.runtime.swarm.history import PresenceHistory
from task_ingress.runtime.swarm.invariants import RunEvidence, gather
from task_ingress.runtime.swarm.journal import Sent, read_journal
from task_ingress.runtime.swarm.runner import Swarm
from task_ingress.runtime.swarm.transport import InProcTransport


@dataclass
class KeptRun:
    """A finished swarm: its store file (runtime closed), journal, history and key."""

    store: str
    key: str
    sent: list[Sent]
    history: PresenceHistory
    start_seq: int
    swarm: Swarm

    def evidence(self, store: str | None = None) -> RunEvidence:
        """Gather the invariants' evidence from the (maybe corrupted copy of the) store."""
        return gather(store or self.store, self.start_seq, self.sent, self.history, self.key)


def small_config(store: str, **overrides: object) -> SwarmConfig:
    """A swarm that finishes in a couple of seconds but exercises every kind of request."""
    values: dict[str, object] = dict(
        requests=600, duration=30.0, peers=10, channels=3, workspaces=2, concurrency=5,
        churn=0.05, bad_share=0.2, store=store, seed=7, greet_interval=0.3, progress=False,
    )
    values.update(overrides)
    return SwarmConfig(**values)  # type: ignore[arg-type]


def run_kept(directory: str, **overrides: object) -> KeptRun:
    """Run a small swarm on a store file in `directory` and keep everything."""
    store = os.path.join(directory, "store.db")
    cfg = small_config(store, **overrides)
    key = secrets.token_hex(32)
    transport = InProcTransport(RuntimeConfig(store_path=store, durable=True,
                                              greet_interval=cfg.greet_interval,
                                              audit_key=key),
                               leave_revokes=cfg.leave_revokes)
    try:
        swarm = Swarm(cfg, transport, directory, key)
        swarm.run()
    finally:
        transport.close()
    sent = list(read_journal(swarm.journal.path))
    return KeptRun(store, key, sent, swarm.history, swarm.start_seq, swarm)
