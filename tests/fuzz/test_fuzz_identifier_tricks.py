"""Identifier tricks through both `deliver` and `submit`: Unicode look-alikes, a trailing
newline (Python's `$` accepts "x\\n"), NUL, very long IDs, RTL and zero-width marks,
full-width digits. Never an exception; the SPEC §2 grammar (checked after trimming ASCII
whitespace: never NBSP or other Unicode spaces, issue 13) decides; exactly one audit record
each, stored in safe, printable, bounded form."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
from task_ingress.messages import CreateTask, IngressContext
from task_ingress.messages.codec import encode_envelope

from tests.fuzz.fuzz_support import (
    FuzzTarget,
    check_one_record,
    check_outcome,
    check_wire_reply,
    fuzz_target,
)

ACCEPTED = None
INVALID = "invalid_request"

# (label, value, expected reason when used as a peer ID / channel / workspace).
IDENTITY_TRICKS = [
    ("cyrillic-e look-alike", "p\u0435er-a", INVALID),
    ("full-width letter", "peer-\uff41", INVALID),
    ("full-width digit", "peer-\uff11", INVALID),
    ("dotless i", "p\u0131er", INVALID),
    ("upper case", "PEER-A", INVALID),
    ("trailing newline (the `$` trap)", "{id}\n", ACCEPTED),
    ("newline then more", "{id}\nx", INVALID),
    ("surrounding spaces", "  {id}  ", ACCEPTED),
    ("no-break space (not trimmed)", "{id}\u00a0", INVALID),
    ("NUL", "{id}\x00", INVALID),
    ("NUL inside", "pe\x00er", INVALID),
    ("RTL override", "\u202e{id}", INVALID),
    ("RTL mark", "{id}\u200f", INVALID),
    ("zero-width space", "{id}\u200b", INVALID),
    ("BOM", "\ufeff{id}", INVALID),
    ("line separator (not trimmed)", "{id}\u2028", INVALID),
    ("slash", "{id}/x", INVALID),
    ("empty", "", INVALID),
    ("129 characters", "a" * 129, INVALID),
    ("10,000 characters", "a" * 10_000, INVALID),
    ("combining accent", "e\u0301", INVALID),
]

# SPEC 2's workspace rule is AGH's (no '.', space, '*', '>', slashes, control characters;
# any case, any other Unicode): these are grammatical workspaces, where peer-a is not visible.
VISIBLE_NOWHERE = "peer_not_found"
WORKSPACE_EXPECTED = {label: VISIBLE_NOWHERE for label in (
    "cyrillic-e look-alike", "full-width letter", "full-width digit", "dotless i",
    "upper case", "RTL override", "RTL mark", "zero-width space", "BOM", "combining accent",
    "no-break space (not trimmed)")}

# (label, request ID, expected reason): the request-ID rule is length, no slashes, no
# control characters; other Unicode is allowed and stored escaped.
REQUEST_ID_TRICKS = [
    ("trailing newline", "rid-{n}\n", ACCEPTED),
    ("newline inside", "rid-{n}\nx", INVALID),
    ("NUL", "rid-{n}\x00", INVALID),
    ("DEL", "rid-{n}\x7f", INVALID),
    ("C1 control inside", "rid\x85-{n}", INVALID),
    ("C1 NEL at the end (not trimmed: a C1 control)", "rid-{n}\x85", INVALID),
    ("line separator inside", "rid\u2028{n}", INVALID),
    ("slash", "rid/{n}", INVALID),
    ("backslash", "rid\\{n}", INVALID),
    ("empty", "", INVALID),
    ("only spaces", "   ", INVALID),
    ("128 characters", "{n}-" + "r" * 120, ACCEPTED),
    ("129 characters", "r" * 129, INVALID),
    ("10,000 characters", "r" * 10_000, INVALID),
    ("RTL mark", "rid-{n}\u200f", ACCEPTED),
    ("RTL override", "\u202erid-{n}", ACCEPTED),
    ("full-width digits", "rid-\uff11\uff12-{n}", ACCEPTED),
    ("cyrillic look-alike", "r\u0456d-{n}", ACCEPTED),
    ("zero-width joiner", "rid\u200d-{n}", ACCEPTED),
]

PATHS = ("deliver", "submit")
counter = itertools.count(1)


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzTarget]:
    with fuzz_target(tmp_path_factory.mktemp("tricks")) as t:
        yield t


def send(target: FuzzTarget, path: str, ws: str, ch: str, peer: str, rid: str
         ) -> tuple[bool, str | None, str]:
    """One create through `path`; returns (accepted, reason, request ID as replied)."""
    target.tap.new_records()  # a failed earlier test must not leave its record to us
    request = CreateTask(title="tricky")
    if path == "deliver":
        raw = target.rt.deliver(encode_envelope(request, rid), workspace=ws, channel=ch,
                                peer_id=peer)
        reply = check_wire_reply(raw)
        return reply["accepted"], reply["reason"], reply["request_id"]
    out = target.rt.submit(IngressContext(workspace=ws, peer_id=peer, channel=ch,
                                          request_id=rid), request)
    check_outcome(out)
    return out.accepted, out.reason.value if out.reason else None, out.request_id


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("field", ["peer_id", "channel", "workspace"])
@pytest.mark.parametrize(("label", "template", "expected"), IDENTITY_TRICKS,
                         ids=[t[0] for t in IDENTITY_TRICKS])
def test_identity_tricks_are_judged_by_the_trimmed_ascii_grammar(
        target: FuzzTarget, path: str, field: str, label: str, template: str,
        expected: str | None) -> None:
    ident = {"workspace": "ws", "channel": "ops", "peer_id": "peer-a"}
    ident[field] = template.format(id=ident[field])
    if field == "workspace":
        expected = WORKSPACE_EXPECTED.get(label, expected)
    rid = f"trick-{next(counter)}"
    accepted, reason, replied = send(target, path, ident["workspace"], ident["channel"],
                                     ident["peer_id"], rid)
    assert reason == expected, (label, field, ident[field])
    assert accepted is (expected is None)
    rec = check_one_record(target.tap, accepted, reason, replied)
    if accepted:  # judged as the trimmed, genuine identity
        assert (rec.workspace, rec.channel, rec.peer_id) == ("ws", "ops", "peer-a")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("label", "template", "expected"), REQUEST_ID_TRICKS,
                         ids=[t[0] for t in REQUEST_ID_TRICKS])
def test_request_id_tricks_follow_the_request_id_rule(
        target: FuzzTarget, path: str, label: str, template: str, expected: str | None
        ) -> None:
    rid = template.format(n=next(counter))
    accepted, reason, replied = send(target, path, "ws", "ops", "peer-a", rid)
    assert reason == expected, (label, rid)
    rec = check_one_record(target.tap, accepted, reason, replied)
    if accepted:
        assert not rec.replay  # a fresh ID, never mistaken for an earlier one
        assert rec.request_id.isprintable()


def test_a_trimmed_request_id_is_the_same_request(target: FuzzTarget) -> None:
    n = next(counter)
    first = send(target, "submit", "ws", "ops", "peer-a", f"same-{n}")
    original = check_one_record(target.tap, True, None, first[2])
    again = send(target, "deliver", "ws", "ops", "peer-a", f" same-{n}\n")
    replay = check_one_record(target.tap, True, None, again[2])
    assert not original.replay and replay.replay
    assert replay.task_id == original.task_id and replay.request_id == f"same-{n}"


def test_tricks_never_create_a_task_for_a_lookalike_identity(target: FuzzTarget) -> None:
    """Every accepted trick record is peer-a's in ws/ops: no look-alike ever wrote."""
    for rec in target.rt.audit():
        if rec.outcome == "accepted":
            assert (rec.workspace, rec.channel, rec.peer_id) in {("ws", "ops", "peer-a"),
                                                                 ("ws", "dev", "peer-a")}
