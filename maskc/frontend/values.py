"""Compile-time values of the checker: integers, booleans, lists, ranges, tuples, inputs.

Masks are IR nodes; everything else a `.mask` expression can evaluate to lives here, with
conversions from Python values (compile-time parameter overrides) and kind names used in
error messages.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

from maskc import ir

__all__ = ["ListV", "RangeV", "TupleV", "InputV", "Value", "from_python", "kind", "describe",
           "compatible", "to_python", "what", "a_kind"]


@dataclass(frozen=True, slots=True)
class ListV:
    items: tuple


@dataclass(frozen=True, slots=True)
class RangeV:
    start: int
    stop: int


@dataclass(frozen=True, slots=True)
class TupleV:
    items: tuple


@dataclass(frozen=True, slots=True)
class InputV:
    """A runtime input declared with ``input name``."""

    name: str


Value = int | float | bool | ListV | RangeV | TupleV | InputV | ir.Node


def from_python(value) -> Value:
    """Convert a Python parameter value (``maskc.compile(..., w=128)``); ``TypeError`` if unsupported."""
    if isinstance(value, (bool,)) or type(value).__name__ == "bool_":
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        if value != value or abs(value) == float("inf"):
            raise TypeError(f"a float parameter must be finite, got {value}")
        return value
    if isinstance(value, range):
        if value.step != 1:
            raise TypeError("ranges must have step 1")
        return RangeV(value.start, value.stop)
    if isinstance(value, tuple):
        return TupleV(tuple(from_python(v) for v in value))
    if isinstance(value, list) or type(value).__name__ == "ndarray":
        return ListV(tuple(from_python(v) for v in list(value)))
    raise TypeError(f"unsupported value of type {type(value).__name__}")


def kind(v: Value) -> str:
    """A short name of the value's kind, for type checks and messages."""
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "float"
    if isinstance(v, RangeV):
        return "list"
    if isinstance(v, ListV):
        return "layout" if v.items and all(isinstance(x, ListV) for x in v.items) else "list"
    if isinstance(v, TupleV):
        return "tuple"
    if isinstance(v, InputV):
        return "input"
    return "mask"


def compatible(default: Value, given: Value) -> bool:
    """Whether an override ``given`` may replace a parameter whose default is ``default``."""
    a, b = kind(default), kind(given)
    if a == b:
        return True
    if (a, b) == ("float", "integer"):  # a float parameter takes an integer
        return True
    per_axis = {"tuple", "integer", "boolean"}
    return (a == "tuple" and b in per_axis) or (b == "tuple" and a in per_axis) or \
        ({a, b} == {"list", "layout"} and not (given.items if isinstance(given, ListV) else 1))


def what(v: Value) -> str:
    """The value for an error message: ``the integer 3``, ``the list [0, 1]``, ``a mask``."""
    k = kind(v)
    return "a mask" if k == "mask" else f"the {k} {describe(v)}"


def a_kind(v: Value) -> str:
    """``an integer``, ``a list``, ``an input``: the kind with its article."""
    k = kind(v)
    return ("an " if k[0] in "aeiou" else "a ") + k


def describe(v: Value) -> str:
    """The value as it would be written in a `.mask` file."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, RangeV):
        return f"{v.start}..{v.stop}"
    if isinstance(v, ListV):
        return "[" + ", ".join(describe(x) for x in v.items) + "]"
    if isinstance(v, TupleV):
        return "(" + ", ".join(describe(x) for x in v.items) + ")"
    if isinstance(v, InputV):
        return f"input {v.name}"
    return "a mask"


def to_python(v: Value):
    """The inverse of :func:`from_python` (for values parsed from the command line)."""
    if isinstance(v, RangeV):
        return range(v.start, v.stop)
    if isinstance(v, ListV):
        return [to_python(x) for x in v.items]
    if isinstance(v, TupleV):
        return tuple(to_python(x) for x in v.items)
    return v
