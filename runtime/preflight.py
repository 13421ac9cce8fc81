"""Checks the commands run before they start anything, so a user's mistake costs one line
(exit 2) and leaves nothing behind: a path that cannot be written, an unknown actor base."""

from __future__ import annotations

import contextlib
import os
import tempfile

from task_ingress.runtime.cli_exit import UsageProblem

ACTOR_BASES = ("simpleSystemBase", "multiprocQueueBase", "multiprocTCPBase",
               "multiprocUDPBase")
"""The Thespian system bases the runtime starts on (`--actor-base`)."""


def check_actor_base(name: str, option: str = "--actor-base") -> None:
    """Raise UsageProblem unless `name` is one of ACTOR_BASES."""
    if name not in ACTOR_BASES:
        raise UsageProblem(f"{option} {name!r} is not a Thespian system base; use one of: "
                           f"{', '.join(ACTOR_BASES)}")


def check_writable(path: str, option: str, *, create_dir: bool = False) -> None:
    """Raise UsageProblem unless the file at `path` can be created (or, if it exists,
    opened for writing) together with files beside it. `create_dir`: the command creates
    a missing last folder itself, so its parent must be writable instead. Leaves nothing
    behind."""
    target = os.path.abspath(path)
    directory = os.path.dirname(target)
    hint = f"{option} {path}"
    if os.path.isdir(target):
        raise UsageProblem(f"{hint} is a directory; give a file name inside it")
    probe_in = directory
    if not os.path.isdir(directory):
        parent = os.path.dirname(directory)
        if not (create_dir and os.path.isdir(parent)):
            raise UsageProblem(f"{hint}: directory {directory} does not exist; create it or "
                               "choose another path")
        probe_in = parent
    try:
        fd, probe = tempfile.mkstemp(prefix=".task-ingress-probe-", dir=probe_in)
    except OSError as exc:
        raise UsageProblem(f"{hint}: cannot write in {probe_in} ({exc.strerror}); choose a "
                           "directory you can write to") from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)
    if os.path.exists(target):
        try:
            with open(target, "r+b"):
                pass
        except OSError as exc:
            raise UsageProblem(f"{hint}: cannot write {target} ({exc.strerror}); check its "
                               "owner and mode") from None


def check_store_writable(path: str, option: str = "--store") -> None:
    """A store file needs its directory writable too: SQLite and the audit put `-wal`,
    `-shm`, `.checkpoint` and `.key` files beside it."""
    check_writable(path, option)


def check_key_file(path: str, option: str = "--key-file") -> None:
    """A daemon's Ed25519 key: an existing file must be a readable key (it is only read), a
    missing one must be creatable (the daemon makes it)."""
    if not os.path.exists(path):
        check_writable(path, option)
        return
    from task_ingress.runtime.nats.identity import load_private_key

    try:
        load_private_key(path)
    except (OSError, ValueError) as exc:
        raise UsageProblem(f"{option} {path}: not a readable Ed25519 key ({exc}); give "
                           "another path or remove it to have a new key made") from None
