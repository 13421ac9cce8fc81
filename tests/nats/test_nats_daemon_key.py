"""Issue 13 (D): the daemon's key signs every answer (compact ones too), so clients pin it:
it lives beside the trust file, 0600, and survives restarts; a key others can read is
refused rather than used."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

from tests.nats.conftest import RunningDaemon
from tests.runtime.cli_support import cli, one_line

Start = Callable[..., RunningDaemon]


def test_the_daemon_key_survives_restarts_beside_the_trust_file_with_mode_0600(
        start_daemon: Start) -> None:
    d = start_daemon()
    first = (d.info.daemon_handle, d.info.daemon_public_key)
    key = d.daemon.settings.key_path
    assert os.path.dirname(key) == os.path.dirname(d.info.trust_file)
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    d.stop()
    again = start_daemon()
    assert (again.info.daemon_handle, again.info.daemon_public_key) == first


def test_serve_refuses_a_daemon_key_that_others_can_read(tmp_path: Path) -> None:
    key = tmp_path / "store.db.peer.key"
    assert cli("keygen", "--out", str(key), cwd=tmp_path).returncode == 0
    key.chmod(0o644)
    result = cli("serve", "--store", str(tmp_path / "store.db"), cwd=tmp_path, timeout=60)
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert "mode 0644" in line and "chmod 600" in line
    assert not (tmp_path / "store.db").exists()  # refused before anything was started
