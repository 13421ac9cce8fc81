"""One daemon per store: an exclusive lock on `<store>.lock`, held for the daemon's life.

`flock` on an open file: the kernel drops it when the holder exits, however it exits
(SIGKILL included), so a lock is never stale and the file is never removed (removing a lock
file races with the next locker). The holder writes its pid into it for the message the
next one prints. Everything of the daemon's hangs off the store (its key, trust file,
NATS config, ready file checks), so the one lock covers them all.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from types import TracebackType

from task_ingress.runtime.errors import RuntimeStartError


class StoreInUse(RuntimeStartError):
    """Another process holds the store's lock: the one-line reason says which."""


def lock_path(store: str) -> str:
    """The lock file of a store."""
    return os.path.abspath(store) + ".lock"


class StoreLock:
    """Exclusive, non-blocking lock of one store; `acquire` raises StoreInUse when taken."""

    def __init__(self, store: str) -> None:
        self.store = os.path.abspath(store)
        self.path = lock_path(store)
        self._fd: int | None = None

    def acquire(self) -> StoreLock:
        """Take the lock now or raise StoreInUse naming the holder's pid."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            who = f" (pid {holder})" if holder.isdigit() else ""
            raise StoreInUse(
                f"the store {self.store} is in use by another task-ingress serve{who}; stop "
                "it first or give another --store") from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def release(self) -> None:
        """Drop the lock (the file stays); idempotent."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)

    def __enter__(self) -> StoreLock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
