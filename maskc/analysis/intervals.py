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
    return _INT[p.op](int_range(p.left, env), int_range(p.right, env), p)


def _mul(a, b, p):
    c = [a[0] * b[0], a[0] * b[1], a[1] * b[0], a[1] * b[1]]
    return np.minimum.reduce(np.broadcast_arrays(*c)), np.maximum.reduce(np.broadcast_arrays(*c))


def _mod(a, b, p):
    d = int(p.right.value)  # the checker guarantees a positive constant divisor
    same = (a[0] // d) == (a[1] // d)  # exact when the range stays inside one period
    return np.where(same, a[0] % d, 0), np.where(same, a[1] % d, d - 1)


# integer operators: ((alo, ahi), (blo, bhi), node) -> (lo, hi)
_INT = {
    ir.Op.ADD: lambda a, b, p: (a[0] + b[0], a[1] + b[1]),
    ir.Op.SUB: lambda a, b, p: (a[0] - b[1], a[1] - b[0]),
    ir.Op.MUL: _mul,
    ir.Op.FLOORDIV: lambda a, b, p: (a[0] // int(p.right.value), a[1] // int(p.right.value)),
    ir.Op.MOD: _mod,
}


def _point_equal(a, b):
    return (a[0] == a[1]) & (b[0] == b[1]) & (a[0] == b[0])


def _overlap(a, b):
    return (a[0] <= b[1]) & (b[0] <= a[1])


# comparisons: ((alo, ahi), (blo, bhi)) -> (may_be_false, may_be_true) over the product
_CMP = {
    ir.Op.LT: lambda a, b: (a[1] >= b[0], a[0] < b[1]),
    ir.Op.LE: lambda a, b: (a[1] > b[0], a[0] <= b[1]),
    ir.Op.GT: lambda a, b: (a[0] <= b[1], a[1] > b[0]),
    ir.Op.GE: lambda a, b: (a[0] < b[1], a[1] >= b[0]),
    ir.Op.EQ: lambda a, b: (~_point_equal(a, b), _overlap(a, b)),
    ir.Op.NE: lambda a, b: (_overlap(a, b), ~_point_equal(a, b)),
}

# logic: ((af, at), (bf, bt)) -> (may_be_false, may_be_true)
_LOGIC = {
    ir.Op.AND: lambda a, b: (a[0] | b[0], a[1] & b[1]),
    ir.Op.OR: lambda a, b: (a[0] & b[0], a[1] | b[1]),
}


def cond_range(p: ir.Pred, env):
    """``(may_be_false, may_be_true)`` boolean arrays of a condition over each tile."""
    if isinstance(p, ir.PConst):
        return np.asarray(not p.value), np.asarray(bool(p.value))
    if isinstance(p, ir.PUn):  # not
        f, t = cond_range(p.operand, env)
        return t, f
    if p.op in _LOGIC:
        return _LOGIC[p.op](cond_range(p.left, env), cond_range(p.right, env))
    return _CMP[p.op](int_range(p.left, env), int_range(p.right, env))
