"""`identity.canonical` writes exactly RFC 8785's bytes (rfc8785's), fast path or not."""

from __future__ import annotations

import enum
from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st
from task_ingress.runtime.nats.identity import JS_SAFE_INT, canonical

SCALARS = (st.none() | st.booleans()
           | st.integers(min_value=-JS_SAFE_INT - 2, max_value=JS_SAFE_INT + 2)
           | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
           | st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=12))
KEYS = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=6)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(KEYS, inner, max_size=4), max_leaves=20)


def _rfc8785(obj: Any) -> bytes | type[Exception]:
    try:
        return bytes(rfc8785.dumps(obj))
    except Exception as exc:
        return type(exc)


def _ours(obj: Any) -> bytes | type[Exception]:
    try:
        return canonical(obj)
    except Exception as exc:
        return type(exc)


@settings(max_examples=600, deadline=None)
@given(VALUES)
def test_canonical_bytes_equal_rfc8785s_for_any_json_value(obj: Any) -> None:
    assert _ours(obj) == _rfc8785(obj)


def _nest(depth: int) -> Any:
    value: Any = {"leaf": 1}
    for n in range(depth):
        value = [value] if n % 2 else {"k": value}
    return value


class Colour(enum.StrEnum):
    RED = "red"


@pytest.mark.parametrize("obj", [
    {"b": 1, "a": [True, False, None], "c": {"z": "\x00\x1f\"\\\b\f\n\r\t\x7f/é€𝄞"}},
    {"é": 1, "e": 2, "\ue000": 3, "\U0001f600": 4},  # non-ASCII keys: UTF-16 order
    {"n": JS_SAFE_INT, "m": -JS_SAFE_INT}, {"n": JS_SAFE_INT + 1}, {"f": 1.0, "g": 1e21},
    {"s": "\ud800"}, {"k": Colour.RED}, {Colour.RED: 1}, [[[[]]]], {}, "", 0,
    _nest(70), _nest(63),
])
def test_canonical_bytes_equal_rfc8785s_at_the_edges(obj: Any) -> None:
    assert _ours(obj) == _rfc8785(obj)
