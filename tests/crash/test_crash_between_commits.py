"""One fsync per batch (docs/durability.md). A chaining store commits its batch's writes
with their chained records under Audit's lease: a process that dies right after that
commit has answered nothing of the batch, and its writes and records are both there. A
store writing outbox rows (every store's way at shutdown) commits
without an fsync and Audit's durable commit carries it: a process that dies between the two
commits has answered nothing, and the next start chains every accepted write of it from the
outbox. Either way no write is ever separated from its audit record.

A process kill keeps the page cache, so this shows the ordering and the recovery, not the
fsync: docs/durability.md gives the WAL argument for power loss.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from task_ingress.actors.storage.schema import decode_outbox
from task_ingress.runtime import IngressRuntime, RuntimeConfig
from task_ingress.runtime.audit.read import open_readonly
from task_ingress.runtime.audit.verify import verify_store
from task_ingress.runtime.config import PROCESS_MODES
from task_ingress.testing import (
    CRASH_EXIT,
    CRASH_PREFIX,
    EXIT_AFTER_OUTBOX_COMMIT,
    EXIT_AFTER_STORE_COMMIT,
)

WRITER = Path(__file__).with_name("crash_between_commits.py")


def run_writer(tmp: Path, *extra: str) -> tuple[Path, list[dict[str, object]]]:
    """Run the writer until the seam ends it; return the store and the acks it logged."""
    store, acks = tmp / "store.db", tmp / "acks.jsonl"
    env = dict(os.environ, TASK_INGRESS_LOG_LEVEL="warning")
    proc = subprocess.run([sys.executable, str(WRITER), "--store", str(store),
                           "--ack-log", str(acks), *extra],
                          env=env, capture_output=True, timeout=120)
    assert proc.returncode == CRASH_EXIT, proc.stderr.decode()[-3000:]
    return store, [json.loads(line) for line in acks.read_text().splitlines()]


def crash_after_commit(tmp: Path, mode: str, store_class: str
                       ) -> tuple[Path, list[dict[str, object]]]:
    """Run the writer with this crashing store until its marked batch commits; check that
    every earlier request was answered accepted and none of the crashed batch was.

    In-process the whole writer dies; in pipeline mode the pipeline process does, and every
    caller waiting on it is told RuntimeClosed (the writer checks that)."""
    store, acks = run_writer(tmp, "--process-mode", mode, "--store-class", store_class)
    assert len(acks) == 8 and all(a["accepted"] for a in acks)
    assert not any(str(a["request_id"]).startswith(CRASH_PREFIX) for a in acks), \
        "a request of the batch that crashed after its commit was answered"
    return store, acks


@pytest.mark.parametrize("mode", PROCESS_MODES)
def test_crash_after_a_chained_commit_answers_nothing_and_keeps_writes_with_records(
    tmp_path: Path, mode: str
) -> None:
    store, acks = crash_after_commit(tmp_path, mode, EXIT_AFTER_STORE_COMMIT)

    # As the crash left it: the batch's writes and their records, chained, no outbox row.
    with open_readonly(str(store)) as conn:
        boxed = conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        audited = {r[0]: r[1:] for r in conn.execute(
            "SELECT request_id, outcome, task_id, run_id FROM audit")}
        accepted_rows = {r[0] for r in conn.execute(
            "SELECT request_id FROM accepted_requests")}
    crashed = {r for r in accepted_rows if r.startswith(CRASH_PREFIX)}
    assert boxed == 0 and crashed and crashed <= set(audited)
    assert all(audited[r][0] == "accepted" for r in crashed)
    assert {str(a["request_id"]) for a in acks} <= set(audited)
    before = verify_store(str(store))
    assert before.ok and before.pending_outbox == 0, [str(p) for p in before.problems]

    # The next start goes on from them: the chain verifies, the writes are readable.
    with IngressRuntime(RuntimeConfig(store_path=str(store))) as rt:
        for r in crashed:
            _, task_id, run_id = audited[r]
            assert rt.get_task("ws", str(task_id)) is not None
            if run_id:
                assert rt.get_run("ws", str(run_id)) is not None
    _cli_verifies(store, len(audited))


@pytest.mark.parametrize("mode", PROCESS_MODES)
def test_crash_between_outbox_store_and_audit_commit_answers_nothing_and_loses_nothing(
    tmp_path: Path, mode: str
) -> None:
    store, acks = crash_after_commit(tmp_path, mode, EXIT_AFTER_OUTBOX_COMMIT)

    # As the crash left it: the batch's writes are in the store, their records only in the
    # outbox, and what it holds verifies.
    with open_readonly(str(store)) as conn:
        boxed = [decode_outbox(r[0]) for r in conn.execute("SELECT record FROM outbox")]
        audited = {r[0] for r in conn.execute("SELECT request_id FROM audit")}
        accepted_rows = {r[0] for r in conn.execute(
            "SELECT request_id FROM accepted_requests")}
    assert boxed and all(b is not None and b["outcome"] == "accepted" for b in boxed)
    crashed = {str(b["request_id"]) for b in boxed if b is not None}
    assert all(r.startswith(CRASH_PREFIX) for r in crashed)
    assert crashed <= accepted_rows and not crashed & audited
    assert {str(a["request_id"]) for a in acks} <= audited
    before = verify_store(str(store))
    assert before.ok, [str(p) for p in before.problems]
    assert before.pending_outbox == len(boxed)

    # The next start chains them: each accepted write of the crashed batch has its record.
    with IngressRuntime(RuntimeConfig(store_path=str(store))) as rt:
        records = {r.request_id: r for r in rt.audit()}
        for b in boxed:
            assert b is not None
            rec = records[str(b["request_id"])]
            assert rec.outcome == "accepted" and rec.task_id == b["task_id"]
            assert rec.run_id == b["run_id"]
            assert rt.get_task("ws", str(b["task_id"])) is not None
            if b["run_id"]:
                assert rt.get_run("ws", str(b["run_id"])) is not None
    with open_readonly(str(store)) as conn:
        assert conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0
    _cli_verifies(store, len(acks) + len(boxed))


def _cli_verifies(store: Path, records: int) -> None:
    """`task-ingress audit verify` exits 0 and counts `records`."""
    cli = subprocess.run([sys.executable, "-m", "task_ingress", "audit", "verify",
                          "--store", str(store)], capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert cli.stdout.strip().splitlines()[-1].endswith(str(records))
