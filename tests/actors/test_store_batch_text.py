"""The store writes a task's metadata as the text json.dumps gives (bytes on disk do not
change with how fast they are produced)."""

from __future__ import annotations

import json
import sqlite3

from task_ingress.actors.rules import gate
from task_ingress.actors.storage.schema import migrate
from task_ingress.actors.storage.store_batch import judge_and_apply
from task_ingress.messages import CreateTask, UpdateTask
from task_ingress.messages.limits import SPEC_LIMITS

from tests.conftest import ctx

META = {"note": "caf\u00e9 \u2028 \"quoted\" \\ tab\t", "emoji": "\U0001f600"}


def _metadata(conn: sqlite3.Connection) -> str:
    return str(conn.execute("SELECT metadata FROM tasks").fetchone()[0])


def test_created_and_updated_metadata_is_stored_as_json_dumps_text() -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    migrate(conn)
    meta = dict(META)
    create_ctx = ctx("c1")
    conn.execute("BEGIN")
    created = judge_and_apply(conn, create_ctx, CreateTask(title="t", metadata=meta),
                              SPEC_LIMITS, 1.0)
    conn.execute("COMMIT")
    assert created.accepted and created.task_id is not None
    assert _metadata(conn) == json.dumps(gate.trusted_metadata(meta, create_ctx))
    update_ctx = ctx("u1")
    conn.execute("BEGIN")
    updated = judge_and_apply(conn, update_ctx, UpdateTask(task_id=created.task_id,
                                                           title="t2"), SPEC_LIMITS, 2.0)
    conn.execute("COMMIT")
    assert updated.accepted
    # An update without metadata keeps the payload's keys and re-stamps the trusted ones.
    assert _metadata(conn) == json.dumps(gate.trusted_metadata(
        gate.trusted_metadata(meta, create_ctx), update_ctx))
