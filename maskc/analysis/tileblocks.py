"""Block analysis of tile-shaped blocks, ``blocks((b1, ..., bd), body)`` over a grid.

A kernel tile of row-major positions touches a few grid tiles (a tile of 64 tokens on a
32-wide grid with 4 x 4 x 4 cubes: 8 cubes). So a tile of the block map is classified
from the *distinct* grid tiles of its queries and of its keys: the body is classified on
each (query tile, key tile) pair, and the tile is full when every pair is kept, empty when
none is, partial otherwise (exact: each pair holds a query and a key of the tile). The
support lists the token runs of the grid tiles the body may keep (one run per row of a
tile), or, when they are too many, each tile interval's hull in row-major order.
"""

from __future__ import annotations

import math

import numpy as np

from maskc import ir
from maskc.analysis.states import E, F, P, R
from maskc.ir.grid import tile_counts
from maskc.analysis import blockmap  # NOTE: mutual recursion: names looked up at call time

# NOTE: wider position ranges (`show` on huge tiles) are not enumerated: they stay
# unresolved (classify) or keep every key (support), both sound.
MAX_WIDTH = 1024
MAX_PAIRS = 256      # (query tile, key tile) pairs of one map tile classified one by one
PAIR_TABLE = 1 << 22  # tile pairs classified once into a table when there are no more
MAX_RUNS = 256       # token runs listed per query range before falling back to hulls
_CHUNK = 1 << 21     # elements enumerated at once


def _strides(shape):
    return [math.prod(shape[i + 1:]) for i in range(len(shape))]


def distinct_tiles(lo, hi, shape, tile):
    """Per range ``lo..hi`` of flat positions: the distinct grid tiles it touches, ``(n, D)``
    (rows with fewer repeat their first), or ``None`` when a range is wider than
    :data:`MAX_WIDTH`."""
    lo, hi = np.asarray(lo, dtype=np.int64), np.asarray(hi, dtype=np.int64)
    width = int((hi - lo).max(initial=0)) + 1
    if width > MAX_WIDTH:
        return None
    # NOTE: the ranges of a block map repeat (a key tile per candidate): each once
    numel = math.prod(shape)
    code, inv = np.unique(np.clip(lo, -1, numel) * (numel + 2) + np.clip(hi, -1, numel) + 1,
                          return_inverse=True)
    lo, hi = code // (numel + 2), code % (numel + 2) - 1
    pos = np.clip(np.minimum(lo[:, None] + np.arange(width), hi[:, None]), 0, numel - 1)
    return tiles_of_tokens(pos, shape, tile)[inv.ravel()]


def tiles_of_tokens(tokens, shape, tile):
    """Per row of flat tokens ``(n, w)``: its distinct grid tiles, ``(n, D)``, sorted (rows
    with fewer repeat their first)."""
    counts = tile_counts(shape, tile)
    t, stride = np.zeros(tokens.shape, dtype=np.int64), 1
    for axis in reversed(range(len(shape))):
        t += (tokens // _strides(shape)[axis] % shape[axis]) // tile[axis] * stride
        stride *= counts[axis]
    t.sort(axis=1)
    new = np.concatenate([np.zeros((len(t), 1), bool), t[:, 1:] != t[:, :-1]], axis=1)
    rank = np.cumsum(new, axis=1)
    out = np.repeat(t[:, :1], int(rank.max(initial=0)) + 1, axis=1)
    rows = np.broadcast_to(np.arange(len(t))[:, None], t.shape)
    out[rows[new], rank[new]] = t[new]
    return out


def pair_states(n: ir.TileBlocks, tq, tk, h, an):
    """States of map tiles whose queries touch the grid tiles ``tq`` ``(n, Dq)`` and keys
    ``tk`` ``(n, Dk)``: full when the body keeps every pair, empty when none, else partial
    (``R`` where a pair is not decided)."""
    nt = math.prod(tile_counts(an.grid.shape, n.shape))
    pairs = (len(tq), tq.shape[1], tk.shape[1])
    qs = np.broadcast_to(tq[:, :, None], pairs).ravel()
    ks = np.broadcast_to(tk[:, None, :], pairs).ravel()
    st = _pair_states(n, qs, ks, nt, h, an).reshape(len(tq), -1)
    exact = np.isin(st, (E, F)).all(axis=1)
    return np.where(~exact, R, np.where((st == F).all(axis=1), F,
                                         np.where((st == E).all(axis=1), E, P))).astype(np.int8)


def _pair_states(n: ir.TileBlocks, qs, ks, nt, h, an):
    """States of ``n.body`` on the tile pairs ``(qs, ks)``: from a table of every pair when
    there are at most :data:`PAIR_TABLE` of them (made once per analysis), else one by one."""
    def states(q, k):
        saved, an.trace = an.trace, None  # NOTE: pair-shaped states are no tile's trace
        try:
            return blockmap.classify(n.body, blockmap.Rects(q, q, k, k, q, q, nt, nt, nt, h,
                                                            None), an)
        finally:
            an.trace = saved
    if nt * nt > PAIR_TABLE:
        return states(qs, ks)
    return an.cached(("tile pairs", n, h), lambda: states(
        *np.divmod(np.arange(nt * nt, dtype=np.int64), nt)))[qs * nt + ks]


def classify_tile_blocks(n: ir.TileBlocks, r, an, path):
    shape = an.grid.shape
    out = np.full(r.p_lo.shape, R, dtype=np.int8)
    width = int(max((r.p_hi - r.p_lo).max(initial=0), (r.k_hi - r.k_lo).max(initial=0))) + 1
    if width > MAX_WIDTH:
        return out
    step = max(1, _CHUNK // width)
    for s in range(0, len(r.p_lo), step):
        sl = slice(s, s + step)
        tq = distinct_tiles(r.p_lo[sl], r.p_hi[sl], shape, n.shape)
        tk = distinct_tiles(r.k_lo[sl], r.k_hi[sl], shape, n.shape)
        if tq.shape[1] * tk.shape[1] <= MAX_PAIRS:  # else left to evaluation
            out[sl] = pair_states(n, tq, tk, r.h, an)
    return out


def _tile_starts(t, shape, tile):
    """Per-axis first coordinate of grid tiles ``t`` (row-major tile indices)."""
    counts = tile_counts(shape, tile)
    starts = []
    for axis in range(len(shape)):
        s = math.prod(counts[axis + 1:])
        starts.append(t // s % counts[axis] * tile[axis])
    return starts


def _runs(t, valid, shape, tile):
    """Token runs ``[(lo, hi)]`` of grid tiles ``t`` (arrays), invalid ones empty."""
    starts = _tile_starts(np.where(valid, t, 0), shape, tile)
    strides = _strides(shape)
    hi_last = np.minimum(starts[-1] + tile[-1], shape[-1]) - 1
    out = []
    for offs in np.ndindex(*[min(b, n) for b, n in zip(tile[:-1], shape[:-1])]):
        ok = valid.copy()
        flat = starts[-1].copy()
        for axis, o in enumerate(offs):
            c = starts[axis] + o
            ok &= c < shape[axis]
            flat = flat + c * strides[axis]
        lo = np.where(ok, flat, 0)
        out.append((lo, np.where(ok, lo + hi_last - starts[-1], -1)))
    return out


def _hull(a, b, shape, tile):
    """Row-major hull ``[first token of tile a, last token of tile b]`` (both monotone in the
    tile index)."""
    strides = _strides(shape)
    sa, sb = _tile_starts(a, shape, tile), _tile_starts(np.maximum(b, 0), shape, tile)
    lo = sum(c * st for c, st in zip(sa, strides))
    hi = sum((np.minimum(c + t, n) - 1) * st for c, t, n, st in zip(sb, tile, shape, strides))
    return lo, np.where(b < a, -1, hi)


def tile_blocks_support(node: ir.TileBlocks, p_lo, p_hi, Lk, an):
    shape = an.grid.shape
    nt = math.prod(tile_counts(shape, node.shape))
    tq = distinct_tiles(p_lo, p_hi, shape, node.shape)
    if tq is None:
        return [(np.zeros_like(p_lo), np.full_like(p_lo, Lk - 1))]
    tiles = []  # (lo, hi) tile intervals over the rows
    for a in range(tq.shape[1]):
        for lo, hi in blockmap.support(node.body, tq[:, a], tq[:, a], nt, an):
            lo = np.broadcast_to(np.maximum(lo, 0), p_lo.shape)
            tiles.append((lo, np.broadcast_to(np.minimum(hi, nt - 1), p_lo.shape)))
    per_tile = math.prod(min(b, n) for b, n in zip(node.shape[:-1], shape[:-1]))
    spans = [int((hi - lo).max(initial=-1)) + 1 for lo, hi in tiles]
    runs = sum(spans) * per_tile
    if runs <= MAX_RUNS or runs * len(p_lo) <= 4 * _CHUNK:
        out = []
        for (lo, hi), span in zip(tiles, spans):
            for j in range(span):
                out += _runs(lo + j, lo + j <= hi, shape, node.shape)
        return out
    return [_hull(lo, hi, shape, node.shape) for lo, hi in tiles]
