"""`--leave`: a churning peer leaves with a leave message (revoke, in-process default) or by
going silent until it expires (silence: the only way over NATS, and in-process on request,
so both sides of `task-ingress bench --swarm` run the same workload)."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import pytest
from task_ingress.messages import CreateTask
from task_ingress.messages.codec import decode_reply, encode_envelope
from task_ingress.messages.peers import PeerCard
from task_ingress.runtime.cli import app
from task_ingress.runtime.config import RuntimeConfig
from task_ingress.runtime.swarm.config import SwarmConfig
from task_ingress.runtime.swarm.invariants import check_all
from task_ingress.runtime.swarm.transport import InProcTransport
from typer.testing import CliRunner

from tests.swarm.swarm_support import run_kept


def _write_after_leave(tmp_path: Path, leave_revokes: bool) -> dict[str, object]:
    """Greet, leave through the transport, then write at once: the reply."""
    transport = InProcTransport(
        RuntimeConfig(store_path=os.path.join(tmp_path, "s.db"), durable=False,
                      greet_interval=30.0, audit_key=secrets.token_hex(32)),
        leave_revokes=leave_revokes)
    try:
        transport.greet("ws", "ch", PeerCard(peer_id="p1", capabilities=["task.write"],
                                             proof="x"))
        transport.leave("ws", "ch", "p1")
        raw = transport.deliver(encode_envelope(CreateTask(title="after leave"), "r-1"),
                                workspace="ws", channel="ch", peer_id="p1")
        return decode_reply(raw)
    finally:
        transport.close()


def test_a_revoking_leave_stops_the_peer_writing_at_once(tmp_path: Path) -> None:
    reply = _write_after_leave(tmp_path, leave_revokes=True)
    assert reply["accepted"] is False and reply["reason"] == "peer_not_found"


def test_a_silent_leave_sends_nothing_so_the_peer_stays_visible_until_it_expires(
    tmp_path: Path,
) -> None:
    reply = _write_after_leave(tmp_path, leave_revokes=False)
    assert reply["accepted"] is True


def test_leave_defaults_to_the_transports_own_and_revoke_is_refused_over_nats() -> None:
    assert SwarmConfig().leave_revokes is True
    assert SwarmConfig(leave="silence").leave_revokes is False
    assert SwarmConfig(transport="nats").leave_revokes is False
    with pytest.raises(ValueError, match="no leave message"):
        SwarmConfig(transport="nats", leave="revoke")
    with pytest.raises(ValueError, match="revoke or silence"):
        SwarmConfig(leave="quit")


def test_a_silent_leave_swarm_holds_every_invariant_and_probes_expiry_not_leave(
    tmp_path: Path,
) -> None:
    # Expiry (2 x 0.3 s) is short enough for silent peers to wait out (allow_silence).
    run = run_kept(str(tmp_path), leave="silence", requests=500)
    assert [c.name for c in check_all(run.evidence()) if not c.ok] == []
    stats = run.swarm.stats
    assert stats.leaves > 0
    assert stats.bad_sent["expired_peer"] > 0 and stats.bad_sent["left_peer"] == 0
    assert stats.bad_as_expected == stats.bad_sent
    assert "--leave silence" in run.swarm.unsent_notes()["left_peer"]


def test_swarm_command_reports_the_leave_it_ran_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, [
        "swarm", "--requests", "200", "--peers", "6", "--channels", "2", "--concurrency",
        "3", "--greet-interval", "0.3", "--leave", "silence", "--no-progress", "--plot", "",
    ])
    assert result.exit_code == 0, result.output
    assert "(leave = silence)" in result.output
    report = json.loads((tmp_path / "reports" / "swarm-report.json").read_text())
    assert report["config"]["leave"] == "silence"
    # What the run did, not only what it was told: no peer was probed after a leave.
    assert "silence" in report["unsent_bad_kinds"]["left_peer"]
    refused = CliRunner().invoke(app, ["swarm", "--leave", "quit", "--no-progress"])
    assert refused.exit_code == 2 and "--leave is revoke or silence" in refused.output
