"""Anchors outside the store: what an operator knew about the log at some earlier time.

Whoever can write every file beside the store can roll it back to an older state
(an older checkpoint file, the records up to it) or swap in another store, and nothing
inside those files can tell. An anchor kept elsewhere can: `audit head` prints the
verified head as one signed line, and `audit verify --expect-seq N`, `--expect-head HASH`
or `--expect-head LINE` fail when the log no longer reaches it.

The head line carries the same fields and MAC as a checkpoint (store id, seq, hash, time):

    task-ingress-audit-head store=<id> seq=<n> hash=<hex> at=<unix seconds> mac=<hex>
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from task_ingress.actors.rules.chain import ChainKey

HEAD_PREFIX = "task-ingress-audit-head"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_LINE = re.compile(
    rf"{HEAD_PREFIX} store=(?P<store>[0-9a-f]{{1,64}}) seq=(?P<seq>\d{{1,19}}) "
    r"hash=(?P<hash>[0-9a-f]{64}) at=(?P<at>\d{1,12}(?:\.\d{1,6})?) mac=(?P<mac>[0-9a-f]{64})")


class BadAnchor(ValueError):
    """An --expect-* value that is neither a seq, a hash nor a head line (a usage error)."""


@dataclass(frozen=True)
class Anchor:
    """What the log must still contain: the record at `seq` (or any record, without `seq`)
    has hash `head`; the chain reaches `seq`; it is store `store_id`. None: not known."""

    seq: int | None = None
    head: str | None = None
    store_id: str | None = None
    at: float | None = None
    mac: str | None = None
    """Set for an anchor read from a head line: its MAC under the audit key."""

    def describe(self) -> str:
        """The anchor in a few words, for a problem's text."""
        parts = [f"store {self.store_id}" if self.store_id else "",
                 f"seq {self.seq}" if self.seq is not None else "",
                 f"hash {self.head[:16]}…" if self.head else ""]
        return "anchor (" + ", ".join(p for p in parts if p) + ")"

    def mac_ok(self, key: ChainKey) -> bool:
        """True when this is a head line whose MAC verifies under `key`."""
        if None in (self.store_id, self.seq, self.head, self.at, self.mac):
            return False
        assert self.store_id and self.seq is not None and self.head and self.at is not None
        return key.checkpoint_ok(self.store_id, self.seq, self.head, self.at, str(self.mac))


def make_anchor(expect_seq: int | None, expect_head: str | None) -> Anchor | None:
    """The anchor of `--expect-seq` and `--expect-head` (a hash or a head line); None when
    neither is given. Raises BadAnchor for a value that cannot be one."""
    if expect_seq is not None and expect_seq < 0:
        raise BadAnchor(f"--expect-seq must be 0 or more, got {expect_seq}")
    if expect_head is None:
        return None if expect_seq is None else Anchor(seq=expect_seq)
    text = expect_head.strip()
    if text.startswith(HEAD_PREFIX):
        line = parse_head_line(text)
        if expect_seq is not None and expect_seq != line.seq:
            raise BadAnchor(f"--expect-seq {expect_seq} contradicts the head line's seq "
                            f"{line.seq}; give one of them")
        return line
    if not _HEX64.fullmatch(text.lower()):
        raise BadAnchor("--expect-head must be a record hash (64 hex digits) or a line "
                        f"printed by `task-ingress audit head`, got {text[:80]!r}")
    return Anchor(seq=expect_seq, head=text.lower())


def parse_head_line(text: str) -> Anchor:
    """An anchor from a line `audit head` printed; BadAnchor when it is not one."""
    match = _LINE.fullmatch(text.strip())
    if match is None:
        raise BadAnchor("not a head line (expected the line `task-ingress audit head` "
                        f"prints: {HEAD_PREFIX} store=… seq=… hash=… at=… mac=…)")
    return Anchor(seq=int(match["seq"]), head=match["hash"], store_id=match["store"],
                  at=float(match["at"]), mac=match["mac"])


def head_line(key: ChainKey, store_id: str, seq: int, head: str, at: float | None = None
              ) -> str:
    """The signed one-line head of a verified log (see the module doc)."""
    when = float(f"{time.time() if at is None else at:.3f}")  # exactly what the line shows
    mac = key.checkpoint_mac(store_id, seq, head, when)
    return f"{HEAD_PREFIX} store={store_id} seq={seq} hash={head} at={when:.3f} mac={mac}"
