"""A writer for test_crash_between_commits: answers some writes, then sends a batch whose
store commit ends the pipeline's process before Audit's commit
(task_ingress.testing.ExitAfterStoreCommit).

Usage: python crash_between_commits.py --store PATH --ack-log PATH
       [--process-mode inprocess|pipeline] [--store-class DOTTED]

Every reply received is logged to the ack log (one JSON line, flushed) before the next
request is sent. In-process the seam ends this process with `testing.CRASH_EXIT`; in
pipeline mode it ends the pipeline process, every marked request then raises
RuntimeClosed here, and this process exits with CRASH_EXIT itself.
"""

from __future__ import annotations

import argparse
import json
import threading
from typing import Any

from task_ingress.messages import CreateTask, EnqueueRun, IngressContext, PeerCard, UpdateTask
from task_ingress.runtime import IngressRuntime, RuntimeConfig
from task_ingress.runtime.errors import RuntimeClosed
from task_ingress.testing import CRASH_EXIT, CRASH_PREFIX, EXIT_AFTER_STORE_COMMIT

PEERS = ("peer-a", "peer-b", "peer-c", "peer-d")
CHANNELS = ("ops", "dev")
CRASH_WAIT = 30.0


def main() -> None:
    """Greet, write and log three requests per peer, then send one marked request per peer
    at once and wait for the process to end."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", required=True)
    parser.add_argument("--ack-log", required=True)
    parser.add_argument("--process-mode", default="inprocess")
    parser.add_argument("--store-class", default=EXIT_AFTER_STORE_COMMIT)
    args = parser.parse_args()
    lock = threading.Lock()
    config = RuntimeConfig(store_path=args.store, process_mode=args.process_mode,
                           store_actor_class=args.store_class, request_timeout=60.0)
    closed: list[str] = []
    with open(args.ack_log, "a", encoding="utf-8") as acks, IngressRuntime(config) as rt:

        def submit(i: int, request_id: str, request: Any) -> Any:
            peer, channel = PEERS[i], CHANNELS[i % 2]
            out = rt.submit(IngressContext(workspace="ws", peer_id=peer, channel=channel,
                                           request_id=request_id), request)
            with lock:
                acks.write(json.dumps({"peer_id": peer, "channel": channel,
                                       "request_id": request_id, "accepted": out.accepted,
                                       "task_id": out.task_id, "run_id": out.run_id}) + "\n")
                acks.flush()
            return out

        for i, peer in enumerate(PEERS):
            rt.greet("ws", CHANNELS[i % 2],
                     PeerCard(peer_id=peer, capabilities=["task.write"], proof="p"))
        tasks = [submit(i, f"r-{i}-1", CreateTask(title=f"t {i}")).task_id
                 for i in range(len(PEERS))]
        for i, task_id in enumerate(tasks):
            submit(i, f"r-{i}-2", UpdateTask(task_id=task_id, title=f"t {i} again"))
        marked: list[Any] = [CreateTask(title="lost reply"),
                             UpdateTask(task_id=tasks[1], title="lost reply"),
                             EnqueueRun(task_id=tasks[2], idempotency_key="k"),
                             CreateTask(title="lost reply", network_channel="dev")]
        start = threading.Barrier(len(PEERS))

        def crash_one(i: int) -> None:
            start.wait()
            try:
                submit(i, f"{CRASH_PREFIX}{i}", marked[i])
            except RuntimeClosed:  # pipeline mode: the pipeline process is gone
                closed.append(f"{CRASH_PREFIX}{i}")

        threads = [threading.Thread(target=crash_one, args=(i,), daemon=True)
                   for i in range(len(PEERS))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(CRASH_WAIT)
    if len(closed) == len(PEERS):
        raise SystemExit(CRASH_EXIT)
    raise SystemExit(f"the store commit did not end the pipeline (closed: {closed})")


if __name__ == "__main__":
    main()
