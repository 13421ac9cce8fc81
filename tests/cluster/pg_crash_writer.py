"""A writer for the cluster crash test: a runtime on PostgreSQL under the fence given on the
command line writes one request (answered), then a marked one whose store commit ends this
process before PgAudit hears of it (task_ingress.testing.pg_crash.PgExitAfterStoreCommit,
chaining under the lease, or the store class named by STORE, e.g. PG_EXIT_AFTER_OUTBOX_COMMIT).

Usage: python pg_crash_writer.py URL SHARD OWNER EPOCH KEY WORKSPACE [STORE]
Prints one JSON line per answer; exits with testing.CRASH_EXIT at the marked write.
"""

from __future__ import annotations

import json
import sys

from task_ingress.actors.rules.shards import Fence
from task_ingress.messages import CreateTask, IngressContext, PeerCard
from task_ingress.runtime import IngressRuntime, RuntimeConfig
from task_ingress.testing import CRASH_PREFIX, PG_EXIT_AFTER_STORE_COMMIT


def main() -> None:
    """Write `r-1`, print its answer, then write the marked request."""
    url, shard, owner, epoch, key, workspace = sys.argv[1:7]
    store = sys.argv[7] if len(sys.argv) > 7 else PG_EXIT_AFTER_STORE_COMMIT
    config = RuntimeConfig(database_url=url, fence=Fence(int(shard), owner, int(epoch)),
                           audit_key=key, store_actor_class=store)
    with IngressRuntime(config) as rt:
        rt.greet(workspace, "ops", PeerCard(peer_id="peer-a", capabilities=["task.write"],
                                            proof="p"))
        for request_id in ("r-1", f"{CRASH_PREFIX}1"):
            out = rt.submit(IngressContext(workspace=workspace, peer_id="peer-a",
                                           channel="ops", request_id=request_id),
                            CreateTask(title=request_id))
            print(json.dumps({"request_id": request_id, "accepted": out.accepted}), flush=True)


if __name__ == "__main__":
    main()
