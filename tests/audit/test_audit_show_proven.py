"""Issue 13 (I): `audit show --peer` shows what the peer provably did. Anyone can claim a
peer ID, and a forger's rejections look like the peer's own; the chained `trust` field
tells them apart, and `--include-unproven` shows them too."""

from __future__ import annotations

from pathlib import Path

from task_ingress.messages import CreateTask, IngressContext
from task_ingress.runtime import IngressRuntime, RuntimeConfig
from task_ingress.runtime.cli import app
from typer.testing import CliRunner

from tests.conftest import ctx, writer_card

runner = CliRunner(env={"COLUMNS": "250"})


def _as(request_id: str, trust: str) -> IngressContext:
    return IngressContext(workspace="ws", peer_id="peer-b", channel="ops",
                          request_id=request_id, trust=trust)


def test_show_by_peer_lists_proven_records_unless_asked_for_the_unproven(
        tmp_path: Path) -> None:
    store = tmp_path / "store.db"
    with IngressRuntime(RuntimeConfig(store_path=str(store))) as rt:
        rt.greet("ws", "ops", writer_card("peer-b"))
        rt.submit(ctx("own-1", peer="peer-b"), CreateTask(title="mine"))  # embedded
        rt.submit(_as("own-2", "verified"), CreateTask(title="mine too"))
        for n, trust in enumerate(("unverified", "rejected", "unverified")):
            rt.submit(_as(f"claimed-{n}", trust), CreateTask(title=""))
    result = runner.invoke(app, ["audit", "show", "--store", str(store), "--peer", "peer-b"])
    assert result.exit_code == 0, result.output
    assert "own-1" in result.output and "own-2" in result.output
    assert "claimed" not in result.output and "2 record(s)" in result.output
    result = runner.invoke(app, ["audit", "show", "--store", str(store), "--peer", "peer-b",
                                 "--include-unproven"])
    assert result.exit_code == 0, result.output
    assert "5 record(s)" in result.output
    assert "peer-b (unverified)" in result.output and "peer-b (rejected)" in result.output
    # Without --peer every record shows, each unproven one marked.
    result = runner.invoke(app, ["audit", "show", "--store", str(store)])
    assert "5 record(s)" in result.output
