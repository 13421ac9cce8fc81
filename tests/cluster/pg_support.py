"""A throwaway PostgreSQL 15 server for the cluster tests, started and removed by them.

PostgreSQL refuses to run as root, and the tests may run as root: then initdb and postgres
run as the system user `postgres` (subprocess `user=`), in a temp directory it owns. The
server listens on 127.0.0.1 on a free port, with its unix socket inside the temp directory,
and is tuned for tests (fsync off): its data is thrown away.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from task_ingress.runtime.ports import free_port

BIN_DIRS = (Path("/usr/lib/postgresql/15/bin"),)
START_TIMEOUT = 30.0


def find_bin_dir() -> Path | None:
    """The directory holding initdb and postgres, or None when PostgreSQL is not installed."""
    for d in BIN_DIRS:
        if (d / "initdb").is_file() and (d / "postgres").is_file():
            return d
    return None


class PostgresServer:
    """One postgres process on loopback; `url()` names a database in it."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="ti-pg-"))
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        # As root, everything runs as `postgres`; otherwise as whoever runs the tests.
        self.user: str | None = "postgres" if os.geteuid() == 0 else None

    def _run_as(self) -> dict[str, object]:
        if self.user is None:
            return {}
        pw = pwd.getpwnam(self.user)
        return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}

    def start(self) -> None:
        """initdb, start postgres, and wait until it accepts connections."""
        if self.user is not None:
            pw = pwd.getpwnam(self.user)
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        data, log = self.root / "data", self.root / "postgres.log"
        subprocess.run(
            [str(self.bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
             "-E", "UTF8", "--no-sync", "--no-instructions"],
            check=True, cwd=self.root, capture_output=True, **self._run_as(),  # type: ignore[arg-type]
        )
        self.port = free_port()
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [str(self.bin_dir / "postgres"), "-D", str(data), "-p", str(self.port),
                 "-k", str(self.root), "-c", "listen_addresses=127.0.0.1",
                 "-c", "fsync=off", "-c", "synchronous_commit=off",
                 "-c", "full_page_writes=off", "-c", "max_connections=60"],
                cwd=self.root, stdout=out, stderr=subprocess.STDOUT,
                **self._run_as(),  # type: ignore[arg-type]
            )
        import psycopg  # the `cluster` extra: imported only when a server is started

        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                with psycopg.connect(self.url("postgres"), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    tail = log.read_text(errors="replace")[-2000:]
                    self.stop()
                    raise RuntimeError(f"postgres did not start: {tail}") from None
                time.sleep(0.1)

    def url(self, database: str) -> str:
        """A connection URL for `database` as the superuser `postgres`."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        """Fast shutdown (SIGINT), then remove the data directory."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        # postgres' last children may still be writing as the postmaster exits: retry.
        for _ in range(50):
            shutil.rmtree(self.root, ignore_errors=True)
            if not self.root.exists():
                return
            time.sleep(0.1)
        shutil.rmtree(self.root)
