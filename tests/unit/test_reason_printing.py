"""Reason codes and action names print as their codes, wherever they are printed."""

from __future__ import annotations

import json

from task_ingress.messages import Action, Outcome, Reason


def test_a_reason_prints_as_its_code_inside_a_tuple_or_list() -> None:
    row = (3, "rejected", Reason.PEER_NOT_FOUND)
    assert repr(row) == "(3, 'rejected', 'peer_not_found')"
    assert str([Action.CREATE, Reason.OVERLOADED]) == "['task.create', 'overloaded']"


def test_a_reason_still_is_its_enum_member_and_equals_its_code() -> None:
    assert Reason("overloaded") is Reason.OVERLOADED
    assert Reason.OVERLOADED == "overloaded"
    assert f"{Reason.STALE_CHANNEL}" == str(Reason.STALE_CHANNEL) == "stale_channel"


def test_an_outcome_serialises_reasons_as_codes() -> None:
    out = Outcome(request_id="r", action=Action.CREATE, accepted=False,
                  reason=Reason.CAPABILITY_DENIED)
    assert json.loads(out.model_dump_json())["reason"] == "capability_denied"


def test_str_of_every_code_is_its_value_as_a_plain_str() -> None:
    # The store writes str(member) into audit records and accepted-request rows (cheaper
    # than `.value`): it must be the very code, and an exact str, which sqlite3 and
    # psycopg bind as text without adapting a subclass.
    for member in [*Action, *Reason]:
        text = str(member)
        assert text == member.value and type(text) is str
