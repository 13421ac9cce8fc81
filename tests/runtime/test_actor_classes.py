"""Actor classes named in RuntimeConfig: checked at start, loaded by dotted name, and the
named class is the one that runs."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from task_ingress.messages import CreateTask
from task_ingress.runtime import IngressRuntime, RuntimeConfig, RuntimeStartError
from task_ingress.testing import HOLD, NAIVE_CHANNEL

from tests.conftest import ctx, writer_card
from tests.race.race_harness import RaceHarness, outcome


@pytest.mark.parametrize(("field", "name", "says"), [
    ("channel_actor_class", "task_ingress.actors.ingress.NoSuchActor", "cannot load"),
    ("store_actor_class", "no_such_module.TaskStore", "cannot load"),
    ("store_proxy_class", "TaskStore", "cannot load"),
    ("store_actor_class", NAIVE_CHANNEL, "names no TaskStore"),
    ("channel_actor_class", "task_ingress.actors.task_store.TaskStore",
     "names no ChannelIngress"),
    ("store_proxy_class", "task_ingress.runtime.config.RuntimeConfig", "names no Actor"),
])
def test_a_bad_actor_class_name_fails_the_start_not_the_requests(
    field: str, name: str, says: str
) -> None:
    rt = IngressRuntime(RuntimeConfig(**{field: name}))  # type: ignore[arg-type]
    with pytest.raises(RuntimeStartError, match=says):
        rt.start()
    rt.close()


def test_the_named_store_proxy_sits_before_the_store(
    make_runtime: Callable[..., IngressRuntime]
) -> None:
    rt = make_runtime(store_proxy_class=HOLD)
    rt.greet("ws", "ops", writer_card("peer-a"))
    h = RaceHarness(rt)
    h.hold()
    pending = h.submit(ctx("r-1"), CreateTask(title="t"))
    assert h.held() == ("r-1",)
    assert not pending.done()
    h.release()
    assert outcome(pending).accepted
