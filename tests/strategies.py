"""Hypothesis strategies that build random, valid mask IR directly (no parsing).

Meant to become part of a public testing kit: every strategy here draws IR that the
checker could have produced (``verify`` holds, and ``pretty`` -> ``parse`` -> ``check``
gives it back), over every 1-D primitive, the mask operators, ``heads``, ``blocks`` with
``random``/``layout``, ``within``/``same`` with declared inputs, ``where`` predicates, and
optionally a grid with ``neighborhood``, ``tile`` and axis coordinates.

Checker-canonical form, which the strategies keep so that print -> parse -> check
round-trips exactly:

- ``And``/``Or`` are built with :func:`maskc.ir.and_` / :func:`maskc.ir.or_` (flat);
- a predicate never holds ``PUn`` of a ``PConst`` (the checker folds ``-5`` to
  ``PConst(-5)`` and ``not true`` to ``PConst(False)``);
- comparisons are binary (the checker turns a chain ``a < b < c`` into ``and``);
- ``PAxis.of`` is ``"q"`` or ``"k"`` (the checker maps ``p.x`` to ``q``), with the grid's
  axis name as its label (positional grids: no label);
- every arithmetic node's :func:`maskc.frontend.predicates.bound` stays within
  :data:`maskc.frontend.predicates.I64_BOUND` (the checker rejects the rest as possible overflow).

Predicate integer constants stay small (``-5..8``); lengths stay small (``1..40``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra.lark import LarkStrategy
from lark.grammar import Terminal

from maskc import ir
from maskc.frontend.predicates import I64_BOUND, bound

__all__ = [
    "Ctx", "INPUT_NAMES", "AXIS_NAMES", "int_sets", "grids", "predicates", "int_exprs",
    "bool_exprs", "mask_exprs", "mask_defs", "grid_mask_defs", "sizes", "doc_ids",
    "dense_kwargs", "PRED_CONST", "lark_texts", "FUZZ_NAMES",
]

INPUT_NAMES = ("doc", "seg")
AXIS_NAMES = ("t", "y", "x")
PRED_CONST = st.integers(-5, 8)
_ARITH = ("+", "-", "*", "//", "%")
_CMP = ("<", "<=", ">", ">=", "==", "!=")


@dataclass(frozen=True)
class Ctx:
    """What an expression may use where it is drawn (mirrors :class:`maskc.frontend.check.Ctx`)."""

    inputs: tuple[str, ...] = ()
    grid: ir.Grid | None = None
    in_blocks: bool = False
    in_within: bool = False

    @property
    def axes_ok(self) -> bool:
        """Whether grid primitives and axis coordinates are allowed here."""
        return self.grid is not None and not self.in_blocks and not self.in_within


# ---------------------------------------------------------------- small values

def int_sets(lo: int = 0, hi: int = 12) -> st.SearchStrategy[ir.IntSet]:
    """Sets of positions (or heads) as the checker builds them: from a list or a range."""
    return st.one_of(
        st.lists(st.integers(lo, hi), max_size=4).map(ir.IntSet.of),
        st.tuples(st.integers(lo, hi), st.integers(lo, hi)).map(lambda t: ir.IntSet.range(*t)),
    )


@st.composite
def grids(draw, max_numel: int = 40) -> ir.Grid:
    """A grid of 1-3 axes, all named or all positional, with at most ``max_numel`` tokens."""
    nd = draw(st.integers(1, 3))
    named = draw(st.booleans())
    sizes_: list[int] = []
    for _ in range(nd):
        room = max_numel // max(1, int(np.prod(sizes_ or [1])))
        sizes_.append(draw(st.integers(1, max(1, min(6, room)))))
    names = AXIS_NAMES[3 - nd:] if named else (None,) * nd
    return ir.Grid(tuple(ir.GridAxis(n, s) for n, s in zip(names, sizes_)))


# ---------------------------------------------------------------- predicates

def _fits(node: ir.Pred) -> bool:
    return bound(node) <= I64_BOUND


@st.composite
def int_exprs(draw, ctx: Ctx = Ctx(), depth: int = 2) -> ir.Pred:
    """An integer predicate expression over q, p, k, h, Lq, Lk (and axis coordinates)."""
    leaves = [PRED_CONST.map(ir.PConst), st.sampled_from(ir.PRED_VARS).map(ir.PVar)]
    if ctx.axes_ok:
        axes = ctx.grid.axes
        leaves.append(st.builds(lambda of, i: ir.PAxis(of, i, axes[i].name),
                                st.sampled_from(("q", "k")), st.integers(0, len(axes) - 1)))
    if depth <= 0 or draw(st.integers(0, 2)) == 0:
        return draw(st.one_of(leaves))
    sub = int_exprs(ctx, depth - 1)
    kind = draw(st.sampled_from(("bin", "bin", "neg", "abs", "minmax")))
    if kind == "bin":
        op = draw(st.sampled_from(_ARITH))
        left = draw(sub)
        right = ir.PConst(draw(st.integers(1, 6))) if op in ("//", "%") else draw(sub)
        node = ir.PBin(op, left, right)
        # NOTE: the checker rejects arithmetic that could overflow 64 bits for positions up
        # to 2**31 (e.g. p * k + 1); fall back to an operand, which already fits.
        return node if _fits(node) else left
    if kind == "neg":
        x = draw(sub)
        # NOTE: `-5` is PConst(-5) after checking, never PUn('-', PConst(5)).
        return ir.PConst(-x.value) if isinstance(x, ir.PConst) else ir.PUn("-", x)
    if kind == "abs":
        return ir.PCall("abs", (draw(sub),))
    return ir.PCall(draw(st.sampled_from(("min", "max"))),
                    tuple(draw(st.lists(sub, min_size=2, max_size=3))))


@st.composite
def bool_exprs(draw, ctx: Ctx = Ctx(), depth: int = 2) -> ir.Pred:
    """A condition: comparisons of integer expressions joined by ``and``/``or``/``not``."""
    if depth <= 0 or draw(st.integers(0, 2)) == 0:
        if draw(st.integers(0, 5)) == 0:
            return ir.PConst(draw(st.booleans()))
        return ir.PBin(draw(st.sampled_from(_CMP)), draw(int_exprs(ctx, depth)),
                       draw(int_exprs(ctx, depth)))
    sub = bool_exprs(ctx, depth - 1)
    kind = draw(st.sampled_from(("and", "or", "not")))
    if kind == "not":
        x = draw(sub)
        return ir.PConst(not x.value) if isinstance(x, ir.PConst) else ir.PUn("not", x)
    return ir.PBin(kind, draw(sub), draw(sub))


def predicates(ctx: Ctx = Ctx(), depth: int = 2) -> st.SearchStrategy[ir.Where]:
    """A ``where`` mask."""
    return bool_exprs(ctx, depth).map(ir.Where)


# ---------------------------------------------------------------- masks

def _windows():
    radius = st.integers(0, 6)
    return st.one_of(
        st.builds(lambda r, d: ir.Window(r, r, d), radius, st.integers(1, 3)),
        st.builds(ir.Window, radius, radius, st.integers(1, 3)),
    )


def _layouts():
    return st.integers(0, 4).flatmap(lambda cols: st.lists(
        st.lists(st.booleans(), min_size=cols, max_size=cols).map(tuple), max_size=4,
    ).map(lambda rows: ir.Layout(tuple(rows))))


@st.composite
def _neighborhoods(draw, grid: ir.Grid) -> ir.Neighborhood:
    kernel, dilation, causal, stride = [], [], [], []
    for ax in grid.axes:
        K = draw(st.integers(1, ax.size))
        d = draw(st.integers(1, ax.size // K))
        kernel.append(K)
        dilation.append(d)
        causal.append(draw(st.booleans()))
        stride.append(draw(st.integers(1, K)))
    return ir.Neighborhood(tuple(kernel), tuple(dilation), tuple(causal), tuple(stride))


def _leaves(ctx: Ctx) -> st.SearchStrategy[ir.Node]:
    small = st.integers(0, 8)
    common = st.one_of(
        st.booleans().map(ir.Const),
        st.just(ir.Causal()),
        _windows(),
        int_sets().map(ir.Global),
        small.map(ir.Sink),
        small.map(ir.Prefix),
        st.integers(1, 8).map(ir.Chunk),
        st.integers(1, 5).map(ir.Strided),
        st.integers(1, 6).flatmap(lambda s: st.integers(0, s).map(lambda c: ir.Fixed(s, c))),
        predicates(ctx, depth=2),
    )
    # NOTE: primitives allowed only in some contexts are drawn half the time there, so
    # random/layout, same and the grid primitives are not drowned by the common ones.
    special = []
    if ctx.inputs and not ctx.in_blocks:
        special.append(st.sampled_from(ctx.inputs).map(ir.Same))
    if ctx.in_blocks:
        special.append(st.builds(ir.Random, st.integers(0, 3), st.integers(0, 9)))
        special.append(_layouts())
    if ctx.axes_ok:
        special.append(_neighborhoods(ctx.grid))
        special.append(st.lists(st.integers(1, 6), min_size=len(ctx.grid.axes),
                                max_size=len(ctx.grid.axes)).map(lambda t: ir.Tile(tuple(t))))
    return st.one_of(common, st.one_of(special)) if special else common


@st.composite
def mask_exprs(draw, ctx: Ctx = Ctx(), depth: int = 3) -> ir.Node:
    """A random mask expression of at most ``depth`` nested operators."""
    if depth <= 0 or draw(st.integers(0, 3)) == 0:
        return draw(_leaves(ctx))
    sub = mask_exprs(ctx, depth - 1)
    kinds = ["not", "and", "and", "or", "or", "heads", "blocks"]
    if ctx.inputs and not ctx.in_blocks:
        kinds.append("within")
    kind = draw(st.sampled_from(kinds))
    if kind == "not":
        return ir.not_(draw(sub))
    if kind in ("and", "or"):
        terms = draw(st.lists(sub, min_size=2, max_size=3))
        return (ir.and_ if kind == "and" else ir.or_)(*terms)
    if kind == "heads":
        arms = [ir.HeadArm(draw(int_sets(0, 4)), draw(sub))
                for _ in range(draw(st.integers(0, 2)))]
        # NOTE: a `_` arm last, so no head is left uncovered at dense time.
        arms.append(ir.HeadArm(None, draw(sub)))
        return ir.Heads(tuple(arms))
    if kind == "blocks":
        inner = replace(ctx, in_blocks=True)
        return ir.Blocks(draw(st.integers(1, 6)), draw(mask_exprs(inner, depth - 1)))
    inner = replace(ctx, in_within=True)
    return ir.Within(draw(st.sampled_from(ctx.inputs)), draw(mask_exprs(inner, depth - 1)))


def _input_sets():
    return st.sampled_from(((), ("doc",), ("doc",), INPUT_NAMES))


@st.composite
def mask_defs(draw, depth: int = 3, inputs=None, grid: bool = False) -> ir.MaskDef:
    """A whole mask named ``m``: declared inputs, optionally a grid, and a random body.

    ``inputs`` fixes the declared runtime inputs (default: drawn); with ``grid=True`` the
    mask lies over a random small grid and may use ``neighborhood``, ``tile``, ``q.x``.
    """
    names = draw(_input_sets()) if inputs is None else tuple(inputs)
    g = draw(grids()) if grid else None
    body = draw(mask_exprs(Ctx(inputs=names, grid=g), depth))
    return ir.MaskDef("m", names, g, body)


def grid_mask_defs(depth: int = 3) -> st.SearchStrategy[ir.MaskDef]:
    """:func:`mask_defs` over a grid."""
    return mask_defs(depth=depth, grid=True)


# ---------------------------------------------------------------- sizes and inputs

def sizes(max_len: int = 40, max_heads: int = 3):
    """``(q_len, kv_len, heads)``, often with ``q_len != kv_len`` and sometimes ``q_len == 1``."""
    length = st.integers(1, max_len)
    return st.one_of(
        st.tuples(length, length, st.integers(1, max_heads)),
        st.tuples(length, st.integers(1, max_heads)).map(lambda t: (t[0], t[0], t[1])),
        st.tuples(length, st.integers(1, max_heads)).map(lambda t: (1, t[0], t[1])),
    )


def doc_ids(kv_len: int):
    """Runtime document ids of shape ``(kv_len,)``: sorted (packed) or arbitrary small ints."""
    ids = st.lists(st.integers(0, 3), min_size=kv_len, max_size=kv_len)
    return st.one_of(ids.map(sorted), ids).map(lambda v: np.array(v, dtype=np.int64))


@st.composite
def dense_kwargs(draw, mdef: ir.MaskDef, max_len: int = 40, max_heads: int = 3) -> dict:
    """Keyword arguments for ``maskc.backends.reference.dense(mdef, **kw)``: sizes and inputs."""
    if mdef.grid is not None:
        n = mdef.grid.numel
        q_len, kv_len, heads = n, n, draw(st.integers(1, max_heads))
    else:
        q_len, kv_len, heads = draw(sizes(max_len, max_heads))
    kw = {"q_len": q_len, "kv_len": kv_len, "heads": heads}
    for name in mdef.inputs:
        kw[name] = draw(doc_ids(kv_len))
    return kw


# ---------------------------------------------------------------- grammar fuzzing

# Names for the NAME terminal: builtins, predicate variables, functions, likely parameter
# and input names, `_`; never a keyword (a keyword drawn as NAME would not lex as one).
FUZZ_NAMES = (
    "all", "none", "causal", "window", "global", "sink", "prefix", "chunk", "strided",
    "fixed", "same", "within", "blocks", "random", "layout", "neighborhood", "tile",
    "q", "p", "k", "h", "Lq", "Lk", "abs", "min", "max",
    "w", "w", "n", "doc", "doc", "x", "y", "m", "f", "seed", "before", "after", "dilation",
    "stride", "kernel", "_",
)


class _BoundedLark(LarkStrategy):
    """``from_lark`` with a depth bound: past ``max_depth`` nested rules, each rule takes one
    of its expansions of least height, so draws stay small instead of overrunning."""

    def __init__(self, grammar, start, explicit, max_depth: int):
        super().__init__(grammar, start, explicit, st.characters(codec="utf-8"))
        starts = grammar.options.start if start is None else [start]
        _, rules, _ = grammar.grammar.compile(starts, ())
        alts: dict[str, list[tuple]] = {}
        for r in rules:
            alts.setdefault(r.origin.name, []).append(tuple(r.expansion))
        height: dict[str, int] = {}

        def h_of(alt):
            hs = [0 if isinstance(x, Terminal) else height.get(x.name) for x in alt]
            return None if None in hs else 1 + max(hs, default=0)

        changed = True
        while changed:
            changed = False
            for name, options in alts.items():
                for alt in options:
                    h = h_of(alt)
                    if h is not None and h < height.get(name, 1 << 30):
                        height[name], changed = h, True
        self._shallow = {name: st.sampled_from([a for a in options if h_of(a) == height[name]])
                         for name, options in alts.items()}
        self._max_depth = max_depth
        self._depth = 0

    def draw_symbol(self, data, symbol, draw_state):
        if isinstance(symbol, Terminal):
            return super().draw_symbol(data, symbol, draw_state)
        self._depth += 1
        try:
            if self._depth <= self._max_depth:
                return super().draw_symbol(data, symbol, draw_state)
            for e in data.draw(self._shallow[symbol.name]):
                self.draw_symbol(data, e, draw_state)
                self.gen_ignore(data, draw_state)
        finally:
            self._depth -= 1


def lark_texts(start: str = "start", max_depth: int = 10, names=FUZZ_NAMES,
               max_int: int = 12) -> st.SearchStrategy[str]:
    """Syntactically valid `.mask` text drawn from maskc's own Lark grammar.

    Built on :func:`hypothesis.extra.lark.from_lark`'s generator with explicit terminals:
    ``NAME`` from ``names``, ``INT`` in ``0..max_int``, keywords and names padded with
    spaces (the generator only sometimes puts whitespace between tokens), comments that
    end their line. ``start`` is a rule of the grammar (``"start"`` for whole files,
    ``"expr"`` for one expression).
    """
    from maskc.frontend.parser import lark_parser

    grammar = lark_parser()
    terminals, _, _ = grammar.grammar.compile([start], ())
    used = {t.name for t in terminals}
    explicit = {t.name: st.just(f" {t.pattern.value} ") for t in terminals
                if t.pattern.type == "str" and t.pattern.value.isalpha()}
    explicit.update(
        NAME=st.sampled_from(names).map(" {} ".format),
        INT=st.integers(0, max_int).map(" {} ".format),
        # NOTE: the generator picks WS and COMMENT alike between tokens; mostly spaces here.
        COMMENT=st.sampled_from(["# c\n", " ", " ", " "]),
        WS=st.sampled_from([" ", " ", "\n"]),
    )
    explicit = {k: v for k, v in explicit.items() if k in used}
    return _BoundedLark(grammar, start, explicit, max_depth)
