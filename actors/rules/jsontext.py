"""JSON text exactly as `json.dumps` writes it, without the set-up it redoes per call.

`JSONEncoder.encode` builds a C encoder (and a float-formatting closure) for every object
it encodes: about 0.7-0.9 us, a quarter of encoding a record or a task's metadata. An
encoder made here is that same C encoder, made once, so its text is the same bytes (tests
pin it to json.dumps). Only the circular-reference check is left out: the store encodes
flat dicts of scalars, and a nested container still encodes the same.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any


def encoder(separators: tuple[str, str], ensure_ascii: bool = True
            ) -> Callable[[Any], str]:
    """A function giving `json.dumps(obj, separators=separators, ensure_ascii=...)`'s text
    (keys in the dict's own order, NaN allowed, as json.dumps's defaults are)."""
    item_separator, key_separator = separators
    stdlib = json.JSONEncoder(separators=separators, ensure_ascii=ensure_ascii)
    try:
        from _json import encode_basestring, encode_basestring_ascii, make_encoder
        # CPython's private constructor, called as json.encoder does in 3.11-3.13; were its
        # signature to change, the stdlib's own (slower, same text) path is taken instead.
        encode = make_encoder(None, stdlib.default,
                              encode_basestring_ascii if ensure_ascii else encode_basestring,
                              None, key_separator, item_separator, False, False, True)
    except (ImportError, TypeError):  # no C accelerator, or not the one we know
        return stdlib.encode
    return lambda obj: "".join(encode(obj, 0))
