"""SIGKILL survival: a writer process is killed at a random moment; on restart every
acknowledged request is in the audit with the outcome the peer saw, every accepted write is
in the store, the outbox is drained, and the chain verifies and continues.

4 trials in the normal suite (one per writer), 20 with TASK_INGRESS_SLOW=1. The writer is
`task-ingress swarm --ack-log` or tests/crash/crash_writer.py (see WRITERS). With the actors
in a pipeline process, only the embedding process is killed: the pipeline process must
notice, finish what it holds and exit by itself (no orphan) before the restart.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import pytest
from task_ingress.actors.rules.gate import safe_field
from task_ingress.messages import CreateTask, IngressContext
from task_ingress.runtime import IngressRuntime, RuntimeConfig
from task_ingress.runtime.audit.read import open_readonly
from task_ingress.runtime.audit.verify import VerifyResult, verify_store

from tests.conftest import writer_card

SLOW = os.environ.get("TASK_INGRESS_SLOW") == "1"
TRIALS = 20 if SLOW else 4
WRITER = Path(__file__).with_name("crash_writer.py")
READY_TIMEOUT = 60.0
KILL_AFTER = (0.2, 2.0)
"""Seconds of writing before the SIGKILL, drawn per trial."""

Outcome = tuple[bool, str | None, str | None, str | None]


def read_acks(path: Path) -> list[dict[str, Any]]:
    """Complete ack lines; a line the kill cut short was never fully acknowledged."""
    acks = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            acks.append(json.loads(line))
        except ValueError:
            continue
    return acks


WRITERS = ("swarm", "threads/simpleSystemBase", "threads/multiprocQueueBase",
           "threads/pipeline")
"""Trial i runs WRITERS[i % 4]: `task-ingress swarm --ack-log` (churn, expiry, bad
requests), or crash_writer.py (replays, wire garbage) with the actors in one thread, in
their own processes (store and audit apart, so the kill often lands between their
commits), or all in one pipeline process (which outlives the kill of the writer until it
notices)."""
ORPHAN_WAIT = 30.0
"""Seconds a pipeline process may take to notice its embedding process died and exit."""


def writer_command(kind: str, store: Path, acks: Path, ready: Path, seed: int) -> list[str]:
    """The writer's command line; every writer ends by itself within a minute."""
    if kind == "swarm":
        return [sys.executable, "-m", "task_ingress", "swarm", "--store", str(store),
                "--ack-log", str(acks), "--requests", "1000000", "--duration", "60",
                "--peers", "16", "--channels", "4", "--concurrency", "8", "--seed", str(seed),
                "--no-progress", "--json", "", "--plot", ""]
    mode = kind.split("/")[1]
    base, process_mode = ("simpleSystemBase", mode) if mode == "pipeline" else (mode, "inprocess")
    return [sys.executable, str(WRITER), "--store", str(store), "--ack-log", str(acks),
            "--ready-file", str(ready), "--seed", str(seed), "--max-seconds", "60",
            "--actor-base", base, "--process-mode", process_mode]


def run_and_kill(tmp: Path, seed: int, kind: str) -> tuple[Path, Path, float]:
    """Start the writer, SIGKILL it and its actor processes after a random delay, as a
    crashing host or `systemctl kill -s KILL` would; returns (store, ack log, delay).

    The delay counts from the writer being ready (ready file, or the swarm's first ack)."""
    store, acks, ready = tmp / "store.db", tmp / "acks.jsonl", tmp / "ready"
    delay = random.Random(seed).uniform(*KILL_AFTER)
    env = dict(os.environ, TASK_INGRESS_LOG_LEVEL="warning")
    with open(tmp / "writer.stderr", "wb") as err:
        proc = subprocess.Popen(writer_command(kind, store, acks, ready, seed),
                                stdout=subprocess.DEVNULL, stderr=err, env=env)

    def is_ready() -> bool:
        if kind == "swarm":
            return acks.exists() and acks.stat().st_size > 0
        return ready.exists()

    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while not is_ready():
            assert proc.poll() is None, (tmp / "writer.stderr").read_text()
            assert time.monotonic() < deadline, "writer not ready in time"
            time.sleep(0.02)
        time.sleep(delay)
        assert proc.poll() is None, "writer exited before the kill"
        if kind == "threads/pipeline":
            kill_embedder_only(proc)
    finally:
        kill_writer_processes(proc, store)
    assert proc.returncode == -signal.SIGKILL
    return store, acks, delay


def kill_embedder_only(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the embedding process alone; its pipeline process must then exit by itself
    (it finishes what it holds and checkpoints): no orphan is left running."""
    children = psutil.Process(proc.pid).children()
    assert children, "the pipeline writer has no pipeline process"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    _, alive = psutil.wait_procs(children, timeout=ORPHAN_WAIT)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    assert not alive, f"pipeline process outlived its embedding process: {alive}"


def kill_writer_processes(proc: subprocess.Popen[bytes], store: Path) -> None:
    """SIGKILL the writer and every process forked from it, by PID, and wait until gone.

    Thespian's multiprocess admin daemonizes (new session, parent 1), so neither the
    process tree nor the process group finds it; every fork inherits the writer's command
    line, which names this trial's unique store path.
    """
    def ours() -> list[psutil.Process]:
        found = []
        for p in psutil.process_iter(["cmdline", "status"]):
            cmdline = p.info["cmdline"] or []
            if str(store) in cmdline and p.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(p)
        return found

    victims = [proc.pid, *(p.pid for p in ours() if p.pid != proc.pid)]
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 15
    while left := ours():
        assert time.monotonic() < deadline, f"writer processes survived SIGKILL: {left}"
        for p in left:
            with contextlib.suppress(psutil.Error):
                p.kill()
        time.sleep(0.05)


def outbox_rows(store: Path) -> int:
    with open_readonly(str(store)) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])


def audit_keys(ack: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """The identities an ack's request may be audited under: the audit stores identifiers
    trimmed and in safe form; a reply carries the request ID raw, or already safe when the
    router rejected it."""
    ident = tuple(safe_field(ack[f].strip()) for f in ("workspace", "channel", "peer_id"))
    rid = ack["request_id"]
    return [(*ident, r) for r in dict.fromkeys([safe_field(rid.strip()), rid])]


def assert_verifies(result: VerifyResult) -> None:
    assert result.ok, [str(p) for p in result.problems]


@pytest.mark.parametrize("trial", range(TRIALS))
def test_sigkilled_writer_loses_no_acknowledged_request(tmp_path: Path, trial: int) -> None:
    seed = 7000 + trial
    kind = WRITERS[trial % len(WRITERS)]
    store, ack_log, delay = run_and_kill(tmp_path, seed, kind)
    acks = read_acks(ack_log)

    # Left as the kill left it: verifies, with any pending outbox rows only reported.
    before = verify_store(str(store))
    assert_verifies(before)
    assert before.pending_outbox == outbox_rows(store)

    with IngressRuntime(RuntimeConfig(store_path=str(store))) as rt:
        records = rt.audit()
        assert outbox_rows(store) == 0, "outbox rows left after restart"
        assert len(records) == before.records + before.pending_outbox

        # Every acknowledged request is audited with the outcome the peer received.
        audited: dict[tuple[str, str, str, str], Counter[Outcome]] = {}
        for rec in records:
            key = (rec.workspace, rec.channel, rec.peer_id, rec.request_id)
            outcome = (rec.outcome == "accepted", rec.reason.value if rec.reason else None,
                       rec.task_id, rec.run_id)
            audited.setdefault(key, Counter())[outcome] += 1
        for ack in acks:
            seen: Outcome = (ack["accepted"], ack["reason"], ack["task_id"], ack["run_id"])
            keys = [k for k in audit_keys(ack) if audited.get(k, Counter())[seen] > 0]
            assert keys, f"ack not in the audit: {ack}"
            audited[keys[0]][seen] -= 1

        # Every accepted write is in the store.
        for ack in acks:
            if not ack["accepted"]:
                continue
            task = rt.get_task(ack["workspace"], ack["task_id"])
            assert task is not None, f"accepted write missing from the store: {ack}"
            if ack["run_id"]:
                run = rt.get_run(ack["workspace"], ack["run_id"])
                assert run is not None and run.task_id == ack["task_id"], ack

        assert_verifies(verify_store(str(store)))  # also while the runtime holds the store

        # The chain continues: new writes chain onto the old head.
        old_head = records[-1] if records else None
        rt.greet("ws1", "ops", writer_card("after-restart"))
        for i in range(3):
            out = rt.submit(_ctx(f"after-{i}"), CreateTask(title=f"after {i}"))
            assert out.accepted, out
        new = [r for r in rt.audit() if old_head is None or r.seq > old_head.seq]
    assert [r.request_id for r in new] == ["after-0", "after-1", "after-2"]
    if old_head is not None:
        assert new[0].seq == old_head.seq + 1 and new[0].prev_hash == old_head.hash

    after = verify_store(str(store))
    assert_verifies(after)
    assert after.pending_outbox == 0 and after.checkpoint is not None
    assert after.checkpoint.seq == after.head_seq == len(records) + 3
    print(f"trial {trial} ({kind}): killed after {delay:.2f}s, {len(acks)} acks, "
          f"{before.records} records + {before.pending_outbox} pending outbox rows")


def _ctx(request_id: str) -> IngressContext:
    return IngressContext(workspace="ws1", peer_id="after-restart", channel="ops",
                          request_id=request_id)


def test_ack_log_reader_skips_a_line_cut_short_by_the_kill(tmp_path: Path) -> None:
    log = tmp_path / "acks.jsonl"
    log.write_text('{"request_id": "a", "accepted": true}\n{"request_id": "b", "acc')
    assert [a["request_id"] for a in read_acks(log)] == ["a"]
