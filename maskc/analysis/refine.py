"""The visited tiles of a mask as rectangles, found coarse to fine (a quadtree).

:func:`blocktable.build` lists every visited tile, which is what a kernel needs but costs
``O(visited tiles)`` time and memory: 33 million tiles for causal attention at 1M tokens.
Planners (context parallelism, cost estimates) only need *how many* tiles each query tile
visits and *which* key tiles a range of query tiles needs. Both follow from rectangles of
tiles that are wholly visited: classify a few large tiles first, keep the full ones whole,
drop the empty ones, and split only the rest into four, down to the kernel's tile size,
where tiles the classification leaves undecided are resolved element by element as in
``build``. Causal attention then takes ``O(n log n)`` classified tiles for ``n`` tile rows
instead of ``n**2 / 2``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from maskc import ir
from maskc.analysis.blockmap import E, F, R, U, Analysis, classify, uses_head
from maskc.analysis.blocktable import (RESOLVE_MAX_AREA, _candidates, _resolve, _tile_rects,
                                       head_patterns)
from maskc.analysis.sizes import check_heads, check_tiles, prepare_inputs, resolve_lengths
from maskc.passes.bind import check_tables

__all__ = ["Rectangles", "visited_rectangles"]

_TOP_TILES = 64  # the coarsest level has at most this many tiles per side


@dataclass(frozen=True, eq=False)
class Rectangles:
    """Visited tiles at ``block`` as inclusive rectangles of tile indices.

    Rectangle ``i`` covers query tiles ``q0[i]..q1[i]`` and key tiles ``k0[i]..k1[i]``, every
    tile of it visited, for ``weight[i]`` (batch row, head) pairs. Rectangles of one pair
    never overlap; those of different pairs may.
    """

    q_len: int
    kv_len: int
    block: int
    q0: np.ndarray
    q1: np.ndarray
    k0: np.ndarray
    k1: np.ndarray
    weight: np.ndarray
    classified: int  # tiles classified on the way (the cost)

    @property
    def n_q_tiles(self) -> int:
        return -(-self.q_len // self.block)

    @property
    def n_k_tiles(self) -> int:
        return -(-self.kv_len // self.block)

    def visited_per_row(self) -> np.ndarray:
        """Per query tile, the visited tiles summed over batch rows and heads (int64)."""
        diff = np.zeros(self.n_q_tiles + 1, dtype=np.int64)
        width = (self.k1 - self.k0 + 1) * self.weight
        np.add.at(diff, self.q0, width)
        np.add.at(diff, self.q1 + 1, -width)
        return np.cumsum(diff[:-1])

    def dense(self) -> np.ndarray:
        """``(n_q_tiles, n_k_tiles)`` bool, visited by some batch row and head (small sizes:
        for tests)."""
        out = np.zeros((self.n_q_tiles, self.n_k_tiles), dtype=bool)
        for a, b, c, d in zip(self.q0, self.q1, self.k0, self.k1):
            out[a:b + 1, c:d + 1] = True
        return out


def visited_rectangles(mdef: ir.MaskDef, q_len=None, kv_len=None, heads: int = 1,
                       block: int = 128, evaluate=None, **inputs) -> Rectangles:
    """The visited tiles of ``mdef`` at ``block`` (square tiles) as :class:`Rectangles`.

    The same tiles as ``build(..., block, block, evaluate=evaluate)`` visits (full or
    partial), for every batch row of the inputs and every head.
    """
    q_len, kv_len = resolve_lengths(mdef, q_len, kv_len)
    heads = check_heads(mdef, heads)
    block, _ = check_tiles(mdef, q_len, kv_len, block, block)
    xs = prepare_inputs(mdef, kv_len, inputs, heads=heads)
    check_tables(mdef, q_len, kv_len, heads)
    batch = max([x.shape[0] for x in xs.values()] or [1])
    chosen_vary = any(xs[n.input].shape[1] > 1 for n in ir.walk(mdef.body)
                      if isinstance(n, (ir.Select, ir.Keys, ir.Diagonals)))
    pattern = head_patterns(mdef, heads, chosen_vary) if uses_head(mdef.body) else \
        np.zeros(heads, dtype=np.int32)
    counts = np.bincount(pattern)
    nq, nk = -(-q_len // block), -(-kv_len // block)
    levels = 0
    while -(-max(nq, nk) // (1 << levels)) > _TOP_TILES:
        levels += 1
    out, classified = [], 0
    for b in range(batch):
        for g, weight in enumerate(counts):
            h = int(np.flatnonzero(pattern == g)[0])
            an = Analysis(mdef.grid, {k: v[min(b, v.shape[0] - 1)] for k, v in xs.items()}, h,
                          trace={})
            size = block << levels
            qt, kt = _candidates(mdef.body, q_len, kv_len, size, size, an, span=mdef.span)
            qt, kt = qt.astype(np.int64), kt.astype(np.int64)
            for level in range(levels, -1, -1):
                size = block << level
                classified += len(qt)
                st = _states(mdef, qt, kt, q_len, kv_len, size, h, an,
                             evaluate if level == 0 else None)
                full = st == F
                scale = 1 << level
                q0, k0 = qt[full] * scale, kt[full] * scale
                out.append((q0, np.minimum(q0 + scale, nq) - 1, k0,
                            np.minimum(k0 + scale, nk) - 1, np.full(len(q0), weight)))
                if level == 0:
                    part = (st != E) & ~full  # partial, or unproven: visited (sound)
                    out.append((qt[part], qt[part], kt[part], kt[part],
                                np.full(int(part.sum()), weight)))
                    break
                split = st != E
                split &= ~full
                qt, kt = _children(qt[split], kt[split], -(-nq // (scale // 2)),
                                   -(-nk // (scale // 2)))
    cols = [np.concatenate([o[i] for o in out]).astype(np.int64) if out else
            np.zeros(0, dtype=np.int64) for i in range(5)]
    return Rectangles(q_len, kv_len, block, *cols, classified)


def _states(mdef, qt, kt, q_len, kv_len, size, h, an, evaluate) -> np.ndarray:
    if not len(qt):
        return np.zeros(0, dtype=np.int8)
    an.trace = {}
    rects = _tile_rects(qt, kt, q_len, kv_len, size, size, h, mdef.grid)
    st = classify(mdef.body, rects, an).copy()
    todo = np.flatnonzero(st == R)
    if evaluate is not None and len(todo) and size * size <= RESOLVE_MAX_AREA:
        sub = _tile_rects(qt[todo], kt[todo], q_len, kv_len, size, size, h, mdef.grid)
        any_, all_ = _resolve(mdef.body, sub, an, evaluate)
        st[todo] = np.where(~any_, E, np.where(all_, F, st[todo]))
    st[np.isin(st, (U, R))] = U
    return st


def _children(qt, kt, nq, nk):
    """The four quarters of each tile at the next level, those inside the tile grid."""
    q = (qt[:, None] * 2 + np.array([0, 0, 1, 1])).reshape(-1)
    k = (kt[:, None] * 2 + np.array([0, 1, 0, 1])).reshape(-1)
    ok = (q < nq) & (k < nk)
    return q[ok], k[ok]
