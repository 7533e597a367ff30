"""The mask IR: typed, resolved, structural.

Every primitive keeps its structure (a window is a :class:`Window`, not a predicate) so
block analysis and code generation can reason about it. Nodes are frozen, slotted
dataclasses with structural equality; spans are carried but never compared. Parameters
are already substituted: the IR holds only constants and runtime-input names.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Iterator

from maskc.errors import Span

__all__ = [
    "Node", "IntSet", "Const", "Causal", "Window", "Global", "Sink", "Prefix", "Chunk",
    "Strided", "Fixed", "Same", "Within", "Where", "Not", "And", "Or", "HeadArm", "Heads",
    "Blocks", "Random", "Layout", "Neighborhood", "Tile", "GridAxis", "Grid", "MaskDef",
    "Pred", "PConst", "PVar", "PAxis", "PBin", "PUn", "PCall", "and_", "or_", "not_",
    "children", "walk", "PRED_VARS",
]


@dataclass(frozen=True, slots=True)
class Node:
    span: Span | None = field(default=None, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class IntSet:
    """A set of integers as sorted, disjoint, non-adjacent half-open intervals."""

    intervals: tuple[tuple[int, int], ...]

    @staticmethod
    def of(values) -> "IntSet":
        out: list[list[int]] = []
        for v in sorted(set(values)):
            if out and out[-1][1] == v:
                out[-1][1] = v + 1
            else:
                out.append([v, v + 1])
        return IntSet(tuple((a, b) for a, b in out))

    @staticmethod
    def range(start: int, stop: int) -> "IntSet":
        return IntSet(((start, stop),) if stop > start else ())

    def __contains__(self, x: int) -> bool:
        return any(a <= x < b for a, b in self.intervals)

    def __len__(self) -> int:
        return sum(b - a for a, b in self.intervals)

    def values(self) -> Iterator[int]:
        for a, b in self.intervals:
            yield from range(a, b)


# ---------------------------------------------------------------- mask nodes

@dataclass(frozen=True, slots=True)
class Const(Node):
    """``all`` (keep=True) or ``none`` (keep=False)."""

    keep: bool


@dataclass(frozen=True, slots=True)
class Causal(Node):
    """``k <= p``."""


@dataclass(frozen=True, slots=True)
class Window(Node):
    """``-after*d <= p - k <= before*d`` and ``(p - k) % d == 0``."""

    before: int
    after: int
    dilation: int = 1


@dataclass(frozen=True, slots=True)
class Global(Node):
    """``p in S or k in S``."""

    positions: IntSet


@dataclass(frozen=True, slots=True)
class Sink(Node):
    """``k < n``."""

    n: int


@dataclass(frozen=True, slots=True)
class Prefix(Node):
    """``p < n and k < n``."""

    n: int


@dataclass(frozen=True, slots=True)
class Chunk(Node):
    """``p // n == k // n``."""

    n: int


@dataclass(frozen=True, slots=True)
class Strided(Node):
    """``(p - k) % s == 0``."""

    s: int


@dataclass(frozen=True, slots=True)
class Fixed(Node):
    """``k % s >= s - c``."""

    s: int
    c: int


@dataclass(frozen=True, slots=True)
class Same(Node):
    """``x[b, p] == x[b, k]`` for the runtime input ``x``."""

    input: str


@dataclass(frozen=True, slots=True)
class Within(Node):
    """``same(x)`` and ``body`` keeps ``(p - start(p), k - start(k))``."""

    input: str
    body: Node


@dataclass(frozen=True, slots=True)
class Where(Node):
    pred: "Pred"


@dataclass(frozen=True, slots=True)
class Not(Node):
    body: Node


@dataclass(frozen=True, slots=True)
class And(Node):
    terms: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Or(Node):
    terms: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class HeadArm(Node):
    """One arm of ``heads { ... }``; ``heads`` is ``None`` for ``_``."""

    heads: IntSet | None
    body: Node


@dataclass(frozen=True, slots=True)
class Heads(Node):
    arms: tuple[HeadArm, ...]


@dataclass(frozen=True, slots=True)
class Blocks(Node):
    """``body`` evaluated on block indices ``(p // size, k // size)``."""

    size: int
    body: Node


@dataclass(frozen=True, slots=True)
class Random(Node):
    """Inside ``blocks``: ``r`` distinct key blocks per query block, from ``seed``."""

    r: int
    seed: int = 0


@dataclass(frozen=True, slots=True)
class Layout(Node):
    """Inside ``blocks``: ``rows[i][j]`` keeps query block ``i`` with key block ``j``."""

    rows: tuple[tuple[bool, ...], ...]


@dataclass(frozen=True, slots=True)
class Neighborhood(Node):
    """NATTEN's generalized neighborhood attention; one entry per grid axis."""

    kernel: tuple[int, ...]
    dilation: tuple[int, ...]
    causal: tuple[bool, ...]
    stride: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Tile(Node):
    """Same tile on every grid axis."""

    sizes: tuple[int, ...]


# ---------------------------------------------------------------- predicates

PRED_VARS = ("q", "p", "k", "h", "Lq", "Lk")


@dataclass(frozen=True, slots=True)
class Pred(Node):
    """Base of predicate (integer/boolean) expressions inside ``where``."""


@dataclass(frozen=True, slots=True)
class PConst(Pred):
    value: int | bool


@dataclass(frozen=True, slots=True)
class PVar(Pred):
    """One of :data:`PRED_VARS`."""

    name: str


@dataclass(frozen=True, slots=True)
class PAxis(Pred):
    """Grid coordinate ``axis`` of ``of`` (``"q"`` or ``"k"``); ``label`` is for printing."""

    of: str
    axis: int
    label: str | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class PBin(Pred):
    """``+ - * // %``, comparisons ``< <= > >= == !=``, and ``and`` / ``or``."""

    op: str
    left: Pred
    right: Pred


@dataclass(frozen=True, slots=True)
class PUn(Pred):
    """``-`` (negate) or ``not``."""

    op: str
    operand: Pred


@dataclass(frozen=True, slots=True)
class PCall(Pred):
    """``abs(x)``, ``min(a, b, ...)``, ``max(a, b, ...)``."""

    func: str
    args: tuple[Pred, ...]


# ---------------------------------------------------------------- the whole mask

@dataclass(frozen=True, slots=True)
class GridAxis(Node):
    name: str | None
    size: int


@dataclass(frozen=True, slots=True)
class Grid(Node):
    axes: tuple[GridAxis, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(a.size for a in self.axes)

    @property
    def numel(self) -> int:
        n = 1
        for a in self.axes:
            n *= a.size
        return n


@dataclass(frozen=True, slots=True)
class MaskDef(Node):
    """A compiled mask: its name, runtime inputs, optional grid and body."""

    name: str
    inputs: tuple[str, ...]
    grid: Grid | None
    body: Node


# ---------------------------------------------------------------- helpers

def and_(*terms: Node, span: Span | None = None) -> Node:
    """``&`` of ``terms``, flattening nested ``And``s (the checker's canonical form)."""
    flat: list[Node] = []
    for t in terms:
        flat.extend(t.terms if isinstance(t, And) else (t,))
    return flat[0] if len(flat) == 1 else And(tuple(flat), span=span)


def or_(*terms: Node, span: Span | None = None) -> Node:
    """``|`` of ``terms``, flattening nested ``Or``s."""
    flat: list[Node] = []
    for t in terms:
        flat.extend(t.terms if isinstance(t, Or) else (t,))
    return flat[0] if len(flat) == 1 else Or(tuple(flat), span=span)


def not_(body: Node, span: Span | None = None) -> Node:
    return Not(body, span=span)


def children(node: Node) -> tuple[Node, ...]:
    """The IR nodes directly below ``node`` (masks and predicates, not grids)."""
    out: list[Node] = []
    for f in fields(node):
        if f.name == "span":
            continue
        v = getattr(node, f.name)
        if isinstance(v, Node) and not isinstance(v, (Grid, GridAxis)):
            out.append(v)
        elif isinstance(v, tuple):
            out.extend(x for x in v if isinstance(x, Node))
    return tuple(out)


def walk(node: Node) -> Iterator[Node]:
    """Pre-order traversal of ``node`` and everything below it."""
    stack = [node]
    while stack:
        n = stack.pop()
        yield n
        stack.extend(reversed(children(n)))
