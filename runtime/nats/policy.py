"""The operator's trust policy: which verified identities may be granted `task.write`.

Verified is identity, not permission (RFC 004 section 7.1: no organisation-level
authorization): a peer whose proof verifies is *who it says*; whether its card's
`task.write` claim is granted is this policy's answer. The policy names handles; it grants by
fingerprint (the key), so a key holder is the same principal whatever nickname it picks.

File (JSON, operator-owned, default `<store>.trust.json`, path in the ready file):
`{"version": 2, "allow": {"<fingerprint>": "<handle as added>", ...},
"keys": {"<fingerprint>": "<base64url public key>", ...}}`. `keys` (optional) holds the
public keys of enrolled handles: a handle with its key is also a NATS user of the daemon's
local server (authz.py), so with per-peer users only such peers can connect at all. A key
is kept only beside an allowed fingerprint it hashes to.
The daemon re-reads the file when its (inode, size, mtime) changes, checked (one stat) on
every decision by default, so `task-ingress trust add|remove` applies at once, no restart.
Writers lock `<file>.lock` and replace the file atomically, so readers never see half a
file and concurrent edits lose nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
import time
from collections.abc import Callable, Iterator

from task_ingress.actors.log import get_logger
from task_ingress.actors.storage.files import replace_private_file
from task_ingress.runtime.nats.identity import b64url, fingerprint, handle_fingerprint, unb64url

POLICY_VERSION = 2


def file_stamp(path: str) -> tuple[int, int, int] | None:
    """(inode, size, mtime) of the file, None when it is missing: it changes on every
    rewrite (writers replace the file)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _read(path: str) -> tuple[dict[str, str], dict[str, bytes]]:
    """(fingerprint -> handle, fingerprint -> public key); malformed entries skipped."""
    log = get_logger(component="nats.policy")
    try:
        with open(path, encoding="utf-8") as fh:
            obj = json.load(fh)
    except FileNotFoundError:
        return {}, {}
    except (OSError, ValueError) as exc:
        log.error("policy.unreadable", path=path, error=repr(exc))
        return {}, {}
    allow = obj.get("allow") if isinstance(obj, dict) else None
    if not isinstance(allow, dict):
        log.error("policy.malformed", path=path)
        return {}, {}
    entries: dict[str, str] = {}
    for fp, who in allow.items():
        if not isinstance(who, str) or handle_fingerprint(who) != fp:
            log.warning("policy.entry_skipped", path=path)
            continue
        entries[fp] = who
    keys: dict[str, bytes] = {}
    raw_keys = obj.get("keys", {})
    for fp, text in (raw_keys.items() if isinstance(raw_keys, dict) else ()):
        pub = unb64url(text) if isinstance(text, str) else None
        if fp not in entries or pub is None or len(pub) != 32 or fingerprint(pub) != fp:
            log.warning("policy.key_skipped", path=path)
            continue
        keys[fp] = pub
    return entries, keys


def read_policy(path: str) -> dict[str, str]:
    """fingerprint -> handle; a missing file is empty, malformed entries are skipped."""
    return _read(path)[0]


def read_keys(path: str) -> dict[str, bytes]:
    """fingerprint -> raw public key of every allowed handle enrolled with its key."""
    return _read(path)[1]


class TrustPolicy:
    """Thread-safe view of a policy file that follows changes without a restart."""

    def __init__(self, path: str, recheck: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = os.path.abspath(path)
        self.recheck = recheck
        self.clock = clock
        self._lock = threading.Lock()
        self._allow: dict[str, str] = {}
        self._stamp: tuple[int, int, int] | None = None
        self._checked = float("-inf")
        self.reloads = 0
        self._refresh()

    def allows(self, fingerprint: str) -> bool:
        """True when the key with this fingerprint may be granted `task.write`.

        A miss re-checks the file at once (a stat); a hit re-checks it when `recheck`
        seconds have passed (0 by default: every time).
        """
        self._refresh()
        if fingerprint in self._allow:
            return True
        self._refresh(force=True)
        return fingerprint in self._allow

    def __len__(self) -> int:
        self._refresh()
        return len(self._allow)

    def _refresh(self, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self._checked < self.recheck:
            return
        with self._lock:
            self._checked = now
            stamp = file_stamp(self.path)
            if stamp == self._stamp:
                return
            self._allow = read_policy(self.path)
            self._stamp = stamp
            self.reloads += 1
            get_logger(component="nats.policy").info("policy.reloaded", path=self.path,
                                                     allowed=len(self._allow))


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _write_atomic(path: str, allow: dict[str, str], keys: dict[str, bytes]) -> None:
    obj: dict[str, object] = {"version": POLICY_VERSION, "allow": dict(sorted(allow.items()))}
    if keys:
        obj["keys"] = {fp: b64url(pub) for fp, pub in sorted(keys.items()) if fp in allow}
    replace_private_file(path, json.dumps(obj, indent=1) + "\n")


def _fingerprint_of(handle: str) -> str:
    fp = handle_fingerprint(handle.strip())
    if fp is None:
        raise ValueError(f"not a verified handle (nickname@fingerprint): {handle!r}")
    return fp


def allow(path: str, handles: list[str], keys: list[bytes] | None = None) -> None:
    """Add handles to the policy (their fingerprints may be granted task.write), with the
    public keys given in `keys` (each must be the key of one of `handles`: ValueError
    otherwise), which makes those handles NATS users of the daemon's local server."""
    entries = {_fingerprint_of(h): h.strip() for h in handles}
    enrolled: dict[str, bytes] = {}
    for pub in keys or []:
        fp = fingerprint(pub) if len(pub) == 32 else ""
        if fp not in entries:
            raise ValueError(f"public key {b64url(pub)} belongs to none of the handles "
                             "given (a handle's fingerprint is sha256 of its key)")
        enrolled[fp] = pub
    with _locked(path):
        current, current_keys = _read(path)
        current.update(entries)
        current_keys.update(enrolled)
        _write_atomic(path, current, current_keys)


def disallow(path: str, handles: list[str]) -> list[str]:
    """Remove handles' fingerprints (and their keys) from the policy; returns the handles
    that were there."""
    fps = [_fingerprint_of(h) for h in handles]
    with _locked(path):
        current, current_keys = _read(path)
        removed = [current.pop(fp) for fp in fps if fp in current]
        _write_atomic(path, current, current_keys)
    return removed


def listed(path: str) -> list[str]:
    """The handles in the policy, sorted."""
    return sorted(read_policy(path).values())


def ensure_policy_file(path: str) -> None:
    """Create an empty policy file (mode 0600) when none exists."""
    with _locked(path):
        if not os.path.exists(path):
            _write_atomic(path, {}, {})
