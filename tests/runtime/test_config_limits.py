"""SPEC §2's limits are one table: RuntimeConfig's defaults are its ceilings, a lower value
reaches the gate, a higher one is refused before anything starts."""

from __future__ import annotations

from dataclasses import replace

import pytest
from task_ingress.messages import CreateTask, Reason
from task_ingress.messages.codec import MAX_ENVELOPE_BYTES
from task_ingress.messages.limits import SPEC_LIMITS, Limits
from task_ingress.messages.protocol import Settings
from task_ingress.runtime import IngressRuntime, RuntimeConfig

from tests.conftest import ctx, writer_card


def test_the_defaults_everywhere_are_the_spec_ceilings() -> None:
    assert Limits(max_title_chars=256, max_description_bytes=16 * 1024,
                                 max_metadata_entries=32, max_metadata_bytes=8 * 1024,
                                 max_envelope_bytes=64 * 1024) == SPEC_LIMITS
    assert RuntimeConfig().limits == SPEC_LIMITS
    assert Settings(store_path="s.db", durable=False, local_peer_id="local",
                    greet_interval=30.0, tasks_enabled=True).limits == SPEC_LIMITS
    assert SPEC_LIMITS.max_envelope_bytes == MAX_ENVELOPE_BYTES


@pytest.mark.parametrize("name", ["max_title_chars", "max_description_bytes",
                                  "max_metadata_entries", "max_metadata_bytes",
                                  "max_envelope_bytes"])
def test_a_limit_above_spec_or_below_one_is_refused(name: str) -> None:
    ceiling: int = getattr(SPEC_LIMITS, name)
    with pytest.raises(ValueError, match=f"{name} must be in 1..{ceiling}, got {ceiling + 1}"):
        replace(RuntimeConfig(), **{name: ceiling + 1})
    with pytest.raises(ValueError, match=f"{name} must be in 1..{ceiling}"):
        replace(RuntimeConfig(), **{name: 0})
    lowered = replace(RuntimeConfig(), **{name: ceiling - 1})
    assert getattr(lowered.limits, name) == ceiling - 1


def test_a_lowered_limit_reaches_the_gate() -> None:
    with IngressRuntime(RuntimeConfig(max_title_chars=10)) as rt:
        rt.greet("ws", "ops", writer_card("peer-a"))
        assert rt.submit(ctx("r-1"), CreateTask(title="x" * 10)).accepted
        refused = rt.submit(ctx("r-2"), CreateTask(title="x" * 11))
        assert not refused.accepted and refused.reason == Reason.VALIDATION_FAILED
