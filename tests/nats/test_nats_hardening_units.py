"""Issue 13, the pure parts: the strict JSON reading of envelopes, the daemon's key."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from task_ingress.runtime.nats import envelope as wire
from task_ingress.runtime.nats.identity import load_private_key, raw_public_key

NOW = 1_775_606_400


# ---- strict JSON ----------------------------------------------------------------------
def test_nesting_is_counted_without_recursion_and_bounded_at_decoding() -> None:
    assert wire.nesting_depth({"a": [1, {"b": []}]}, 32) == 4
    assert wire.nesting_depth(json.loads("[" * 500 + "]" * 500), 32) == 33  # stops early
    ok = b'{"a":' + b"[" * 31 + b"]" * 31 + b"}"
    assert wire.decode_json_object(ok)["a"] == json.loads(b"[" * 31 + b"]" * 31)
    with pytest.raises(wire.EnvelopeError, match="deeper than 32"):
        wire.decode_json_object(b'{"a":' + b"[" * 32 + b"]" * 32 + b"}")
    with pytest.raises(wire.EnvelopeError, match="not JSON"):
        wire.decode_json_object(b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                                max_bytes=1 << 20)


def test_a_repeated_key_anywhere_is_refused() -> None:
    for data in (b'{"from": "a", "from": "b"}', b'{"body": {"x": 1, "x": 1}}'):
        with pytest.raises(wire.EnvelopeError, match="repeats a key"):
            wire.decode_json_object(data)


def test_identifiers_lose_only_ascii_whitespace() -> None:
    assert wire.ascii_strip(" \tpeer-b\r\n") == "peer-b"
    assert wire.ascii_strip("peer-b\u00a0") == "peer-b\u00a0"
    assert wire.ascii_strip("\u2003peer-b") == "\u2003peer-b"


@pytest.mark.parametrize(("ts", "expires_at", "fresh"), [
    (NOW - 30 * 86400, NOW + 86400, False),  # expires_at used to lift the window
    (NOW - 299, NOW + 10, True),
    (NOW - 10, NOW - 1, False),  # expires_at shortens it
    (NOW - 10, None, True),
    (NOW + 301, None, False),
])
def test_expires_at_may_only_shorten_the_ts_window(ts: int, expires_at: int | None,
                                                   fresh: bool) -> None:
    fields = {"protocol": "agh-network/v0", "id": "g", "workspace_id": "ws", "kind": "greet",
              "channel": "ops", "from": "peer-a", "ts": ts, "body": {"peer_card": {
                  "peer_id": "peer-a", "profiles_supported": [], "capabilities": [],
                  "artifacts_supported": [], "trust_modes_supported": []}}}
    if expires_at is not None:
        fields["expires_at"] = expires_at
    if fresh:
        assert wire.validate_object(fields, now=NOW).ts == ts
    else:
        with pytest.raises(wire.EnvelopeError) as err:
            wire.validate_object(fields, now=NOW)
        assert err.value.code == "expired"


# ---- the daemon's key ----------------------------------------------------------------
def test_the_daemon_key_must_not_be_readable_by_others(tmp_path: Path) -> None:
    from task_ingress.runtime.nats.identity import load_or_create_key

    path = str(tmp_path / "daemon.key")
    first = load_or_create_key(path)
    assert raw_public_key(load_or_create_key(path)) == raw_public_key(first)
    os.chmod(path, 0o640)
    with pytest.raises(ValueError, match="chmod 600"):
        load_private_key(path)
