"""The lock baseline keeps the SPEC §7 contract it is compared against."""

from __future__ import annotations

import secrets
from pathlib import Path

from task_ingress.bench.baseline import LockBaseline
from task_ingress.messages import (
    CancelTask,
    CreateTask,
    EnqueueRun,
    IngressContext,
    PeerCard,
    UpdateTask,
)
from task_ingress.messages.codec import decode_reply, encode_envelope
from task_ingress.messages.reasons import Reason
from task_ingress.runtime.audit.verify import verify_store


def _ctx(rid: str, peer: str = "peer-a", channel: str = "ops") -> IngressContext:
    return IngressContext(workspace="ws", peer_id=peer, channel=channel, request_id=rid)


def _writer(peer: str) -> PeerCard:
    return PeerCard(peer_id=peer, capabilities=["task.write"], proof="signed")


def test_baseline_judges_like_the_gate_and_its_store_verifies(tmp_path: Path) -> None:
    key = secrets.token_hex(32)
    store = str(tmp_path / "baseline.db")
    with LockBaseline(store, audit_key=key) as b:
        b.greet("ws", "ops", _writer("peer-a"))
        b.greet("ws", "dev", _writer("peer-c"))
        b.greet("ws", "ops", PeerCard(peer_id="peer-b", capabilities=["task.write"]))
        made = b.submit(_ctx("r1"), CreateTask(title="Ship", network_channel="ops"))
        assert made.accepted and made.task_id
        task = made.task_id
        assert b.submit(_ctx("r2"), UpdateTask(task_id=task, title="x")).accepted
        run = b.submit(_ctx("r3"), EnqueueRun(task_id=task, idempotency_key="k"))
        assert run.accepted and run.run_id
        assert b.submit(_ctx("r4", "peer-b"), CreateTask(title="no")).reason \
            is Reason.CAPABILITY_DENIED
        assert b.submit(_ctx("r5", "peer-c", "dev"), UpdateTask(task_id=task, title="h")
                        ).reason is Reason.CHANNEL_MISMATCH
        assert b.submit(_ctx("r6", "ghost"), CreateTask(title="who")).reason \
            is Reason.PEER_NOT_FOUND
        assert b.submit(_ctx("bad/id"), CreateTask(title="t")).reason is Reason.INVALID_REQUEST
        assert b.submit(_ctx("r7"), CancelTask(task_id=task)).accepted
        assert b.submit(_ctx("r8"), UpdateTask(task_id=task, title="y")).reason \
            is Reason.PERMISSION_DENIED
        b.leave("ws", "ops", "peer-a")
        assert b.submit(_ctx("r9"), CreateTask(title="late")).reason is Reason.PEER_NOT_FOUND
        reply = decode_reply(b.deliver(b"\xc1garbage", workspace="ws", channel="dev",
                                       peer_id="peer-c"))
        assert reply["reason"] == "invalid_request"
        wire = decode_reply(b.deliver(encode_envelope(CreateTask(title="w"), "r10"),
                                      workspace="ws", channel="dev", peer_id="peer-c"))
        assert wire["accepted"] is True
        records = b.audit()
        assert len(records) == 12
    result = verify_store(store, key)
    assert result.ok, result.problems
    assert result.records == 12 and result.tasks == 2 and result.runs == 1
