"""The mask IR: typed, resolved, structural.

Every primitive keeps its structure (a window is a :class:`Window`, not a predicate) so
block analysis and code generation can reason about it. Nodes are frozen, slotted
dataclasses with structural equality; spans are carried but never compared. Parameters
are already substituted: the IR holds only constants and runtime-input names.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Iterator

from maskc.errors import Span

__all__ = [
    "Node", "IntSet", "Const", "Causal", "Window", "Global", "Sink", "Prefix", "Chunk",
    "Strided", "Fixed", "Same", "Within", "Where", "Not", "And", "Or", "HeadArm", "Heads",
    "Blocks", "TileBlocks", "Random", "Select", "Keys", "Diagonals", "Layout", "Neighborhood", "Tile", "GridAxis", "Grid", "MaskDef",
    "Pred", "PConst", "PVar", "PAxis", "PBin", "PUn", "PCall", "Op", "and_", "or_", "not_",
    "children", "walk", "PRED_VARS",
    "Score", "SVar", "SConst", "SInt", "SIndex", "SBin", "SNeg", "SCall", "Softcap", "Alibi",
    "SCORE_FUNCS",
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
class TileBlocks(Node):
    """Over a grid: ``body`` evaluated on tile indices, a token's tile the row-major index of
    its ``shape[0] x ... x shape[d-1]`` tile among the grid's tiles (docs/language.md section 10)."""

    shape: tuple[int, ...]
    body: Node


@dataclass(frozen=True, slots=True)
class Random(Node):
    """Inside ``blocks``: ``r`` distinct key blocks per query block, from ``seed``."""

    r: int
    seed: int = 0


@dataclass(frozen=True, slots=True)
class Select(Node):
    """Inside ``blocks``: key block ``k`` is listed in row ``p`` of the runtime input
    (``x[b, h, p, :]``; entries < 0 are padding)."""

    input: str


@dataclass(frozen=True, slots=True)
class Keys(Node):
    """Key ``k`` is listed in the runtime input ``x[b, h, :]`` (vertical lines)."""

    input: str


@dataclass(frozen=True, slots=True)
class Diagonals(Node):
    """``p - k`` is listed in the runtime input ``x[b, h, :]`` (slash lines)."""

    input: str


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


class Op(Enum):
    """The operators of ``where`` predicates, with their spelling on every target.

    Every table over operators (the simplifier's folding, interval bounds, the NumPy
    reference, the torch and Triton renderings) is keyed by these members; the spellings
    live here once. ``surface`` is the ``.mask`` language (``pretty``) and ``prec`` its
    binding power; ``python`` names the :mod:`operator` function on Python ints and bools;
    ``numpy`` the NumPy ufunc; ``torch``/``triton`` format the operands (``{}``) as source
    text on tensors (``//``/``%`` are Python's floor rules on both: torch's own operators,
    Triton's ``_floordiv``/``_mod`` helpers of the generated module).
    """

    #          surface prec python     numpy            torch        triton
    ADD = ("+", 5, "add", "add", "{} + {}", "{} + {}")
    SUB = ("-", 5, "sub", "subtract", "{} - {}", "{} - {}")
    MUL = ("*", 6, "mul", "multiply", "{} * {}", "{} * {}")
    FLOORDIV = ("//", 6, "floordiv", "floor_divide", "{} // {}", "_floordiv({}, {})")
    MOD = ("%", 6, "mod", "mod", "{} % {}", "_mod({}, {})")
    LT = ("<", 4, "lt", "less", "{} < {}", "{} < {}")
    LE = ("<=", 4, "le", "less_equal", "{} <= {}", "{} <= {}")
    GT = (">", 4, "gt", "greater", "{} > {}", "{} > {}")
    GE = (">=", 4, "ge", "greater_equal", "{} >= {}", "{} >= {}")
    EQ = ("==", 4, "eq", "equal", "{} == {}", "{} == {}")
    NE = ("!=", 4, "ne", "not_equal", "{} != {}", "{} != {}")
    AND = ("and", 2, "and_", "logical_and", "{} & {}", "{} & {}")
    OR = ("or", 1, "or_", "logical_or", "{} | {}", "{} | {}")
    NEG = ("-", 7, "neg", "negative", "-{}", "-{}")       # unary
    NOT = ("not", 3, "not_", "logical_not", "~{}", "~{}")  # unary

    def __init__(self, surface, prec, python, numpy, torch, triton):
        self.surface, self.prec = surface, prec
        self.python, self.numpy, self.torch, self.triton = python, numpy, torch, triton

    @property
    def unary(self) -> bool:
        return self in (Op.NEG, Op.NOT)

    @property
    def compare(self) -> bool:
        return self.prec == 4

    @property
    def logical(self) -> bool:
        return self in (Op.AND, Op.OR, Op.NOT)

    @staticmethod
    def of(surface: "str | Op", unary: bool = False) -> "Op":
        """The member spelled ``surface`` in the language (binary, or ``unary``)."""
        if isinstance(surface, Op):
            return surface
        for op in Op:
            if op.surface == surface and op.unary == unary:
                return op
        raise ValueError(f"no {'unary' if unary else 'binary'} operator {surface!r}")

    def __repr__(self) -> str:
        return f"Op.{self.name}"


@dataclass(frozen=True, slots=True)
class PBin(Pred):
    """``+ - * // %``, comparisons ``< <= > >= == !=``, and ``and`` / ``or``."""

    op: Op
    left: Pred
    right: Pred

    def __post_init__(self):
        # NOTE: a surface spelling ("+") is accepted and stored as its member, so IR built
        # by hand or by tests compares equal to the front end's.
        if not isinstance(self.op, Op):
            object.__setattr__(self, "op", Op.of(self.op))


@dataclass(frozen=True, slots=True)
class PUn(Pred):
    """``-`` (negate, :attr:`Op.NEG`) or ``not`` (:attr:`Op.NOT`)."""

    op: Op
    operand: Pred

    def __post_init__(self):
        if not isinstance(self.op, Op):
            object.__setattr__(self, "op", Op.of(self.op, unary=True))


@dataclass(frozen=True, slots=True)
class PCall(Pred):
    """``abs(x)``, ``min(a, b, ...)``, ``max(a, b, ...)``."""

    func: str
    args: tuple[Pred, ...]


# ---------------------------------------------------------------- scores (section 9)

@dataclass(frozen=True, slots=True)
class Score(Node):
    """Base of float score expressions (the part after ``with``)."""


@dataclass(frozen=True, slots=True)
class SVar(Score):
    """``s``: the score ``scale * q . k`` of the pair."""


@dataclass(frozen=True, slots=True)
class SConst(Score):
    value: float


@dataclass(frozen=True, slots=True)
class SInt(Score):
    """An integer expression of section 4 (positions, heads, lengths), promoted to float."""

    value: Pred


@dataclass(frozen=True, slots=True)
class SIndex(Score):
    """``x[i, j, ...]``: runtime float input ``x`` at integer indices, each clamped to its
    axis (an index past either end reads the nearest entry)."""

    input: str
    index: tuple[Pred, ...]


@dataclass(frozen=True, slots=True)
class SBin(Score):
    """``+ - * /`` (``op`` the surface spelling)."""

    op: str
    left: Score
    right: Score


@dataclass(frozen=True, slots=True)
class SNeg(Score):
    operand: Score


# name -> (fewest, most) arguments; None: no upper bound
SCORE_FUNCS = {"abs": (1, 1), "min": (2, None), "max": (2, None), "clamp": (3, 3),
               "exp": (1, 1), "log": (1, 1), "sqrt": (1, 1), "tanh": (1, 1),
               "sigmoid": (1, 1)}


@dataclass(frozen=True, slots=True)
class SCall(Score):
    """One of :data:`SCORE_FUNCS` on float arguments."""

    func: str
    args: tuple[Score, ...]


@dataclass(frozen=True, slots=True)
class Softcap(Score):
    """``softcap(c)`` = ``c * tanh(s / c)`` (Gemma 2)."""

    cap: Score


@dataclass(frozen=True, slots=True)
class Alibi(Score):
    """``alibi(slopes)`` = ``s - slopes[h] * abs(p - k)`` (Press et al., ALiBi)."""

    slopes: str


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
    """A compiled mask: its name, runtime inputs, optional grid, body and score."""

    name: str
    inputs: tuple[str, ...]
    grid: Grid | None
    body: Node
    score: Score | None = None   # `with SCORE`; None keeps s
    score_inputs: tuple[str, ...] = ()   # the float inputs the score reads (not in inputs)


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
