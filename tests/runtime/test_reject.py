"""`IngressRuntime.reject`, the transports' way to audit a rejection the gate cannot see: it
is audited like the gate's own, and it checks its argument types itself (the `Submission`
it builds is a plain class that trusts its builder)."""

from __future__ import annotations

from typing import Any

import pytest
from task_ingress.messages import Action, Reason
from task_ingress.runtime import IngressRuntime

from tests.conftest import ctx


def test_a_rejection_by_a_transport_is_answered_and_audited(rt: IngressRuntime) -> None:
    out = rt.reject(ctx("r-1"), Action.CREATE, Reason.INVALID_REQUEST, payload_size=5)
    assert (out.accepted, out.reason, out.action) == (False, Reason.INVALID_REQUEST,
                                                      Action.CREATE)
    [record] = rt.audit()
    assert (record.request_id, record.action, record.reason, record.payload_size) == (
        "r-1", "task.create", "invalid_request", 5)


@pytest.mark.parametrize("action, reason, size", [
    ("task.create", Reason.INVALID_REQUEST, 0),
    (Action.CREATE, "invalid_request", 0),
    (Action.CREATE, Reason.INVALID_REQUEST, "5"),
    (Action.CREATE, Reason.INVALID_REQUEST, True),
], ids=["action as text", "reason as text", "size as text", "size as bool"])
def test_a_rejection_with_a_wrong_argument_type_raises_and_audits_nothing(
        rt: IngressRuntime, action: Any, reason: Any, size: Any) -> None:
    with pytest.raises(TypeError):
        rt.reject(ctx("r-1"), action, reason, payload_size=size)
    assert rt.audit() == []
