"""The operator's trust file: which Ed25519 public key speaks for which peer ID.

Format (JSON): {"version": 1, "peers": {"<peer_id>": "<base64 raw public key>", ...}}.
The daemon re-reads the file when its (inode, size, mtime) changes, checked at most every
`recheck` seconds and at once when an unknown peer shows up, so enrolment and revocation
need no restart. Writers (`enroll`) take an exclusive lock and replace the file atomically,
so the daemon never reads half a file and concurrent enrolments do not lose entries.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from task_ingress.actors.log import get_logger
from task_ingress.actors.rules import gate
from task_ingress.runtime.nats.signing import parse_public_key

TRUST_VERSION = 1


def _stamp(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def read_trust_file(path: str) -> dict[str, Ed25519PublicKey]:
    """Parse a trust file; malformed entries are skipped (and logged), a missing file is {}."""
    log = get_logger(component="nats.trust")
    try:
        with open(path, encoding="utf-8") as fh:
            obj = json.load(fh)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.error("trust.unreadable", path=path, error=repr(exc))
        return {}
    peers = obj.get("peers") if isinstance(obj, dict) else None
    if not isinstance(peers, dict):
        log.error("trust.malformed", path=path)
        return {}
    keys: dict[str, Ed25519PublicKey] = {}
    for peer, text in peers.items():
        key = parse_public_key(text)
        if not isinstance(peer, str) or not gate.is_peer_id(peer) or key is None:
            log.warning("trust.entry_skipped", path=path, peer=gate.safe_field(peer))
            continue
        keys[peer] = key
    return keys


class TrustStore:
    """Thread-safe view of a trust file that follows changes without a restart."""

    def __init__(self, path: str, recheck: float = 0.25,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = os.path.abspath(path)
        self.recheck = recheck
        self.clock = clock
        self._lock = threading.Lock()
        self._keys: dict[str, Ed25519PublicKey] = {}
        self._stamp: tuple[int, int, int] | None = None
        self._checked = 0.0
        self.reloads = 0
        self._refresh(force=True)

    def lookup(self, peer_id: str) -> Ed25519PublicKey | None:
        """The peer's enrolled key, or None (after re-reading a changed file)."""
        self._refresh(force=False)
        key = self._keys.get(peer_id)
        if key is None:
            self._refresh(force=True)
            key = self._keys.get(peer_id)
        return key

    def __len__(self) -> int:
        return len(self._keys)

    def _refresh(self, force: bool) -> None:
        now = self.clock()
        if not force and now - self._checked < self.recheck:
            return
        with self._lock:
            self._checked = now
            stamp = _stamp(self.path)
            if stamp == self._stamp:
                return
            self._keys = read_trust_file(self.path)
            self._stamp = stamp
            self.reloads += 1
            get_logger(component="nats.trust").info("trust.reloaded", path=self.path,
                                                    peers=len(self._keys))


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _write_atomic(path: str, peers: Mapping[str, str]) -> None:
    directory = os.path.dirname(os.path.abspath(path)) or "."
    fd, tmp = tempfile.mkstemp(prefix=".trust-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({"version": TRUST_VERSION, "peers": dict(sorted(peers.items()))}, fh,
                      indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _read_raw(path: str) -> dict[str, str]:
    try:
        with open(path, encoding="utf-8") as fh:
            obj = json.load(fh)
    except FileNotFoundError:
        return {}
    peers = obj.get("peers") if isinstance(obj, dict) else None
    return {k: v for k, v in peers.items() if isinstance(v, str)} if isinstance(
        peers, dict) else {}


def enroll(path: str, keys: Mapping[str, str]) -> None:
    """Add or replace peers' public keys (base64 text) in the trust file, atomically."""
    for peer in keys:
        if not gate.is_peer_id(peer):
            raise ValueError(f"malformed peer id {peer!r}")
    with _locked(path):
        peers = _read_raw(path)
        peers.update(keys)
        _write_atomic(path, peers)


def revoke(path: str, peer_ids: list[str]) -> None:
    """Remove peers from the trust file, atomically."""
    with _locked(path):
        peers = _read_raw(path)
        for peer in peer_ids:
            peers.pop(peer, None)
        _write_atomic(path, peers)


def ensure_trust_file(path: str) -> None:
    """Create an empty trust file (mode 0600) when none exists."""
    with _locked(path):
        if not os.path.exists(path):
            _write_atomic(path, {})
