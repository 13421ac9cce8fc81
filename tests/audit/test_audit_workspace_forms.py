"""SPEC 2 workspaces may be any case and hold format characters (AGH's rule): the audit
stores them in safe form and `audit verify` still matches records with the store."""

from __future__ import annotations

from pathlib import Path

import pytest
from task_ingress.messages import CreateTask, IngressContext
from task_ingress.runtime import IngressRuntime, RuntimeConfig
from task_ingress.runtime.audit.verify import verify_store

from tests.conftest import writer_card


@pytest.mark.parametrize("workspace", ["01JDQ8Z6X4V7K2M9N3P5R8T1W0", "ws\u200f"])
def test_accepted_writes_in_agh_workspaces_verify(tmp_path: Path, workspace: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TASK_INGRESS_AUDIT_KEY", raising=False)
    store = tmp_path / "s.db"
    with IngressRuntime(RuntimeConfig(store_path=str(store))) as rt:
        rt.greet(workspace, "ops", writer_card("peer-a"))
        out = rt.submit(IngressContext(workspace=workspace, peer_id="peer-a", channel="ops",
                                       request_id="r-1"), CreateTask(title="t"))
        assert out.accepted
        [record] = rt.audit()
        assert record.workspace.isprintable()
        assert rt.get_task(workspace, out.task_id or "") is not None
    report = verify_store(str(store))
    assert report.ok, report.problems
