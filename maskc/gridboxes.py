"""Exact block analysis of ``neighborhood`` and ``tile`` over a grid.

For one query, both keep a product over axes of arithmetic progressions of key coordinates
(``g + d*j`` for ``j`` in ``a..b``). Counting how many of a query's keys fall in a flat key
range takes O(axes): count the keys lexicographically below each end. A tile is full when
every query in it keeps the whole key range and empty when none keeps any of it.
"""

from __future__ import annotations

import numpy as np

from . import ir

__all__ = ["progressions", "classify_grid", "grid_support"]

_CHUNK = 1 << 20  # (tile, query) pairs evaluated at once


def _coords(flat, shape):
    out, stride = [], 1
    for size in reversed(shape):
        out.append((flat // stride) % size)
        stride *= size
    return out[::-1]


def progressions(node: ir.Node, q, shape: tuple[int, ...]):
    """Per axis ``(g, d, a, b)``: the keys of query ``q`` have coordinate ``g + d*j``, ``a <= j <= b``."""
    out = []
    for i, qi in enumerate(_coords(q, shape)):
        n = shape[i]
        if isinstance(node, ir.Tile):
            t = node.sizes[i]
            a = (qi // t) * t
            out.append((0, 1, a, np.minimum(a + t, n) - 1))
            continue
        K, d, s = node.kernel[i], node.dilation[i], node.stride[i]
        g = qi % d
        ng = (n - g + d - 1) // d
        qq = qi // d
        if node.causal[i]:
            leader = np.minimum((qq // s) * s + s - 1, ng - 1)
            out.append((g, d, np.maximum(leader - K + 1, 0), qq))
        else:
            left, right = K // 2, K // 2 + K % 2 - 1
            leader = np.minimum((qq // s) * s + s // 2, ng - 1)
            center = np.maximum(left, np.minimum(leader, ng - 1 - right))
            out.append((g, d, center - left, center + right))
    return out


def _count_below(x, progs, shape, numel):
    """How many of each query's keys have a flat index ``< x``."""
    lens = [np.maximum(b - a + 1, 0) for (_, _, a, b) in progs]
    total = np.ones_like(lens[0])
    for ln in lens:
        total = total * ln
    c = _coords(np.minimum(x, numel - 1), shape)
    acc = np.zeros(np.broadcast(x, lens[0]).shape, dtype=np.int64)
    inside = np.ones_like(acc, dtype=bool)
    for i, (g, d, a, b) in enumerate(progs):
        suffix = np.ones_like(lens[0])
        for ln in lens[i + 1:]:
            suffix = suffix * ln
        rel = c[i] - g
        below = np.clip(-((-rel) // d) - a, 0, lens[i])
        acc = acc + np.where(inside, below * suffix, 0)
        inside = inside & (rel % d == 0) & (rel // d >= a) & (rel // d <= b)
    return np.where(x >= numel, total, acc)


def _rows(p_lo, p_hi):
    width = int((p_hi - p_lo).max(initial=0)) + 1
    q = p_lo[:, None] + np.arange(width)[None, :]
    return np.minimum(q, p_hi[:, None])


def classify_grid(node, r, an, path):
    from .blockmap import _states
    shape = an.grid.shape
    numel = an.grid.numel
    width = int((r.p_hi - r.p_lo).max(initial=0)) + 1
    step = max(1, _CHUNK // width)
    full = np.zeros(r.p_lo.shape, dtype=bool)
    empty = np.zeros(r.p_lo.shape, dtype=bool)
    for s in range(0, len(r.p_lo), step):
        sl = slice(s, s + step)
        q = _rows(r.p_lo[sl], r.p_hi[sl])
        progs = progressions(node, q, shape)
        k_lo, k_hi = r.k_lo[sl, None], r.k_hi[sl, None]
        cnt = _count_below(k_hi + 1, progs, shape, numel) - _count_below(k_lo, progs, shape, numel)
        full[sl] = (cnt == k_hi - k_lo + 1).all(axis=1)
        empty[sl] = (cnt == 0).all(axis=1)
    return _states(full, empty)


def grid_support(node, p_lo, p_hi, an):
    shape = an.grid.shape
    strides = [int(np.prod(shape[i + 1:], dtype=np.int64)) for i in range(len(shape))]
    q = _rows(p_lo, p_hi)
    progs = progressions(node, q, shape)
    lo = sum((g + d * a) * st for (g, d, a, _), st in zip(progs, strides))
    hi = sum((g + d * b) * st for (g, d, _, b), st in zip(progs, strides))
    return [(np.asarray(lo).min(axis=1), np.asarray(hi).max(axis=1))]
