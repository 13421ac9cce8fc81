"""multiprocQueueBase under concurrent callers: every request is answered.

Thespian 4.0.1 gives each actor a 10-message mailbox and blocks a sender on a full one, and
it relays every actor-to-actor message through the common parent. With those bounds, 16
callers over 8 channels deadlocked within a second (TaskStore blocked sending its `Flush`
to its own full mailbox; router and admin blocked relaying to it) and replies were lost.
The driver therefore starts this base with unbounded mailboxes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from task_ingress.messages import CreateTask
from task_ingress.runtime import IngressRuntime, driver, topology
from thespian.actors import Actor

from tests.conftest import ctx, writer_card

pytestmark = pytest.mark.multiproc

THREADS = 16
CHANNELS = 8
PER_THREAD = 150


class SelfSender(Actor):  # type: ignore[misc]
    """Counts strings; on "block" waits until its mailbox has filled, then sends itself one
    message, as TaskStore and Audit do with `Flush`."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = 0

    def receiveMessage(self, message: object, sender: object) -> None:
        """"block" -> sleep then self-send; "count" -> the count; other strings are counted."""
        if message == "block":
            time.sleep(1.0)
            self.send(self.myAddress, "flush")
        elif message == "count":
            self.send(sender, self.seen)
        elif isinstance(message, str):
            self.seen += 1


def test_an_actor_sends_to_itself_while_its_mailbox_is_full() -> None:
    asys = topology.open_actor_system("multiprocQueueBase")
    try:
        actor = asys.createActor(SelfSender)
        asys.tell(actor, "block")
        for n in range(15):  # more than Thespian's 10-message mailbox
            asys.tell(actor, f"m{n}")
        # None: the actor is stuck in send() on its own full mailbox (its "flush" may or may
        # not be counted yet)
        assert asys.ask(actor, "count", 5) in (15, 16)
    finally:
        stopper = threading.Thread(target=asys.shutdown, daemon=True)
        stopper.start()
        stopper.join(timeout=5)


def test_sixteen_callers_over_eight_channels_get_every_answer(
    make_runtime: Callable[..., IngressRuntime], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(driver, "SHUTDOWN_GRACE", 2.0)  # a hung system fails fast, not at 30 s
    rt = make_runtime(actor_base="multiprocQueueBase", request_timeout=4.0)
    channels = [f"c{n}" for n in range(CHANNELS)]
    for ch in channels:
        for n in range(THREADS):
            rt.greet("ws", ch, writer_card(f"p{n}"))
    wrong: list[str] = []

    def caller(n: int) -> None:
        for i in range(PER_THREAD):
            rid = f"t{n}-{i}"
            try:
                out = rt.submit(ctx(rid, peer=f"p{n}", channel=channels[(n + i) % CHANNELS]),
                                CreateTask(title=rid))
            except Exception as exc:  # IngressTimeout: a reply was lost
                wrong.append(f"{rid}: {exc!r}")
                return
            if not out.accepted or out.request_id != rid:
                wrong.append(f"{rid}: {out}")

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(THREADS)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(0.1, 20 - (time.monotonic() - started)))
    assert not any(t.is_alive() for t in threads), "callers still blocked after 20 s"
    assert not wrong, f"{len(wrong)} requests failed, first: {wrong[:3]}"
    assert len(rt.audit()) == THREADS * PER_THREAD
