"""Small private files beside the store: replaced atomically, durably, never through a link.

The audit checkpoint, the daemon's ready file, trust policy, greet ledger and NATS config
all go through `replace_private_file`, so each is written the same careful way.
"""

from __future__ import annotations

import contextlib
import os
import tempfile


def replace_private_file(path: str, text: str) -> None:
    """Replace `path` with `text` atomically and durably, mode 0600.

    The temporary file is made by mkstemp (O_EXCL, a random name, 0600) in the target's own
    directory: a planted file or symlink is never written through, and the rename stays on
    one file system. The directory is fsynced so the rename itself survives a power cut.
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.",
                               suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
