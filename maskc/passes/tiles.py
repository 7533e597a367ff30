"""Tile choice: the (BM, BN) that minimizes the estimated kernel work for a mask and size.

Requires: a mask IR and a size. Guarantees: a pair from ``SIZES`` (the tile sizes Triton
kernels use) minimizing ``cost``: every visited tile costs its area, a partial tile half as
much again (mask evaluation and wasted lanes), and each visited tile a fixed overhead.
Ties go to larger tiles. A window or stride that a tile size divides leaves no partial
tiles at that size, which this cost prefers.
"""

from __future__ import annotations

from ..blocktable import BlockMap, build

__all__ = ["SIZES", "cost", "choose_tiles"]

SIZES = (16, 32, 64, 128)
PARTIAL_PENALTY = 0.5
TILE_OVERHEAD = 4096  # element-equivalents per visited tile (loads, loop, softmax rescale)


def cost(bm: BlockMap) -> float:
    area = bm.block_q * bm.block_k
    full, partial = bm.stats["full"], bm.stats["partial"]
    return (full + partial) * (area + TILE_OVERHEAD) + partial * area * PARTIAL_PENALTY


def choose_tiles(mdef, q_len=None, kv_len=None, heads: int = 1, sizes=SIZES, evaluate=None,
                 **inputs) -> tuple[int, int]:
    """The ``(block_q, block_k)`` of least :func:`cost`."""
    best = None
    for bq in sorted(sizes, reverse=True):
        for bk in sorted(sizes, reverse=True):
            c = cost(build(mdef, q_len, kv_len, heads, bq, bk, evaluate=evaluate, **inputs))
            if best is None or c < best[0]:
                best = (c, bq, bk)
    return best[1], best[2]
