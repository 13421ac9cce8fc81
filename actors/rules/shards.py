"""Shards (cluster mode): which shard a workspace belongs to, and the fence a write carries."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


def shard_of(workspace: str, shards: int) -> int:
    """The shard of `workspace` among `shards`: sha256 of its UTF-8 bytes, mod `shards`.

    Not Python's hash(): that is salted per process, and every daemon must agree."""
    if shards < 1:
        raise ValueError(f"shards must be at least 1, not {shards}")
    digest = hashlib.sha256(workspace.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % shards


@dataclass(frozen=True)
class Fence:
    """The lease holding a write starts under: its shard, owner and epoch (fencing token).

    The store commits the write only if the shard's lease row still names this owner and
    epoch, in the same transaction (actors/storage/pg_store.py)."""

    shard: int
    owner: str
    epoch: int
