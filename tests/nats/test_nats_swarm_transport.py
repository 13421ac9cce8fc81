"""NatsSwarmTransport against an in-process daemon: the swarm's protocol over real NATS."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from task_ingress.messages import CancelTask, CreateTask, EnqueueRun, PeerCard, UpdateTask
from task_ingress.messages.codec import decode_reply, encode_envelope
from task_ingress.messages.reasons import Reason
from task_ingress.runtime.nats.swarm_transport import NatsSwarmTransport

from tests.nats.conftest import RunningDaemon

Start = Callable[..., RunningDaemon]
WRITER = ["task.write"]


def _send(t: NatsSwarmTransport, request: object, request_id: str, peer: str = "peer-a",
          channel: str = "ops") -> dict[str, object]:
    raw = encode_envelope(request, request_id)  # type: ignore[arg-type]
    return decode_reply(t.deliver(raw, workspace="default", channel=channel, peer_id=peer))


def test_transport_greets_and_delivers_every_action_as_the_swarm_would(
        start_daemon: Start) -> None:
    d = start_daemon()
    with NatsSwarmTransport(ready_file=d.daemon.settings.ready_file) as t:
        assert t.store_path() == d.runtime.store_path
        assert t.greet_interval == 30.0
        t.greet("default", "ops", PeerCard(peer_id="peer-a", capabilities=WRITER, proof="p"))
        created = _send(t, CreateTask(title="Ship it", network_channel="ops"), "r-1")
        assert created["accepted"] is True and created["request_id"] == "r-1"
        task_id = str(created["task_id"])
        assert _send(t, UpdateTask(task_id=task_id, title="v2"), "r-2")["accepted"]
        run = _send(t, EnqueueRun(task_id=task_id, idempotency_key="k"), "r-3")
        assert run["accepted"] and run["run_id"]
        assert _send(t, CancelTask(task_id=task_id), "r-4")["accepted"]
        garbage = decode_reply(t.deliver(b"\xc1garbage", workspace="default", channel="ops",
                                         peer_id="peer-a"))
        assert garbage["reason"] == Reason.INVALID_REQUEST
        other = _send(t, CreateTask(title="t", network_channel="dev"), "r-5")
        assert other["reason"] == Reason.CHANNEL_MISMATCH
    task = d.runtime.get_task("default", task_id)
    assert task is not None and task.status == "canceled" and task.title == "v2"
    assert len(d.runtime.audit()) == 6


def test_a_card_claiming_task_write_without_proof_grants_nothing_over_nats(
        start_daemon: Start) -> None:
    d = start_daemon()
    with NatsSwarmTransport(ready_file=d.daemon.settings.ready_file) as t:
        t.greet("default", "ops", PeerCard(peer_id="peer-a", capabilities=WRITER, proof=""))
        assert _send(t, CreateTask(title="t"), "r-1")["reason"] == Reason.CAPABILITY_DENIED


def test_transport_is_thread_safe_under_many_callers(start_daemon: Start) -> None:
    d = start_daemon()
    with NatsSwarmTransport(ready_file=d.daemon.settings.ready_file) as t:
        peers = [f"peer-{i}" for i in range(6)]
        for peer in peers:
            t.greet("default", "ops", PeerCard(peer_id=peer, capabilities=WRITER, proof="p"))

        def one(i: int) -> tuple[str, object]:
            rid = f"r-{i}"
            return rid, _send(t, CreateTask(title=f"t{i}"), rid, peer=peers[i % 6])

        with ThreadPoolExecutor(12) as pool:
            results = list(pool.map(one, range(240)))
    assert all(reply["accepted"] for _, reply in results)  # type: ignore[index]
    assert all(reply["request_id"] == rid for rid, reply in results)  # type: ignore[index]
    assert len({reply["task_id"] for _, reply in results}) == 240  # type: ignore[index]


def test_heartbeats_keep_a_peer_visible_and_leave_lets_it_expire(start_daemon: Start) -> None:
    d = start_daemon(greet_interval=0.4)
    with NatsSwarmTransport(ready_file=d.daemon.settings.ready_file) as t:
        assert t.greet_interval == 0.4
        t.greet("default", "ops", PeerCard(peer_id="peer-a", capabilities=WRITER, proof="p"))
        time.sleep(2.0)  # 2.5 expiry periods: only the transport's re-greets keep it alive
        assert _send(t, CreateTask(title="t"), "r-1")["accepted"]
        t.leave("default", "ops", "peer-a")
        time.sleep(0.9)
        assert _send(t, CreateTask(title="t"), "r-2")["reason"] == Reason.PEER_NOT_FOUND


def test_deliver_without_a_daemon_answers_unavailable(start_daemon: Start) -> None:
    d = start_daemon()
    with NatsSwarmTransport(ready_file=d.daemon.settings.ready_file,
                            request_timeout=2.0) as t:
        reply = decode_reply(t.deliver(encode_envelope(CreateTask(title="t"), "r-1"),
                                       workspace="elsewhere", channel="ops",
                                       peer_id="peer-a"))
    assert reply["reason"] == Reason.TASK_INGRESS_UNAVAILABLE and reply["request_id"] == "r-1"


def test_a_regreet_that_drops_task_write_is_never_undone_by_a_heartbeat(
        start_daemon: Start) -> None:
    d = start_daemon(greet_interval=0.2)  # heartbeats every 100 ms race the re-greets
    # Under heavy load a late heartbeat may let the peer expire: not accepted either way.
    refused = {Reason.CAPABILITY_DENIED, Reason.PEER_NOT_FOUND}
    with NatsSwarmTransport(ready_file=d.daemon.settings.ready_file) as t:
        for i in range(6):
            t.greet("default", "ops", PeerCard(peer_id="peer-a", capabilities=WRITER,
                                               proof="p"))
            time.sleep(0.12)
            t.greet("default", "ops", PeerCard(peer_id="peer-a", capabilities=[], proof=""))
            assert _send(t, CreateTask(title="t"), f"now-{i}")["reason"] in refused, i
            time.sleep(0.15)  # later heartbeats must carry the capability-less card
            assert _send(t, CreateTask(title="t"), f"later-{i}")["reason"] in refused, i
