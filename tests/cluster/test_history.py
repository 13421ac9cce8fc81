"""The client-side history checker: no accepted write after a returned leave."""

from __future__ import annotations

from task_ingress.runtime.cluster.history import writes_after_leave
from task_ingress.runtime.swarm.history import PresenceEvent, PresenceHistory
from task_ingress.runtime.swarm.journal import Sent

KEY = ("ws-0", "ch-0", "alice@fp")


def write(rid: str, sent: float, accepted: bool = True) -> Sent:
    return Sent(*KEY, rid, "create", "", None, sent, sent + 0.1, accepted,
                None if accepted else "peer_not_found", None, None)


def history(leave_revokes: bool, *events: PresenceEvent) -> PresenceHistory:
    h = PresenceHistory(expiry=2.0, leave_revokes=leave_revokes)
    for e in events:
        h.record(KEY, e)
    return h


def test_a_write_accepted_after_a_returned_leave_is_reported_and_a_regreet_clears_it() -> None:
    h = history(True, PresenceEvent("greet", True, 0.0, 0.1),
                PresenceEvent("leave", False, 1.0, 1.1))
    assert writes_after_leave([write("before", 0.5), write("refused", 1.5, False)], h) == []
    [problem] = writes_after_leave([write("after", 1.5)], h)
    assert problem.startswith("after of alice@fp in ws-0/ch-0: accepted")
    h.record(KEY, PresenceEvent("greet", True, 1.3, 1.4))
    assert writes_after_leave([write("after", 1.5)], h) == []


def test_over_nats_a_leave_is_silence_so_only_writes_past_the_expiry_are_reported() -> None:
    h = history(False, PresenceEvent("greet", True, 0.0, 0.1),
                PresenceEvent("leave", False, 1.0, 1.1))
    assert writes_after_leave([write("within", 2.5)], h) == []  # the daemon may not know yet
    assert len(writes_after_leave([write("past", 3.2)], h)) == 1


def test_a_leave_still_in_flight_when_the_write_was_sent_is_not_evidence() -> None:
    h = history(True, PresenceEvent("greet", True, 0.0, 0.1),
                PresenceEvent("leave", False, 1.0, 1.6))
    assert writes_after_leave([write("overlapping", 1.5)], h) == []
