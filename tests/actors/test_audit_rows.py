"""The runtime writes audit records positionally (`audit_row` + INSERT_AUDIT_ROW): a record
so written is stored, read back and verified exactly as one inserted by column name; and the
store's one-go builder (`chained_row`) gives exactly the record `link` makes of
`audit_fields`."""

from __future__ import annotations

import sqlite3

from hypothesis import given, settings
from hypothesis import strategies as st
from task_ingress.actors.rules.chain import ChainKey, genesis_hash
from task_ingress.actors.storage.auditlog import (
    AUDIT_COLUMNS,
    INSERT_AUDIT,
    INSERT_AUDIT_ROW,
    audit_fields,
    audit_row,
    chained_row,
    read_records,
)
from task_ingress.actors.storage.schema import migrate
from task_ingress.messages import Action, CreateTask, Outcome, Reason
from task_ingress.messages.protocol import InFlight, Submission
from task_ingress.messages.requests import IngressContext

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


_ID = st.text(max_size=20) | st.sampled_from(["ws", "ops", "peer-a", "r-1", " padded "])


@settings(max_examples=150, deadline=None)
@given(workspace=_ID, channel=_ID, peer=_ID, request_id=_ID, checked=st.booleans(),
       trust=st.sampled_from(["embedded", "verified", "unverified", "rejected"]),
       action=st.sampled_from(list(Action)), reason=st.none() | st.sampled_from(list(Reason)),
       task_id=_OPT, run_id=_OPT, replay=st.booleans(), size=st.integers(0, 2**20),
       seq=st.integers(1, 2**40), prev=_TEXT,
       at=st.floats(min_value=0, max_value=4e9, allow_nan=False))
def test_the_stores_record_built_in_one_go_is_the_linked_audit_fields(
        workspace: str, channel: str, peer: str, request_id: str, checked: bool, trust: str,
        action: Action, reason: Reason | None, task_id: str | None, run_id: str | None,
        replay: bool, size: int, seq: int, prev: str, at: float) -> None:
    ctx = IngressContext(workspace=workspace, peer_id=peer, channel=channel,
                         request_id=request_id, trust=trust)
    sub = Submission(ticket=1, context=ctx, request=CreateTask(title="t"), action=action,
                     payload_size=size, now=0.0)
    flight = InFlight(submission=sub, context=ctx, reply_to=None, checked=checked)
    outcome = Outcome(request_id=request_id, action=action, accepted=reason is None,
                      reason=reason, task_id=task_id, run_id=run_id, replay=replay)
    record = KEY.link(audit_fields(flight, outcome), seq, prev, at)
    assert chained_row(KEY, flight, outcome, seq, prev, at) == (audit_row(record),
                                                                record["hash"])
