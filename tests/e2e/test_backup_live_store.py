"""docs/operating.md's backup of a live store: copy the checkpoint first, then the database
(`VACUUM INTO`, or SQLite's online backup API as the sqlite3 shell's `.backup` uses) while
writes go on; `task-ingress audit verify` passes on the copy."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

from task_ingress.messages import CreateTask, IngressContext, PeerCard
from task_ingress.runtime import IngressRuntime, RuntimeConfig

KEY = "22" * 32
MAX_WRITES = 5000


def _vacuum_into(store: Path, copy: Path) -> None:
    conn = sqlite3.connect(store)
    try:
        conn.execute("VACUUM INTO ?", (str(copy),))
    finally:
        conn.close()


def _online_backup(store: Path, copy: Path) -> None:
    src, dst = sqlite3.connect(store), sqlite3.connect(copy)
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()


def _verify(copy: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TASK_INGRESS_AUDIT_KEY": KEY}
    return subprocess.run([sys.executable, "-m", "task_ingress", "audit", "verify", "--store",
                           str(copy)], env=env, capture_output=True, text=True, timeout=120)


def test_a_store_backed_up_while_it_is_written_verifies(tmp_path: Path) -> None:
    store = tmp_path / "live.db"
    copies = {"vacuum": tmp_path / "vacuum" / "live.db", "backup": tmp_path / "backup" / "live.db"}
    stop = threading.Event()
    accepted: list[str] = []
    with IngressRuntime(RuntimeConfig(store_path=str(store), audit_key=KEY)) as rt:
        rt.greet("ws", "ops", PeerCard(peer_id="peer-a", capabilities=["task.write"],
                                       proof="p"))

        def write() -> None:
            for i in range(MAX_WRITES):
                if stop.is_set():
                    return
                ctx = IngressContext(workspace="ws", peer_id="peer-a", channel="ops",
                                     request_id=f"w-{i}")
                if rt.submit(ctx, CreateTask(title=f"task {i}")).accepted:
                    accepted.append(ctx.request_id)

        writer = threading.Thread(target=write)
        writer.start()
        try:
            deadline = time.monotonic() + 60
            checkpoint = Path(f"{store}.checkpoint")
            while len(accepted) < 200 or not checkpoint.exists():
                assert writer.is_alive() and time.monotonic() < deadline, "no writes"
                time.sleep(0.02)
            for how, copy in copies.items():
                copy.parent.mkdir()
                # The checkpoint first: it must not vouch for records the copy lacks.
                shutil.copy(checkpoint, f"{copy}.checkpoint")
                (_vacuum_into if how == "vacuum" else _online_backup)(store, copy)
            assert writer.is_alive(), "the copies must be taken while writes go on"
        finally:
            stop.set()
            writer.join(60)
    for copy in copies.values():
        result = _verify(copy)
        assert result.returncode == 0, result.stdout + result.stderr
        assert int(result.stdout.split()[-1]) >= 200
