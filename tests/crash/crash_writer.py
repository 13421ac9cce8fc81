"""A writer process for the SIGKILL tests: several threads write through one IngressRuntime
on a durable file store and log every reply they receive to an ack log.

Usage: python crash_writer.py --store PATH --ack-log PATH --ready-file PATH [--seed N]
       [--actor-base NAME] [--process-mode inprocess|pipeline]

The ack log has one JSON line per reply received, flushed as it is written (SPEC §9's
`--ack-log` fields: workspace, channel, peer_id, request_id, accepted, reason, task_id,
run_id). The ready file appears once every peer is greeted. The process writes until
killed, or stops by itself after --max-seconds.
"""

from __future__ import annotations

import argparse
import json
import random
import threading
import time
from typing import IO, Any

from task_ingress.messages import (
    CancelTask,
    CreateTask,
    EnqueueRun,
    IngressContext,
    PeerCard,
    UpdateTask,
)
from task_ingress.messages.codec import decode_reply, encode_envelope
from task_ingress.runtime import IngressRuntime, RuntimeConfig

WORKSPACES = ("ws1", "ws2")
CHANNELS = ("ops", "dev")


class AckLog:
    """Thread-safe ack log; each line reaches the OS before the next request is sent."""

    def __init__(self, fh: IO[str]) -> None:
        self.fh = fh
        self.lock = threading.Lock()

    def write(self, workspace: str, channel: str, peer_id: str, reply: dict[str, Any]) -> None:
        """Record one reply as received."""
        line = json.dumps({
            "workspace": workspace, "channel": channel, "peer_id": peer_id,
            "request_id": reply["request_id"], "accepted": reply["accepted"],
            "reason": reply["reason"], "task_id": reply["task_id"], "run_id": reply["run_id"],
        })
        with self.lock:
            self.fh.write(line + "\n")
            self.fh.flush()


def writer(rt: IngressRuntime, acks: AckLog, index: int, seed: int, stop: threading.Event
           ) -> None:
    """One peer's random mix of good, replayed, bad and wire requests, until `stop`."""
    rng = random.Random(seed * 1000 + index)
    ws, ch = WORKSPACES[index % 2], CHANNELS[(index // 2) % 2]
    peer = f"peer-{index}"
    tasks: list[str] = []
    accepted_creates: list[tuple[str, CreateTask]] = []
    n = 0
    while not stop.is_set():
        n += 1
        rid = f"w{index}-{n}"
        roll = rng.random()
        request: Any
        if roll < 0.45 or not tasks:
            request = CreateTask(title=f"task {rid}", network_channel=rng.choice(["", ch]))
        elif roll < 0.55:
            request = UpdateTask(task_id=rng.choice(tasks), title=f"retitled {rid}")
        elif roll < 0.70:
            request = EnqueueRun(task_id=rng.choice(tasks), idempotency_key=f"k{rng.randrange(8)}")
        elif roll < 0.74:
            request = CancelTask(task_id=rng.choice(tasks), reason="done")
        elif roll < 0.80 and accepted_creates:
            rid, request = rng.choice(accepted_creates)  # replay of an accepted request
        elif roll < 0.86:
            request = CreateTask(title=" ")  # validation_failed
        elif roll < 0.90:
            request = UpdateTask(task_id="task_missing", title="x")  # task_not_found
        else:
            request = None  # garbage on the wire: invalid_request
        if request is not None and rng.random() < 0.5:
            reply = _deliver(rt, request, rid, ws, ch, peer)
        elif request is not None:
            out = rt.submit(IngressContext(workspace=ws, peer_id=peer, channel=ch,
                                           request_id=rid), request)
            reply = {"request_id": out.request_id, "accepted": out.accepted,
                     "reason": out.reason.value if out.reason else None,
                     "task_id": out.task_id, "run_id": out.run_id}
        else:
            reply = decode_reply(rt.deliver(rng.randbytes(rng.randrange(1, 40)),
                                            workspace=ws, channel=ch, peer_id=peer))
        acks.write(ws, ch, peer, reply)
        if reply["accepted"] and isinstance(request, CreateTask) and reply["task_id"]:
            tasks.append(reply["task_id"])
            accepted_creates.append((rid, request))


def _deliver(rt: IngressRuntime, request: Any, rid: str, ws: str, ch: str, peer: str
             ) -> dict[str, Any]:
    return decode_reply(rt.deliver(encode_envelope(request, rid), workspace=ws, channel=ch,
                                   peer_id=peer))


def main() -> None:
    """Greet, signal ready, write from every thread until killed or --max-seconds pass."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", required=True)
    parser.add_argument("--ack-log", required=True)
    parser.add_argument("--ready-file", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=6)
    parser.add_argument("--max-seconds", type=float, default=60.0)
    parser.add_argument("--actor-base", default="simpleSystemBase")
    parser.add_argument("--process-mode", default="inprocess")
    args = parser.parse_args()
    stop = threading.Event()
    with open(args.ack_log, "a", encoding="utf-8") as fh, \
            IngressRuntime(RuntimeConfig(store_path=args.store, actor_base=args.actor_base,
                                         process_mode=args.process_mode)) as rt:
        for i in range(args.threads):
            rt.greet(WORKSPACES[i % 2], CHANNELS[(i // 2) % 2],
                     PeerCard(peer_id=f"peer-{i}", capabilities=["task.write"], proof="p"))
        acks = AckLog(fh)
        threads = [threading.Thread(target=writer, args=(rt, acks, i, args.seed, stop),
                                    daemon=True) for i in range(args.threads)]
        for t in threads:
            t.start()
        with open(args.ready_file, "w", encoding="utf-8") as ready:
            ready.write("ready\n")
        time.sleep(args.max_seconds)
        stop.set()
        for t in threads:
            t.join(timeout=30)


if __name__ == "__main__":
    main()
