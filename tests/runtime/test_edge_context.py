"""Rule 1 is worked out once, at the runtime's edge: the submission carries the trimmed
context and whether it is grammatical (`Submission.checked`), and the router takes both as
they are. A context the edge did not check (a submission built elsewhere) is checked by the
router itself."""

from __future__ import annotations

from task_ingress.messages import Action, CreateTask, IngressContext, Reason
from task_ingress.messages.protocol import Submission
from task_ingress.runtime import IngressRuntime

from tests.conftest import ctx


def test_padded_identifiers_are_trimmed_once_and_their_write_accepted(
        rt: IngressRuntime) -> None:
    padded = IngressContext(workspace=" ws", peer_id="peer-a\t", channel="ops ",
                            request_id=" r-1 ", trace_id="  ")
    sub, key = rt._submission(rt._running(), padded, CreateTask(title="t"))
    assert sub.checked and key == ("ws", "ops", "peer-a")
    assert (sub.context.workspace, sub.context.peer_id, sub.context.channel,
            sub.context.request_id, sub.context.trace_id) == ("ws", "peer-a", "ops", "r-1", "")
    out = rt.submit(padded, CreateTask(title="t"))
    assert out.accepted and out.request_id == "r-1"
    [record] = rt.audit()
    assert (record.workspace, record.peer_id, record.channel, record.request_id) == (
        "ws", "peer-a", "ops", "r-1")


def test_a_malformed_context_is_not_marked_checked_and_holds_no_slot(
        rt: IngressRuntime) -> None:
    for bad in (ctx("r/1"), ctx("r-1", peer="Peer-A"), ctx("r-1", channel=""),
                ctx("r-1").model_copy(update={"work_id": "w\x01"})):
        sub, key = rt._submission(rt._running(), bad, CreateTask(title="t"))
        assert (sub.checked, key) == (False, None)
        out = rt.submit(bad, CreateTask(title="t"))
        assert (out.accepted, out.reason) == (False, Reason.INVALID_REQUEST)
    assert rt.statistics().requests_in_flight == 0
    assert [r.reason for r in rt.audit()] == ["invalid_request"] * 4


def test_the_router_checks_a_context_nobody_marked_checked(rt: IngressRuntime) -> None:
    driver = rt._running()
    for i, bad in enumerate((ctx("r/1"), ctx("r-2", peer=" Peer-A"))):
        sub = Submission(ticket=driver.next_ticket(), context=bad, request=CreateTask(title="t"),
                         action=Action.CREATE, payload_size=1, now=0.0)
        out = rt._outcome(driver, driver.submit(sub, None))
        assert (out.accepted, out.reason) == (False, Reason.INVALID_REQUEST), i
    padded = Submission(ticket=driver.next_ticket(), context=ctx(" r-3", peer="peer-a "),
                        request=CreateTask(title="t"), action=Action.CREATE, payload_size=1,
                        now=0.0)
    assert rt._outcome(driver, driver.submit(padded, None)).accepted
    assert [(r.peer_id, r.request_id) for r in rt.audit()][-1] == ("peer-a", "r-3")
