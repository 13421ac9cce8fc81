"""The runtime writes audit records positionally (`audit_row` + INSERT_AUDIT_ROW): a record
so written is stored, read back and verified exactly as one inserted by column name."""

from __future__ import annotations

import sqlite3

from hypothesis import given, settings
from hypothesis import strategies as st
from task_ingress.actors.rules.chain import ChainKey, genesis_hash
from task_ingress.actors.storage.auditlog import (
    AUDIT_COLUMNS,
    INSERT_AUDIT,
    INSERT_AUDIT_ROW,
    audit_row,
    read_records,
)
from task_ingress.actors.storage.schema import migrate
from task_ingress.messages import Action, Reason

KEY = ChainKey(b"r" * 32)
_TEXT = st.text(max_size=30)
_OPT = st.none() | _TEXT
_FIELDS = st.fixed_dictionaries({
    "workspace": _TEXT, "channel": _TEXT, "peer_id": _TEXT, "actor": _TEXT,
    "request_id": _TEXT, "action": st.sampled_from([a.value for a in Action]),
    "outcome": st.sampled_from(["accepted", "rejected"]),
    "reason": st.none() | st.sampled_from([r.value for r in Reason]),
    "task_id": _OPT, "run_id": _OPT, "payload_size": st.integers(0, 2**31),
    "replay": st.booleans(), "trust": _OPT,
})


def _store() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    migrate(conn)
    return conn


@settings(max_examples=60, deadline=None)
@given(st.lists(_FIELDS, min_size=1, max_size=5),
       st.floats(min_value=0, max_value=4e9, allow_nan=False))
def test_a_record_inserted_by_position_reads_back_as_one_inserted_by_name(
        batch: list[dict[str, object]], at: float) -> None:
    genesis = genesis_hash("store-rows")
    records, head = [], genesis
    for seq, fields in enumerate(batch, start=1):
        record = KEY.link(fields, seq, head, at)
        head = str(record["hash"])
        records.append(record)
    by_name, by_position = _store(), _store()
    by_name.executemany(INSERT_AUDIT, records)
    by_position.executemany(INSERT_AUDIT_ROW, [audit_row(r) for r in records])
    select = f"SELECT {AUDIT_COLUMNS} FROM audit ORDER BY seq"
    assert by_position.execute(select).fetchall() == by_name.execute(select).fetchall()
    read = read_records(by_position)
    assert [r.model_dump(mode="json") for r in read] == records
    for stored in read:
        assert KEY.seal(stored.model_dump(mode="json")) == stored.hash
