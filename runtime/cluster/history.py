"""The history checkers of a cluster run.

`fencing_violations` (server side, over the store): did any write commit under a holding
that was no longer current? Every accepted request in the cluster store records the shard
and epoch it committed under, and `seq` (commit order within a shard, since a shard's writes
are serialized by its lease row lock). Fencing held when, for every shard, epochs never go
down in commit order (nothing committed under an epoch after a later epoch's holder wrote),
every epoch was granted (it is in lease_history), and every workspace was written under its
own shard.

`writes_after_leave` (client side, over the swarm's journal and presence history): was a
write accepted that its peer sent after its leave had returned, with no greet in between?
The journal and history are the clients' own, so the check holds across daemons whichever
daemon owned the shard at each moment (a takeover starts with empty presence: the new owner
must never admit a peer that left on the old one). The audit chain holds no presence
records (SPEC §6 audits requests; an applied greet or leave is not one), so this half of the
check cannot be made in commit order on the server side.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import psycopg
from task_ingress.actors.rules.shards import shard_of
from task_ingress.runtime.swarm.history import PresenceEvent, PresenceHistory
from task_ingress.runtime.swarm.journal import Sent


def fencing_violations(conn: psycopg.Connection[Any], shards: int) -> list[str]:
    """One line per violation found in the whole store; empty when fencing held."""
    granted = {(int(s), int(e)) for s, e in
               conn.execute("SELECT shard, epoch FROM lease_history").fetchall()}
    problems: list[str] = []
    last: dict[int, int] = {}
    rows = conn.execute(
        "SELECT shard, epoch, seq, workspace, request_id FROM accepted_requests "
        "ORDER BY shard, seq").fetchall()
    for shard, epoch, seq, workspace, request_id in rows:
        where = f"request {request_id} (shard {shard}, seq {seq})"
        if shard_of(workspace, shards) != shard:
            problems.append(f"{where}: workspace {workspace} is not in shard {shard}")
        if (shard, epoch) not in granted:
            problems.append(f"{where}: epoch {epoch} was never granted")
        if epoch < last.get(shard, 0):
            problems.append(f"{where}: committed under epoch {epoch} after epoch "
                            f"{last[shard]} had written")
        last[shard] = max(epoch, last.get(shard, 0))
    return problems


def writes_after_leave(sent: Iterable[Sent], history: PresenceHistory) -> list[str]:
    """One line per accepted write sent after its peer's leave returned (plus the daemon's
    expiry when a leave is silence, as over NATS) with no greet of that peer sent between
    the leave and the write's reply; empty when there is none."""
    grace = 0.0 if history.leave_revokes else history.expiry
    events = history.snapshot()
    problems = []
    for s in sent:
        if not s.accepted:
            continue
        key = (s.workspace, s.channel, s.peer_id)
        leave = _leave_before(events.get(key, []), s, grace)
        if leave is not None:
            problems.append(f"{s.request_id} of {s.peer_id} in {s.workspace}/{s.channel}: "
                            f"accepted, sent {s.sent - leave.returned:.3f} s after a leave "
                            "returned, with no greet since")
    return problems


def _leave_before(events: list[PresenceEvent], write: Sent, grace: float
                  ) -> PresenceEvent | None:
    """The last leave that surely took effect before `write` was sent, when no greet was
    sent after it that may have taken effect before the write was judged."""
    leaves = [e for e in events if e.kind == "leave" and e.returned + grace <= write.sent]
    if not leaves:
        return None
    last = max(leaves, key=lambda e: e.returned)
    regreeted = any(e.kind == "greet" and e.sent > last.sent and e.sent < write.returned
                    for e in events)
    return None if regreeted else last
