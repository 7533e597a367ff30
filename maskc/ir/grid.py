"""The meaning of grid masks, written once for every stage and backend.

Row-major coordinates of flat token indices and NATTEN's generalized neighborhood rule on
one axis (docs/language.md section 4). Both take NumPy arrays or torch tensors (pass
``torch.minimum`` and a ``clamp(min=)`` for tensors), so the reference, FlexAttention and
the block analysis share the same definition.
"""

from __future__ import annotations

import numpy as np

__all__ = ["coords", "na_axis"]


def coords(flat, shape: tuple[int, ...]) -> list:
    """Row-major grid coordinates of flat indices (the last axis varies fastest)."""
    out, stride = [], 1
    for size in reversed(shape):
        out.append((flat // stride) % size)
        stride *= size
    return out[::-1]


def tile_counts(grid_shape: tuple[int, ...], tile: tuple[int, ...]) -> tuple[int, ...]:
    """Tiles per axis of ``tile``-shaped tiles over a grid (the last ones may be cut)."""
    return tuple(-(-n // b) for n, b in zip(grid_shape, tile))


def tile_index(flat, grid_shape: tuple[int, ...], tile: tuple[int, ...]):
    """The row-major index, among the grid's tiles, of the tile holding each flat index."""
    out, stride = 0, 1
    for c, b, t in reversed(list(zip(coords(flat, grid_shape), tile,
                                     tile_counts(grid_shape, tile)))):
        out = out + (c // b) * stride
        stride *= t
    return out


def na_axis(qi, ki, n: int, K: int, d: int, s: int, causal: bool, minimum=np.minimum,
            clamp_min=np.maximum):
    """NATTEN's generalized neighborhood rule on one axis of size ``n``: kernel ``K``,
    dilation ``d``, stride ``s``; a bool array of the broadcast shape of ``qi`` and ``ki``."""
    # NOTE: only the final comparisons combine query and key terms, so on broadcast
    # (queries, 1) x (1, keys) inputs everything before them stays query- or key-sized.
    group = qi % d
    ng = (n - group + d - 1) // d
    qq, kk = qi // d, ki // d
    if causal:
        leader = minimum((qq // s) * s + s - 1, ng - 1)
        keep = (kk <= qq) & (kk > leader - K)
    else:
        left, right = K // 2, K // 2 + K % 2 - 1
        leader = minimum((qq // s) * s + s // 2, ng - 1)
        center = clamp_min(minimum(leader, ng - 1 - right), left)
        keep = (kk >= center - left) & (kk <= center + right)
    return keep if d == 1 else keep & (ki % d == group)
