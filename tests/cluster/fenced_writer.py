"""A shard holder in its own process, for the SIGSTOP test: it takes the shard of `ws-a`,
prints `ready <epoch>`, then writes tasks under that epoch forever (never renewing, never
checking its clock — the worst-behaved holder), one JSON line per answer, until stdin
closes. Only the store's fence can stop its writes."""

from __future__ import annotations

import json
import sys
import threading
import time

import psycopg
from task_ingress.actors.rules.shards import shard_of
from task_ingress.actors.storage.pg_store import apply_fenced, connect_store
from task_ingress.messages import CreateTask, IngressContext
from task_ingress.messages.limits import SPEC_LIMITS
from task_ingress.runtime.cluster import pg_leases


def main() -> None:
    url, shards, owner, ttl = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
    shard = shard_of("ws-a", shards)
    with psycopg.connect(url, autocommit=True) as conn:
        lease = pg_leases.acquire(conn, shard, owner, ttl, time.monotonic())
    assert lease is not None
    print(f"ready {lease.epoch}", flush=True)
    done = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    store = connect_store(url, idle_in_transaction_timeout=ttl / 2)
    n = 0
    while not done.is_set():
        n += 1
        ctx = IngressContext(workspace="ws-a", peer_id="peer-a", channel="ops",
                             request_id=f"{owner}-{n}")
        try:
            out = apply_fenced(store, lease.fence, shards, ctx, CreateTask(title=f"t{n}"),
                               SPEC_LIMITS, time.time())
        except psycopg.Error:
            out = None
        print(json.dumps({"request_id": ctx.request_id,
                          "accepted": bool(out and out.accepted),
                          "reason": out.reason.value if out and out.reason else None}),
              flush=True)
        if store.closed or store.broken:
            store = connect_store(url, idle_in_transaction_timeout=ttl / 2)
        time.sleep(0.01)
    store.close()


if __name__ == "__main__":
    main()
