"""Vectorized interval arithmetic for ``where`` predicates over tiles (sound, not exact).

An integer expression evaluates to ``(lo, hi)`` arrays (one entry per tile) bounding every
value it takes on the tile; a condition evaluates to ``(may_be_false, may_be_true)``.
"""

from __future__ import annotations

import numpy as np

from maskc import ir

__all__ = ["int_range", "cond_range", "coord_range"]


def coord_range(lo, hi, shape: tuple[int, ...], axis: int):
    """Bounds of grid coordinate ``axis`` over flat indices ``lo..hi`` (inclusive)."""
    stride = int(np.prod(shape[axis + 1:], dtype=np.int64))
    n = shape[axis]
    a, b = lo // stride, hi // stride
    ca, cb = a % n, b % n
    within = (b - a < n) & (ca <= cb)
    return np.where(within, ca, 0), np.where(within, cb, n - 1)


def int_range(p: ir.Pred, env):
    """``(lo, hi)`` of an integer predicate expression; ``env`` maps variables to ranges."""
    if isinstance(p, ir.PConst):
        v = np.asarray(int(p.value))  # NOTE: numpy, not Python ints: ~ must be a logical not
        return v, v
    if isinstance(p, ir.PVar):
        lo, hi = env.var(p.name)
        return np.asarray(lo), np.asarray(hi)
    if isinstance(p, ir.PAxis):
        lo, hi = env.var("k" if p.of == "k" else "p")
        return coord_range(lo, hi, env.grid.shape, p.axis)
    if isinstance(p, ir.PUn):  # negation
        lo, hi = int_range(p.operand, env)
        return -hi, -lo
    if isinstance(p, ir.PCall):
        rs = [int_range(a, env) for a in p.args]
        if p.func == "abs":
            lo, hi = rs[0]
            alo, ahi = np.abs(lo), np.abs(hi)
            return np.where((lo <= 0) & (hi >= 0), 0, np.minimum(alo, ahi)), np.maximum(alo, ahi)
        f = np.minimum if p.func == "min" else np.maximum
        lo, hi = rs[0]
        for a, b in rs[1:]:
            lo, hi = f(lo, a), f(hi, b)
        return lo, hi
    (alo, ahi), (blo, bhi) = int_range(p.left, env), int_range(p.right, env)
    if p.op == "+":
        return alo + blo, ahi + bhi
    if p.op == "-":
        return alo - bhi, ahi - blo
    if p.op == "*":
        c = [alo * blo, alo * bhi, ahi * blo, ahi * bhi]
        return np.minimum.reduce(np.broadcast_arrays(*c)), np.maximum.reduce(np.broadcast_arrays(*c))
    d = int(p.right.value)  # the checker guarantees a positive constant divisor
    if p.op == "//":
        return alo // d, ahi // d
    # '%': exact when the range stays inside one period
    same = (alo // d) == (ahi // d)
    return np.where(same, alo % d, 0), np.where(same, ahi % d, d - 1)


def cond_range(p: ir.Pred, env):
    """``(may_be_false, may_be_true)`` boolean arrays of a condition over each tile."""
    if isinstance(p, ir.PConst):
        return np.asarray(not p.value), np.asarray(bool(p.value))
    if isinstance(p, ir.PUn):  # not
        f, t = cond_range(p.operand, env)
        return t, f
    if p.op in ("and", "or"):
        (af, at), (bf, bt) = cond_range(p.left, env), cond_range(p.right, env)
        if p.op == "and":
            return af | bf, at & bt
        return af & bf, at | bt
    (alo, ahi), (blo, bhi) = int_range(p.left, env), int_range(p.right, env)
    # may_true / may_false of a OP b over the product of the two ranges
    if p.op == "<":
        return ahi >= blo, alo < bhi
    if p.op == "<=":
        return ahi > blo, alo <= bhi
    if p.op == ">":
        return alo <= bhi, ahi > blo
    if p.op == ">=":
        return alo < bhi, ahi >= blo
    point = (alo == ahi) & (blo == bhi)
    overlap = (alo <= bhi) & (blo <= ahi)
    if p.op == "==":
        return ~(point & (alo == blo)), overlap
    return overlap, ~(point & (alo == blo))  # '!='
