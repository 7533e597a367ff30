"""The arithmetic constructs of the mask IR, rendered once for every generating backend.

Each entry of :data:`LOWERINGS` renders one IR node through a renderer ``r`` (with an
:class:`~maskc.backends.emit.Emitter` ``r.e`` and ``r.mask(node, env)``) into a boolean
value: source text, or a Python bool when it folds. The Triton renderer and the
FlexAttention ``mask_mod`` generator add their own entries for what touches memory (inputs,
tables, heads) and share these. Each construct takes its cheapest exact form for its
parameters: a window without dilation has no modulo, a ``neighborhood`` with dilation 1 is
a clamp and two compares, not NATTEN's general dilation-group rule.
"""

from __future__ import annotations

from dataclasses import dataclass

from maskc import ir
from maskc.ir import Op

__all__ = ["Env", "LOWERINGS", "pred", "coord", "value", "in_set"]


@dataclass(frozen=True)
class Env:
    """Where a node is rendered: position values (``P`` aligned query, ``Q`` raw query,
    ``K`` key), ``Lq``/``Lk`` as predicates see them (a value, or a thunk that emits it on
    first use), whether ``P`` may be negative, and the backend's own fields (``extra``)."""

    P: object
    Q: object
    K: object
    h: object
    Lq: object
    Lk: object
    p_nonneg: bool
    grid: ir.Grid | None
    extra: object = None
    # the key offset: runtime inputs are indexed by key rows, row = position - k0
    # (docs/language.md section 13; 0 inside within(...), whose positions are rows of a run)
    k0: object = 0


def value(x):
    """A value of the environment, emitting it now if it is a thunk."""
    return x() if callable(x) else x


def coord(r, env: Env, of: str, axis: int):
    """Grid coordinate ``axis`` of the query (``of="q"``) or key position, bound once."""
    shape = env.grid.shape
    stride = 1
    for s in shape[axis + 1:]:
        stride *= s
    flat = env.K if of == "k" else env.P
    label = env.grid.axes[axis].name or str(axis)
    x = r.e.floordiv(flat, stride, nonneg=True)  # grid positions are never negative
    # NOTE: a position of the grid is below its size, so the first axis needs no modulo.
    x = x if axis == 0 else r.e.mod(x, shape[axis], nonneg=True)
    return r.e.let(x, f"{of}{label}")


def in_set(r, x, s: ir.IntSet, nonneg: bool = False):
    """``x in s`` as compares: one per point, two per interval (one if ``x >= 0`` is known
    and the interval starts at 0)."""
    e = r.e
    parts = [e.cmp(Op.EQ, x, a) if b - a == 1 else
             e.and_(True if nonneg and a <= 0 else e.cmp(Op.GE, x, a), e.cmp(Op.LT, x, b))
             for a, b in s.intervals]
    return e.or_(*parts) if parts else False


def _diff(r, env):
    return r.e.let(r.e.sub(env.P, env.K), "d")


def _window(r, n: ir.Window, env):
    e = r.e
    r.e.note(f"window(before = {n.before}, after = {n.after}"
             + (f", dilation = {n.dilation})" if n.dilation > 1 else ")"))
    if n.before == n.after == 0:
        return e.cmp(Op.EQ, env.P, env.K)
    d = _diff(r, env)
    keep = e.and_(e.cmp(Op.LE, d, n.before * n.dilation), e.cmp(Op.GE, d, -n.after * n.dilation))
    # NOTE: whether d is a multiple is the same under C's and Python's remainder signs.
    return e.and_(keep, e.cmp(Op.EQ, e.mod(d, n.dilation, nonneg=True), 0))


def _chunk(r, n: ir.Chunk, env):
    e = r.e
    e.note(f"chunk({n.n})")
    qc = e.let(e.floordiv(env.P, n.n, env.p_nonneg), "q_chunk")
    return e.cmp(Op.EQ, qc, e.let(e.floordiv(env.K, n.n, True), "k_chunk"))


def _strided(r, n: ir.Strided, env):
    r.e.note(f"strided({n.s})")
    return r.e.cmp(Op.EQ, r.e.mod(_diff(r, env), n.s, nonneg=True), 0)  # sign-free test


def _fixed(r, n: ir.Fixed, env):
    return r.e.cmp(Op.GE, r.e.mod(env.K, n.s, nonneg=True), n.s - n.c)


def _neighborhood(r, n: ir.Neighborhood, env):
    e, shape, terms = r.e, env.grid.shape, []
    for i, size in enumerate(shape):
        K, d, s, causal = n.kernel[i], n.dilation[i], n.stride[i], n.causal[i]
        label = env.grid.axes[i].name or str(i)
        e.note(f"neighborhood, axis {label}: kernel {K}" + (f", dilation {d}" if d > 1 else "")
               + (f", stride {s}" if s > 1 else "") + (", causal" if causal else ""))
        qi, ki = coord(r, env, "q", i), coord(r, env, "k", i)
        if d > 1:  # NATTEN's rule on the dilation group of the query (docs/language.md section 4)
            g = e.let(e.mod(qi, d, True), f"group_{label}")
            ng = e.let(e.floordiv(e.sub(size + d - 1, g), d, True), f"ng_{label}")
            qi = e.let(e.floordiv(qi, d, True), f"q{label}_d")
            ki = e.let(e.floordiv(ki, d, True), f"k{label}_d")
        else:
            g, ng = 0, size
        # the query's leader: itself with stride 1 (qi <= ng - 1 always)
        lead = qi if s == 1 else e.let(e.minimum(
            e.add(e.mul(e.floordiv(qi, s, True), s), s - 1 if causal else s // 2),
            e.sub(ng, 1)), f"lead_{label}")
        if causal:
            keep = e.and_(e.cmp(Op.LE, ki, qi), e.cmp(Op.GT, ki, e.sub(lead, K)))
        else:
            # keys lo .. lo + K - 1 with lo = clamp(leader - K // 2, 0, ng - K)
            lo = e.let(e.clamp(e.sub(lead, K // 2), 0, e.sub(ng, K)), f"lo_{label}")
            keep = e.and_(e.cmp(Op.GE, ki, lo), e.cmp(Op.LT, ki, e.add(lo, K)))
        if d > 1:
            keep = e.and_(keep, e.cmp(Op.EQ, e.mod(coord(r, env, "k", i), d, True), g))
        terms.append(keep)
    return e.and_(*terms)


def _tile(r, n: ir.Tile, env):
    e, terms = r.e, []
    e.note(f"tile{n.sizes}")
    for i, t in enumerate(n.sizes):
        label = env.grid.axes[i].name or str(i)
        qt = e.let(e.floordiv(coord(r, env, "q", i), t, True), f"q{label}_tile")
        kt = e.let(e.floordiv(coord(r, env, "k", i), t, True), f"k{label}_tile")
        terms.append(e.cmp(Op.EQ, qt, kt))
    return e.and_(*terms)


def _not(r, n: ir.Not, env):
    return r.e.not_(r.mask(n.body, env))


def _where(r, n: ir.Where, env):
    r.e.note(f"where {_pretty(n.pred)}")
    return pred(r, n.pred, env)


def _pretty(p):
    from maskc.ir.pretty import pretty_pred
    return pretty_pred(p)


# ---------------------------------------------------------------- predicates

_VARS = {"p": "P", "q": "Q", "k": "K", "h": "h", "Lq": "Lq", "Lk": "Lk"}


def pred(r, p: ir.Pred, env: Env):
    """A ``where`` predicate; integer subexpressions are bound once (hint ``t``)."""
    e = r.e
    if isinstance(p, ir.PConst):
        return p.value
    if isinstance(p, ir.PVar):
        return value(getattr(env, _VARS[p.name]))
    if isinstance(p, ir.PAxis):
        return coord(r, env, p.of if p.of == "k" else "q", p.axis)
    if isinstance(p, ir.PUn):
        x = pred(r, p.operand, env)
        return e.not_(x) if p.op is Op.NOT else e.let(e.neg(x), "t")
    if isinstance(p, ir.PCall):
        args = [pred(r, a, env) for a in p.args]
        if p.func == "abs":
            return e.let(e.abs(args[0]), "t")
        out = args[0]
        for a in args[1:]:
            out = e.let((e.minimum if p.func == "min" else e.maximum)(out, a), "t")
        return out
    a, b = pred(r, p.left, env), pred(r, p.right, env)
    if p.op is Op.AND:
        return e.and_(a, b)
    if p.op is Op.OR:
        return e.or_(a, b)
    if p.op.compare:
        return e.cmp(p.op, a, b)
    return e.let(e.bin(p.op, a, b), "t")


LOWERINGS = {
    ir.Causal: lambda r, n, env: r.e.cmp(Op.LE, env.K, env.P),
    ir.Window: _window,
    ir.Global: lambda r, n, env: r.e.or_(in_set(r, env.P, n.positions, env.p_nonneg),
                                         in_set(r, env.K, n.positions, True)),
    ir.Sink: lambda r, n, env: r.e.cmp(Op.LT, env.K, n.n),
    ir.Prefix: lambda r, n, env: r.e.and_(r.e.cmp(Op.LT, env.P, n.n),
                                          r.e.cmp(Op.LT, env.K, n.n)),
    ir.Chunk: _chunk,
    ir.Strided: _strided,
    ir.Fixed: _fixed,
    ir.Where: _where,
    ir.Not: _not,
    ir.And: lambda r, n, env: r.e.and_(*(r.mask(t, env) for t in n.terms)),
    ir.Or: lambda r, n, env: r.e.or_(*(r.mask(t, env) for t in n.terms)),
    ir.Neighborhood: _neighborhood,
    ir.Tile: _tile,
}
