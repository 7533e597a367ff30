"""Surface syntax: what the parser builds, before names and types are resolved.

Masks and integers share one expression tree (the grammar cannot tell them apart); the
checker (:mod:`maskc.check`) decides types and lowers to the typed IR in :mod:`maskc.ir`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import Span

__all__ = [
    "Syn", "Int", "Bool", "Name", "Call", "Arg", "BinOp", "Unary", "TupleLit", "ListLit",
    "RangeLit", "Arm", "HeadsLit", "WhereLit", "Axis", "Compare", "Param", "LetItem",
    "MaskItem", "Module",
]


@dataclass(frozen=True, slots=True)
class Syn:
    span: Span | None = field(default=None, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class Int(Syn):
    value: int


@dataclass(frozen=True, slots=True)
class Bool(Syn):
    value: bool


@dataclass(frozen=True, slots=True)
class Name(Syn):
    id: str


@dataclass(frozen=True, slots=True)
class Arg(Syn):
    """One call argument; ``name`` is ``None`` for a positional one."""

    name: str | None
    value: Syn


@dataclass(frozen=True, slots=True)
class Call(Syn):
    func: str
    args: tuple[Arg, ...]


@dataclass(frozen=True, slots=True)
class BinOp(Syn):
    """``| & + - * // %`` between expressions, and ``and or`` in predicates."""

    op: str
    left: Syn
    right: Syn


@dataclass(frozen=True, slots=True)
class Unary(Syn):
    """``~`` (mask not), ``-`` (negation), ``not`` (predicate)."""

    op: str
    operand: Syn


@dataclass(frozen=True, slots=True)
class TupleLit(Syn):
    items: tuple[Syn, ...]


@dataclass(frozen=True, slots=True)
class ListLit(Syn):
    items: tuple[Syn, ...]


@dataclass(frozen=True, slots=True)
class RangeLit(Syn):
    start: Syn
    stop: Syn


@dataclass(frozen=True, slots=True)
class Arm(Syn):
    key: Syn
    body: Syn


@dataclass(frozen=True, slots=True)
class HeadsLit(Syn):
    arms: tuple[Arm, ...]


@dataclass(frozen=True, slots=True)
class WhereLit(Syn):
    pred: Syn


@dataclass(frozen=True, slots=True)
class Axis(Syn):
    """``q.y`` (``axis`` a name) or ``q[0]`` (``axis`` an index) inside a predicate."""

    base: str
    axis: str | int


@dataclass(frozen=True, slots=True)
class Compare(Syn):
    """A comparison chain ``a < b <= c``: ``ops[i]`` sits between ``operands[i]`` and ``[i+1]``."""

    ops: tuple[str, ...]
    operands: tuple[Syn, ...]


@dataclass(frozen=True, slots=True)
class Param(Syn):
    name: str
    default: Syn | None
    is_input: bool = False


@dataclass(frozen=True, slots=True)
class LetItem(Syn):
    name: str
    formals: tuple[str, ...] | None
    body: Syn


@dataclass(frozen=True, slots=True)
class MaskItem(Syn):
    name: str
    params: tuple[Param, ...]
    grid: tuple[Arg, ...] | None
    body: Syn


@dataclass(frozen=True, slots=True)
class Module(Syn):
    items: tuple[LetItem | MaskItem, ...]
