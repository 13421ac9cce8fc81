"""The bench's runtime CPU figure leaves out the bench's own client work, and only that."""

from __future__ import annotations

import time

from task_ingress.bench.workload import PhaseResult, Workload, peers_for, run_phase
from task_ingress.messages.codec import encode_reply
from task_ingress.messages.outcomes import Outcome
from task_ingress.messages.peers import PeerCard
from task_ingress.messages.reasons import Action, Reason

BURN = 0.004
"""CPU seconds each `deliver` of the burning system spends: far above the client's work."""


def _burn(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


class BurningSystem:
    """Spends BURN seconds of this thread's CPU in every `deliver`, then rejects."""

    def greet(self, workspace: str, channel: str, card: PeerCard) -> None:
        """Nothing to make visible."""

    def deliver(self, envelope: bytes, *, workspace: str, channel: str, peer_id: str) -> bytes:
        """Burn, then answer."""
        _burn(BURN)
        return encode_reply(Outcome.rejected("r", Action.CREATE, Reason.VALIDATION_FAILED))


class ChildSystem(BurningSystem):
    """The same, claiming to run in child processes (it has none)."""

    runtime_in_children = True


def _phase(system: BurningSystem, count: int = 40) -> PhaseResult:
    w = Workload(requests=count, threads=2, peers=4, channels=2)
    return run_phase(system, w, peers_for(w), "peak", count, None, 60.0)


def test_work_done_inside_deliver_counts_as_the_runtimes_and_the_rest_as_the_clients() -> None:
    result = _phase(BurningSystem())
    assert result.runtime_cpu_s >= 40 * BURN * 0.9
    assert result.client_cpu_s < 40 * BURN * 0.25
    assert abs(result.runtime_cpu_s + result.client_cpu_s - result.cpu_s) < 1e-9


def test_a_system_in_child_processes_is_charged_only_their_cpu() -> None:
    result = _phase(ChildSystem())
    assert result.cpu_s >= 40 * BURN * 0.9
    assert result.runtime_cpu_s == 0.0
