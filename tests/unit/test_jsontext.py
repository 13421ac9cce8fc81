"""An encoder made once (rules/jsontext.py) writes exactly json.dumps's text."""

from __future__ import annotations

import json
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st
from task_ingress.actors.rules.jsontext import encoder

_SCALARS = (st.none() | st.booleans() | st.integers() | st.text()
            | st.floats(allow_nan=True, allow_infinity=True))
_VALUES = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=4)
                       | st.dictionaries(st.text(), inner, max_size=4), max_leaves=12)
_SEPARATORS = [(",", ":"), (", ", ": ")]


@given(_VALUES, st.sampled_from(_SEPARATORS), st.booleans())
def test_an_encoder_made_once_writes_what_json_dumps_writes(
        value: object, separators: tuple[str, str], ascii_only: bool) -> None:
    expected = json.dumps(value, separators=separators, ensure_ascii=ascii_only)
    assert encoder(separators, ensure_ascii=ascii_only)(value) == expected


@pytest.mark.parametrize("broken", ["missing", "other signature"])
def test_without_the_c_encoder_we_know_the_stdlib_path_writes_the_same_text(
        broken: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if broken == "missing":
        monkeypatch.setitem(sys.modules, "_json", None)  # import fails
    else:
        def changed(*args: object) -> object:
            raise TypeError(f"make_encoder() takes 10 arguments ({len(args)} given)")

        monkeypatch.setattr("_json.make_encoder", changed)
    value = {"b": [1, 2.5, "é"], "a": None}
    assert encoder((",", ":"))(value) == json.dumps(value, separators=(",", ":"))
