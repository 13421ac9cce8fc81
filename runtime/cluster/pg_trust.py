"""The trust policy of a cluster, in PostgreSQL: which verified handles may be granted
`task.write`, on every daemon at once (`task-ingress trust add|remove|list --database URL`).

The file policy's semantics (runtime/nats/policy.py), in a table: the policy names handles
and grants by fingerprint (the key), so a key holder is one principal whatever nickname it
picks; a handle may be enrolled with its public key (then it is also a NATS user), and a key
is kept only beside an allowed fingerprint it hashes to. Each edit is one transaction.

`DatabaseTrustPolicy` is the daemons' reader: `TrustPolicy`'s interface (`allows`,
`__len__`) plus `keys()`, re-reading the table at most every `recheck` seconds, so a change
reaches every daemon within that time; a daemon that cannot reach the database keeps the
policy it last read (and logs it) rather than granting or revoking on a guess.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
from task_ingress.actors.log import get_logger
from task_ingress.runtime.nats.identity import fingerprint, handle_fingerprint

SCHEMA = """
CREATE TABLE IF NOT EXISTS trust_policy (
    fingerprint text PRIMARY KEY,
    handle text NOT NULL,
    public_key bytea,
    added_at timestamptz NOT NULL DEFAULT now()
);
"""


def ensure_trust_schema(conn: psycopg.Connection[Any]) -> None:
    """Create the policy table if missing (several writers may race: an advisory lock)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(7316003)")
        conn.execute(SCHEMA)


def _fingerprint_of(handle: str) -> str:
    fp = handle_fingerprint(handle.strip())
    if fp is None:
        raise ValueError(f"not a verified handle (nickname@fingerprint): {handle!r}")
    return fp


def allow(conn: psycopg.Connection[Any], handles: list[str],
          keys: list[bytes] | None = None) -> None:
    """Add handles (their fingerprints may be granted task.write), with the public keys in
    `keys` (each must be the key of one of `handles`: ValueError otherwise). Re-adding a
    handle keeps a key enrolled before."""
    entries = {_fingerprint_of(h): h.strip() for h in handles}
    enrolled: dict[str, bytes] = {}
    for pub in keys or []:
        fp = fingerprint(pub) if len(pub) == 32 else ""
        if fp not in entries:
            raise ValueError("a public key given belongs to none of the handles given (a "
                             "handle's fingerprint is sha256 of its key)")
        enrolled[fp] = pub
    ensure_trust_schema(conn)
    with conn.transaction():
        for fp, who in entries.items():
            conn.execute(
                "INSERT INTO trust_policy (fingerprint, handle, public_key) VALUES (%s, %s, %s) "
                "ON CONFLICT (fingerprint) DO UPDATE SET handle = EXCLUDED.handle, "
                "public_key = COALESCE(EXCLUDED.public_key, trust_policy.public_key)",
                (fp, who, enrolled.get(fp)))


def disallow(conn: psycopg.Connection[Any], handles: list[str]) -> list[str]:
    """Remove handles' fingerprints (and their keys); returns the handles that were there."""
    fps = [_fingerprint_of(h) for h in handles]
    ensure_trust_schema(conn)
    rows = conn.execute("DELETE FROM trust_policy WHERE fingerprint = ANY(%s) RETURNING handle",
                        (fps,)).fetchall()
    return sorted(str(r[0]) for r in rows)


def read_policy(conn: psycopg.Connection[Any]
                ) -> tuple[dict[str, str], dict[str, bytes]]:
    """(fingerprint -> handle, fingerprint -> public key); rows whose handle or key does not
    match their fingerprint (edited by hand) are skipped, as the file policy skips them."""
    exists = conn.execute("SELECT to_regclass('trust_policy') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return {}, {}
    entries: dict[str, str] = {}
    keys: dict[str, bytes] = {}
    log = get_logger(component="cluster.trust")
    for fp, who, pub in conn.execute("SELECT fingerprint, handle, public_key FROM trust_policy"):
        if handle_fingerprint(str(who)) != fp:
            log.warning("policy.entry_skipped", fingerprint=fp)
            continue
        entries[fp] = str(who)
        if pub is not None:
            raw = bytes(pub)
            if len(raw) == 32 and fingerprint(raw) == fp:
                keys[fp] = raw
            else:
                log.warning("policy.key_skipped", fingerprint=fp)
    return entries, keys


def listed(conn: psycopg.Connection[Any]) -> list[str]:
    """The handles in the policy, sorted."""
    return sorted(read_policy(conn)[0].values())


class DatabaseTrustPolicy:
    """Thread-safe view of the cluster's policy table, re-read at most every `recheck`
    seconds (by `clock`). Drop-in for `TrustPolicy` where a daemon judges trust.

    With `read_on_call` (the default) a question (`allows`, `len`, `keys`, `handles`) re-reads
    the table when it is due, on the asking thread. Without it, questions never touch the
    database and answer from the last policy read: whoever owns the policy calls `refresh`
    (from a thread of its own), so that a caller that must never wait — an event loop — never
    waits for the database. The first read happens in the constructor either way."""

    def __init__(self, url: str, recheck: float = 2.0,
                 clock: Callable[[], float] = time.monotonic,
                 connect: Callable[[str], psycopg.Connection[Any]] | None = None,
                 read_on_call: bool = True) -> None:
        self.url = url
        self.recheck = recheck
        self.read_on_call = read_on_call
        self.clock = clock
        self._connect = connect or (lambda u: psycopg.connect(u, autocommit=True,
                                                              connect_timeout=5))
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()
        self._allow: dict[str, str] = {}
        self._keys: dict[str, bytes] = {}
        self._checked = float("-inf")
        self.reloads = 0
        """Successful reads of the table."""
        self.failures = 0
        """Reads that failed (the last policy read stayed in force)."""
        self.refresh()

    def allows(self, fingerprint: str) -> bool:
        """True when the key with this fingerprint may be granted `task.write`."""
        self._on_call()
        return fingerprint in self._allow

    def __len__(self) -> int:
        self._on_call()
        return len(self._allow)

    def keys(self) -> dict[str, bytes]:
        """fingerprint -> raw public key of every allowed handle enrolled with its key (the
        NATS users a daemon's server admits)."""
        self._on_call()
        return dict(self._keys)

    def handles(self) -> list[str]:
        """The allowed handles, sorted."""
        self._on_call()
        return sorted(self._allow.values())

    def _on_call(self) -> None:
        if self.read_on_call:
            self.refresh()

    def close(self) -> None:
        """Close the reader's connection."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def refresh(self, force: bool = False) -> None:
        """Re-read the table if `recheck` seconds have passed since the last read (or
        `force`). A read that fails keeps the policy last read (counted in `failures`,
        logged `policy.unreadable`). Blocks the calling thread for the read."""
        now = self.clock()
        if not force and now - self._checked < self.recheck:
            return
        with self._lock:
            if not force and now - self._checked < self.recheck:
                return
            self._checked = now
            try:
                if self._conn is None or self._conn.closed or self._conn.broken:
                    self._conn = self._connect(self.url)
                allow, keys = read_policy(self._conn)
            except psycopg.Error as exc:
                self.failures += 1
                get_logger(component="cluster.trust").error(
                    "policy.unreadable", error=repr(exc), allowed=len(self._allow))
                return
            changed = allow != self._allow or keys != self._keys
            self._allow, self._keys = allow, keys
            self.reloads += 1
            if changed:
                get_logger(component="cluster.trust").info("policy.reloaded",
                                                           allowed=len(allow))
