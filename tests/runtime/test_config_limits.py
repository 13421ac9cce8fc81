"""SPEC §2's limits are one table: RuntimeConfig's defaults are its ceilings, a lower value
reaches the gate, a higher one is refused before anything starts. The runtime's own limits
(peer cards, channels, greet budget) have no ceiling but must be positive."""

from __future__ import annotations

from dataclasses import replace

import pytest
from task_ingress.messages import CreateTask, PeerCard, Reason
from task_ingress.messages.codec import MAX_ENVELOPE_BYTES
from task_ingress.messages.limits import SPEC_LIMITS, Limits
from task_ingress.messages.protocol import Settings
from task_ingress.runtime import IngressRuntime, PresenceRefused, RuntimeConfig

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


@pytest.mark.parametrize("name", ["max_card_capabilities", "max_capability_chars",
                                  "max_display_name_chars", "max_proof_bytes", "max_channels",
                                  "max_channels_per_peer"])
def test_a_card_or_channel_limit_below_one_is_refused_and_any_higher_one_reaches_the_config(
    name: str
) -> None:
    with pytest.raises(ValueError):
        replace(RuntimeConfig(), **{name: 0})
    raised = replace(RuntimeConfig(), **{name: 100_000})  # not SPEC limits: no ceiling
    assert getattr(raised, name) == 100_000


def test_a_negative_rate_or_burst_is_refused() -> None:
    for name in ("peer_rate", "peer_burst", "greet_rate", "greet_burst"):
        with pytest.raises(ValueError, match="must not be negative"):
            replace(RuntimeConfig(), **{name: -1.0})


def test_a_lowered_card_limit_reaches_the_greet() -> None:
    with IngressRuntime(RuntimeConfig(max_card_capabilities=1)) as rt:
        rt.greet("ws", "ops", writer_card("peer-a"))
        with pytest.raises(PresenceRefused) as refused:
            rt.greet("ws", "ops", PeerCard(peer_id="peer-b", capabilities=["a", "b"]))
        assert refused.value.reason == Reason.INVALID_REQUEST
