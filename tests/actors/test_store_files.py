"""The files beside a store are private and never written through a planted link: the
database, its WAL and SHM, the checkpoint and the key are created mode 0600 whatever the
umask, and a checkpoint is replaced via a fresh mkstemp file in the store's directory."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from task_ingress.messages import CreateTask
from task_ingress.runtime import IngressRuntime, RuntimeConfig
from task_ingress.runtime.config import PROCESS_MODES

from tests.conftest import ctx, writer_card


@pytest.fixture(autouse=True)
def _loose_umask(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The usual umask 022 would make new files world-readable."""
    monkeypatch.delenv("TASK_INGRESS_AUDIT_KEY", raising=False)
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_store_wal_shm_checkpoint_and_key_are_created_0600(tmp_path: Path) -> None:
    store = tmp_path / "store.db"
    with IngressRuntime(RuntimeConfig(store_path=str(store))) as rt:
        rt.greet("ws", "ops", writer_card("peer-a"))
        assert rt.submit(ctx("r-1"), CreateTask(title="t")).accepted
        names = ("store.db", "store.db-wal", "store.db-shm", "store.db.checkpoint",
                 "store.db.key")
        assert {n: oct(mode(tmp_path / n)) for n in names} == {n: "0o600" for n in names}
    assert oct(mode(store)) == oct(mode(tmp_path / "store.db.checkpoint")) == "0o600"


def test_an_existing_store_keeps_the_mode_its_operator_gave_it(tmp_path: Path) -> None:
    store = tmp_path / "store.db"
    with IngressRuntime(RuntimeConfig(store_path=str(store))):
        pass
    os.chmod(store, 0o640)  # e.g. a monitoring group may read it
    with IngressRuntime(RuntimeConfig(store_path=str(store))):
        pass
    assert mode(store) == 0o640


def test_a_checkpoint_is_never_written_through_a_planted_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    store = tmp_path / "store.db"
    # Where a fixed temporary name would be, and the checkpoint itself.
    os.symlink(victim, tmp_path / "store.db.checkpoint.tmp")
    with IngressRuntime(RuntimeConfig(store_path=str(store))) as rt:
        rt.greet("ws", "ops", writer_card("peer-a"))
        rt.submit(ctx("r-1"), CreateTask(title="t"))
    os.remove(tmp_path / "store.db.checkpoint")
    os.symlink(victim, tmp_path / "store.db.checkpoint")
    with pytest.raises(Exception, match="checkpoint"):  # a symlink is no checkpoint of ours
        IngressRuntime(RuntimeConfig(store_path=str(store))).start()
    assert victim.read_text() == "precious"


def test_checkpoints_leave_no_temporary_files_behind(tmp_path: Path) -> None:
    store = tmp_path / "store.db"
    with IngressRuntime(RuntimeConfig(store_path=str(store))) as rt:
        rt.greet("ws", "ops", writer_card("peer-a"))
        for i in range(3):
            rt.submit(ctx(f"r-{i}"), CreateTask(title="t"))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "store.db", "store.db.checkpoint", "store.db.key"]
    assert not (tmp_path / "store.db.checkpoint").is_symlink()


@pytest.mark.parametrize("mode", PROCESS_MODES)
def test_a_clean_close_leaves_no_wal_or_shm_beside_the_store(tmp_path: Path, mode: str) -> None:
    # docs/operating.md: the -wal file (up to ~16 MB) lives only while the store is open.
    store = tmp_path / "store.db"
    with IngressRuntime(RuntimeConfig(store_path=str(store), process_mode=mode)) as rt:
        rt.greet("ws", "ops", writer_card("peer-a"))
        assert rt.submit(ctx("r-1"), CreateTask(title="t")).accepted
        assert (tmp_path / "store.db-wal").exists()
    assert not (tmp_path / "store.db-wal").exists()
    assert not (tmp_path / "store.db-shm").exists()
