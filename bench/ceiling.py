"""This machine's durable SQLite commit rate: the ceiling for any design on this disk.

Same settings as the store (WAL, synchronous=FULL): one transaction per row, and rows
batched into transactions (what group commit can reach at best).
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Ceiling:
    """Rows per second durably committed."""

    single_commits_per_s: float
    batched_rows_per_s: float
    batch_size: int


def _rate(path: str, seconds: float, batch: int) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
        row = "x" * 200  # about an audit record's size
        rows = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT INTO t (v) VALUES (?)", [(row,)] * batch)
            conn.execute("COMMIT")
            rows += batch
        return rows / (time.perf_counter() - start)
    finally:
        conn.close()


def measure_ceiling(directory: str, seconds: float = 1.5, batch: int = 100) -> Ceiling:
    """Measure both rates on fresh files in `directory` (a temp dir on the store's disk)."""
    single = _rate(os.path.join(directory, "ceiling-single.db"), seconds, 1)
    batched = _rate(os.path.join(directory, "ceiling-batched.db"), seconds, batch)
    return Ceiling(single, batched, batch)
