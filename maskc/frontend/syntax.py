"""Surface syntax: what the parser builds, before names and types are resolved.

Masks and integers share one expression tree (the grammar cannot tell them apart); the
checker (:mod:`maskc.frontend.check`) decides types and lowers to the typed IR in :mod:`maskc.ir`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from maskc.errors import Span

__all__ = [
    "Syn", "Int", "Bool", "Name", "Call", "Arg", "BinOp", "Unary", "TupleLit", "ListLit",
    "RangeLit", "Arm", "HeadsLit", "WhereLit", "Axis", "Compare", "Param", "LetItem", "Float",
    "Index",
    "MaskItem", "Module", "MAX_INT", "MAX_NESTING", "MAX_TOKENS", "too_deep",
]

MAX_INT = 2**31 - 1
# NOTE: every stage after the parser (checker, passes, printer, reference, code generators)
# recurses over expressions, and generated Triton source nests a parenthesis per level
# (Python allows 200). 100 levels is far beyond any real mask and keeps each stage well
# inside Python's default recursion limit of 1000. Parentheses alone add no level.
MAX_NESTING = 100
# NOTE: Lark's LALR parser costs about 20 us a token, so the parser refuses sources of more
# tokens than this before parsing (a count that stops at the limit): a spec it accepts
# parses, or is refused for its nesting, in well under a second, and a huge one (a
# 2000 x 2000 layout literal, 100,000 chained terms, 300,000 parentheses) is refused at
# once, at the first token past the limit.
MAX_TOKENS = 1 << 15


@dataclass(frozen=True, slots=True)
class Syn:
    span: Span | None = field(default=None, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class Int(Syn):
    value: int


@dataclass(frozen=True, slots=True)
class Float(Syn):
    value: float


@dataclass(frozen=True, slots=True)
class Index(Syn):
    """``x[i, j]``: a runtime float input read at integer indices (inside a score)."""

    base: str
    items: tuple[Syn, ...]


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
    """``| & + - * // % /`` between expressions, and ``and or`` in predicates."""

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
    """``q.y`` (``axis`` a name) or ``q[0]`` (``axis`` an index) inside a predicate or score."""

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
    score: Syn | None = None   # the expression after `with`


@dataclass(frozen=True, slots=True)
class Module(Syn):
    items: tuple[LetItem | MaskItem, ...]


# Nodes that only wrap or hold expressions: they add no level of nesting.
_WRAPPERS = (Arg, Arm, Param, LetItem, MaskItem, Module)


def too_deep(root: Syn, limit: int = MAX_NESTING) -> Syn | None:
    """The first node (pre-order) nested more than ``limit`` levels deep, or ``None``.

    Each operator, call, literal and ``where`` is one level (arguments, arms and items add
    none); the operands of a comparison chain of ``n`` operators count ``n`` levels, as the
    checker lowers it to ``n - 1`` nested ``and``s. Iterative, so any depth is safe.
    """
    stack: list[tuple[Syn, int]] = [(root, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return node
        step = len(node.ops) if isinstance(node, Compare) else 1
        kids = []
        for name in node.__dataclass_fields__:
            if name == "span":
                continue
            value = getattr(node, name)
            for x in (value if isinstance(value, tuple) else (value,)):
                if isinstance(x, Syn):
                    kids.append((x, depth + (0 if isinstance(x, _WRAPPERS) else step)))
        stack.extend(reversed(kids))
    return None
