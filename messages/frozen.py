"""Frozen, slotted plain classes for the internal messages built once per request or batch.

Why not pydantic here: every admitted request builds a `Submission` (and a stamped copy
of it), an `InFlight`, a `Verdict` and a `Replied`, and every hop a batch container; with
strict pydantic those took ~7 % of the pipeline's GIL time (docs/benchmarks.md). Measured
with `timeit` (us per call, pydantic -> this): Submission 1.4 -> 0.75, the driver's stamped
copy (`model_copy` -> `replace`) 1.8 -> 0.5, InFlight 1.0 -> 0.55, Verdict 0.77 -> 0.38,
Replied 0.69 -> 0.31, a container of 32 items ~1.0 -> 0.25. A frozen
`dataclass(slots=True)` builds a Submission in ~0.95: its `__init__` calls
`object.__setattr__` once per field, where this one calls the slot's own setter.

What is dropped is pydantic's type check of each field: these messages are built only by
our own code (the facade, the driver, the actors, the pipe decoder) from values validated
at the edge — `IngressContext`, the request models and `Outcome` stay pydantic, so a wrong
type here is a bug in our code, which `mypy --strict` catches, not input from a peer.
What stays: keyword-only constructors generated from the annotations (an unknown or a
missing field is a `TypeError`, as `extra="forbid"` made it an error before), defaults,
assignment refused (`FrozenInstanceError`), equality and hash by type and field values,
a `repr`, pickling (multiprocess bases pickle every message between processes) and
`replace(**changes)`, the cheap copy with changes.

A class declares its fields as annotations, with defaults as plain class values; the
metaclass turns them into `__slots__` and the constructor, as `dataclasses` does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import FrozenInstanceError
from typing import Any, ClassVar, Self, dataclass_transform

__all__ = ["FrozenInstanceError", "FrozenMessage"]

_Setter = Callable[[Any, Any], None]


def _generated(fields: tuple[str, ...], defaults: dict[str, Any],
               setters: tuple[_Setter, ...]) -> dict[str, Callable[..., Any]]:
    """`__init__`, `replace` and `_values` of a class with these fields.

    Generated as `dataclasses` does: fixed keyword-only signatures reject an unknown or a
    missing field by themselves, and the slot descriptors' setters (closure cells, no
    global look-ups) bypass the refusing `__setattr__` — the cheapest frozen construction
    measured (a loop over the fields costs twice as much)."""
    init_params = ", ".join(f"{f}=_d_{f}" if f in defaults else f for f in fields)
    replace_params = ", ".join(f"{f}=_keep" for f in fields)
    names = ["_keep", "_new", *(f"_s_{f}" for f in fields), *(f"_d_{f}" for f in defaults)]
    source = "\n".join([
        f"def _factory({', '.join(names)}):",
        f"    def __init__(self, *, {init_params}):",
        *(f"        _s_{f}(self, {f})" for f in fields),
        f"    def replace(self, *, {replace_params}):",
        "        _copy = _new(self.__class__)",
        *(f"        _s_{f}(_copy, self.{f} if {f} is _keep else {f})" for f in fields),
        "        return _copy",
        "    def _values(self):",
        f"        return ({''.join(f'self.{f}, ' for f in fields)})",
        "    return __init__, replace, _values",
    ])
    namespace: dict[str, Any] = {}
    exec(source, {}, namespace)  # names from our own class bodies: identifiers by syntax
    functions = namespace["_factory"](object(), object.__new__, *setters, *defaults.values())
    return dict(zip(("__init__", "replace", "_values"), functions, strict=True))


@dataclass_transform(kw_only_default=True, frozen_default=True)
class _FrozenMeta(type):
    """Makes a class body's annotations the slots, constructor and field list of the class."""

    def __new__(mcs, name: str, bases: tuple[type, ...], namespace: dict[str, Any]
                ) -> _FrozenMeta:
        fields = tuple(f for f, kind in namespace.get("__annotations__", {}).items()
                       if not str(kind).startswith(("ClassVar", "typing.ClassVar")))
        if any(f.startswith("_") or f == "self" for f in fields):
            raise TypeError(f"{name}: field names are public (the generated code's are not)")
        # A slot and a class value of one name cannot coexist: defaults move to __init__.
        defaults = {f: namespace.pop(f) for f in fields if f in namespace}
        namespace["__slots__"] = fields
        cls = super().__new__(mcs, name, bases, namespace)
        if fields and getattr(cls, "_fields", ()):
            raise TypeError(f"{name}: a message with fields cannot extend one with fields")
        if fields:
            setters = tuple(getattr(cls, f).__set__ for f in fields)
            cls._fields = fields  # type: ignore[attr-defined]
            cls._setters = setters  # type: ignore[attr-defined]
            for attr, function in _generated(fields, defaults, setters).items():
                function.__qualname__ = f"{cls.__qualname__}.{attr}"
                setattr(cls, attr, function)
        return cls


def _rebuild(cls: type[FrozenMessage], values: tuple[Any, ...]) -> FrozenMessage:
    """Unpickle: the instance from its field values, in field order (no `__init__`)."""
    obj = object.__new__(cls)
    for setter, value in zip(cls._setters, values, strict=True):
        setter(obj, value)
    return obj


class FrozenMessage(metaclass=_FrozenMeta):
    """Base of the plain hot-path messages: immutable, slotted, compared by value."""

    __slots__ = ()
    _fields: ClassVar[tuple[str, ...]] = ()
    _setters: ClassVar[tuple[_Setter, ...]] = ()

    def __setattr__(self, name: str, value: Any) -> None:
        raise FrozenInstanceError(f"{type(self).__name__} is frozen: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"{type(self).__name__} is frozen: cannot delete {name!r}")

    def _values(self) -> tuple[Any, ...]:
        return ()  # generated per class with fields

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, FrozenMessage)
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash((type(self), self._values()))

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._fields)
        return f"{type(self).__name__}({fields})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self._values()))

    def replace(self, **changes: Any) -> Self:
        """A copy with `changes` applied (keywords: field names); the original is left as
        it was. An unknown field is a `TypeError`."""
        if changes:  # generated per class with fields; this one has none
            raise TypeError(f"{type(self).__name__} has no fields")
        return self
