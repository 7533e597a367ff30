"""Tile choice: the (BM, BN) that minimizes the estimated kernel work for a mask and size.

Requires: a mask IR and a size. Guarantees: a pair from ``SIZES`` (the tile sizes Triton
kernels use) minimizing ``cost``: every visited tile costs its area, a partial tile half as
much again (mask evaluation and wasted lanes), and each visited tile a fixed overhead.
Ties go to larger tiles. A window or stride that a tile size divides leaves no partial
tiles at that size, which this cost prefers.
"""

from __future__ import annotations

import numpy as np

from maskc.analysis.blocktable import BlockMap, build
from maskc.analysis.sizes import resolve_lengths

__all__ = ["SIZES", "cost", "choose_tiles"]

SIZES = (16, 32, 64, 128)
PARTIAL_PENALTY = 0.5
TILE_OVERHEAD = 4096  # element-equivalents per visited tile (loads, loop, softmax rescale)


def cost(bm: BlockMap) -> float:
    area = bm.block_q * bm.block_k
    full, partial = bm.stats["full"], bm.stats["partial"]
    return (full + partial) * (area + TILE_OVERHEAD) + partial * area * PARTIAL_PENALTY


def choose_tiles(mdef, q_len=None, kv_len=None, heads: int = 1, sizes=SIZES, evaluate=None,
                 sample: int = 64, **inputs) -> tuple[int, int]:
    """The ``(block_q, block_k)`` of least :func:`cost`.

    Long sequences are costed on ``sample`` query tiles spread evenly over the queries
    (scaled up), so choosing stays cheap at a million tokens.
    """
    q_len, _ = resolve_lengths(mdef, q_len, kv_len)
    best = None
    for bq in sorted(sizes, reverse=True):
        nq = -(-q_len // bq)
        rows = None if nq <= sample else np.unique(np.linspace(0, nq - 1, sample).astype(np.int64))
        scale = 1.0 if rows is None else nq / len(rows)
        for bk in sorted(sizes, reverse=True):
            c = scale * cost(build(mdef, q_len, kv_len, heads, bq, bk, evaluate=evaluate,
                                   q_tiles=rows, **inputs))
            if best is None or c < best[0]:
                best = (c, bq, bk)
    return best[1], best[2]
