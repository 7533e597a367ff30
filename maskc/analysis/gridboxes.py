"""Exact block analysis of ``neighborhood`` and ``tile`` over a grid.

Both keep, for one query, a product over axes of key sets that depend only on the query's
coordinate on that axis. So a tile whose queries and keys each form a box (a product of
coordinate intervals) is decided axis by axis: it is full when every axis keeps all of its
(query, key) coordinate pairs, and empty when some axis keeps none of them. A tile of
consecutive row-major tokens is a union of at most ``2d - 1`` boxes (:func:`range_boxes`),
and a tile is full (empty) when every (query box, key box) pair is. Per axis, the kept
pairs of a coordinate rectangle are counted from a prefix-sum table of the 1-D rule
(:class:`AxisTables`), so a tile costs O(boxes² × axes) lookups whatever its size.

Axes longer than :data:`AXIS_TABLE_LIMIT` would make those tables large; there the older
per-query count is used: one query's keys are a product of arithmetic progressions
(``g + d*j`` for ``j`` in ``a..b``), and counting how many fall in a flat key range takes
O(axes) per query.
"""

from __future__ import annotations

import functools

import numpy as np

from maskc import ir
from maskc.analysis.states import from_bounds as _states
from maskc.ir.grid import coords as _coords, na_axis

__all__ = ["progressions", "classify_grid", "grid_support", "range_boxes", "AxisTables",
           "classify_boxes", "layout_boxes", "axis_tables", "AXIS_TABLE_LIMIT", "GRID_RUNS",
           "axis_progression"]

_CHUNK = 1 << 20  # (tile, query) pairs evaluated at once
AXIS_TABLE_LIMIT = 2048  # longest axis given a prefix-count table ((n + 1)² int32)


def progressions(node: ir.Node, q, shape: tuple[int, ...]):
    """Per axis ``(g, d, a, b)``: the keys of query ``q`` have coordinate ``g + d*j``, ``a <= j <= b``."""
    return [axis_progression(node, i, qi, shape[i]) for i, qi in enumerate(_coords(q, shape))]


def axis_progression(node: ir.Node, i: int, qi, n: int):
    """``(g, d, a, b)`` of query coordinates ``qi`` on axis ``i`` (of size ``n``). For one
    residue ``qi % d`` (one dilation group), ``g + d*a`` and ``g + d*b`` never decrease as
    ``qi`` grows."""
    if isinstance(node, ir.Tile):
        t = node.sizes[i]
        a = (qi // t) * t
        return (0, 1, a, np.minimum(a + t, n) - 1)
    K, d, s = node.kernel[i], node.dilation[i], node.stride[i]
    g = qi % d
    ng = (n - g + d - 1) // d
    qq = qi // d
    if node.causal[i]:
        leader = np.minimum((qq // s) * s + s - 1, ng - 1)
        return (g, d, np.maximum(leader - K + 1, 0), qq)
    left, right = K // 2, K // 2 + K % 2 - 1
    leader = np.minimum((qq // s) * s + s // 2, ng - 1)
    center = np.maximum(left, np.minimum(leader, ng - 1 - right))
    return (g, d, center - left, center + right)


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
    shape = an.grid.shape
    if max(shape) > AXIS_TABLE_LIMIT:
        return _states(*_count_queries(node, r, shape, an.grid.numel))
    if len(r.p_lo) == 0:  # no candidate tile (e.g. a head whose mask is empty)
        return _states(np.zeros(0, bool), np.zeros(0, bool))
    tables = axis_tables(node, tuple(shape))
    # NOTE: many tiles share a query range (and a key range): box each distinct one once
    qb, qi = _distinct_boxes(r.p_lo, r.p_hi, shape, an.grid.numel)
    kb, ki = _distinct_boxes(r.k_lo, r.k_hi, shape, an.grid.numel)
    full, empty = np.empty(r.p_lo.shape, bool), np.empty(r.p_lo.shape, bool)
    step = max(1, _CHUNK // (qb[0].shape[1] * kb[0].shape[1]))
    for s in range(0, len(r.p_lo), step):
        q, k = qi[s:s + step], ki[s:s + step]
        full[s:s + step], empty[s:s + step] = classify_boxes(
            tables, (qb[0][q], qb[1][q]), (kb[0][k], kb[1][k]))
    return _states(full, empty)


def _distinct_boxes(lo, hi, shape, numel):
    """Boxes of each distinct range ``lo..hi`` and, per range, the index of its boxes."""
    key, inverse = np.unique(np.asarray(lo, np.int64) * (numel + 1) + hi, return_inverse=True)
    return _compact(*range_boxes(key // (numel + 1), key % (numel + 1), shape)), inverse


def _count_queries(node, r, shape, numel):
    """``(full, empty)`` per tile by counting each query's keys in the key range."""
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
    return full, empty


@functools.lru_cache(maxsize=4)  # at most 4 x d x 16 MB (axes up to AXIS_TABLE_LIMIT)
def axis_tables(node, shape: tuple[int, ...]) -> "AxisTables":
    """The :class:`AxisTables` of ``node`` on ``shape`` (nodes compare by value; cached)."""
    return AxisTables(node, shape)


class AxisTables:
    """Per grid axis, the prefix sums of the 1-D rule of ``node`` (``neighborhood`` or
    ``tile``): ``C[q, k]`` = kept pairs with query coordinate ``< q`` and key ``< k``."""

    def __init__(self, node, shape):
        self.tables, self.widths = [], []
        for i, n in enumerate(shape):
            c = np.arange(n)
            if isinstance(node, ir.Tile):
                keep = (c[:, None] // node.sizes[i]) == (c[None, :] // node.sizes[i])
            else:
                keep = na_axis(c[:, None], c[None, :], n, node.kernel[i], node.dilation[i],
                               node.stride[i], node.causal[i])
            t = np.zeros((n + 1, n + 1), dtype=np.int32)
            t[1:, 1:] = keep.astype(np.int32).cumsum(0).cumsum(1)
            self.tables.append(t.ravel())
            self.widths.append(n + 1)

    def kept(self, axis, q0, q1, k0, k1):
        """Kept pairs in query coordinates ``q0..q1`` x key coordinates ``k0..k1``."""
        t, w = self.tables[axis], self.widths[axis]
        a, b = q0 * w, (q1 + 1) * w
        return (t.take(b + k1 + 1) - t.take(a + k1 + 1)) - (t.take(b + k0) - t.take(a + k0))


def range_boxes(lo, hi, shape, offset=None):
    """Row-major flat ranges ``lo..hi`` (inclusive, within a grid of ``shape``) as unions of
    boxes: ``(box_lo, box_hi)``, each ``(tiles, 2d - 1, d)`` coordinates; unused slots are
    empty (``box_lo > box_hi`` on axis 0). ``shape`` may also be per range, ``(tiles, d)``
    (tokens of a layout tile), and ``offset`` (``(tiles, d)``) is added to the boxes."""
    lo = np.asarray(lo, dtype=np.int64)
    end = np.asarray(hi, dtype=np.int64) + 1
    shape = np.asarray(shape, dtype=np.int64)
    d = shape.shape[-1]
    shape = np.broadcast_to(shape, lo.shape + (d,))
    strides = np.ones_like(shape)
    for i in range(d - 2, -1, -1):
        strides[..., i] = strides[..., i + 1] * shape[..., i + 1]
    box_lo = np.zeros(lo.shape + (2 * d - 1, d), dtype=np.int64)
    box_hi = np.full(lo.shape + (2 * d - 1, d), -1, dtype=np.int64)
    cur = lo.copy()

    def emit(slot, nxt, axis):
        # [cur, nxt) lies in one block of axis - 1 and both ends are steps of `axis`
        take = nxt > cur
        c0 = np.stack(_coords_rows(cur, shape, strides), axis=-1)
        c1 = np.stack(_coords_rows(np.maximum(nxt - 1, 0), shape, strides), axis=-1)
        blo, bhi = c0.copy(), c0.copy()
        bhi[..., axis] = c1[..., axis]
        blo[..., axis + 1:] = 0
        bhi[..., axis + 1:] = shape[..., axis + 1:] - 1
        box_lo[..., slot, :] = np.where(take[..., None], blo, 0)
        box_hi[..., slot, :] = np.where(take[..., None], bhi, -1)
        return np.where(take, nxt, cur)

    slot = 0
    for axis in range(d - 1, 0, -1):  # finish the partial blocks at the start, finest first
        block, step = strides[..., axis - 1], strides[..., axis]
        nxt = np.minimum(-(-cur // block) * block, end // step * step)
        cur = emit(slot, nxt, axis)
        slot += 1
    cur = emit(slot, end // strides[..., 0] * strides[..., 0], 0)  # whole steps of axis 0
    slot += 1
    for axis in range(1, d):  # then the partial blocks at the end, coarsest first
        step = strides[..., axis]
        cur = emit(slot, end // step * step, axis)
        slot += 1
    if offset is not None:
        box_lo += offset[..., None, :]
        box_hi += offset[..., None, :]
    return box_lo, box_hi


def layout_boxes(layout, size: int):
    """The tokens of each ``size``-token tile of a tile-major :class:`TokenLayout` as a
    union of boxes, as :func:`range_boxes` returns them (unused slots empty)."""
    grid = np.asarray(layout.grid_shape, dtype=np.int64)
    t = np.asarray(layout.tile_shape, dtype=np.int64)
    counts = -(-grid // t)
    tile_coords = np.stack(np.unravel_index(np.arange(int(np.prod(counts))), tuple(counts)), -1)
    origin = tile_coords * t
    shape = np.minimum(t, grid - origin)  # tiles at a far end are smaller
    sizes = shape.prod(axis=1)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    n = int(starts[-1])
    nt = -(-n // size)
    lo = np.arange(nt, dtype=np.int64) * size
    hi = np.minimum(lo + size, n) - 1
    first = np.searchsorted(starts, lo, side="right") - 1
    last = np.searchsorted(starts, hi, side="right") - 1
    pieces = last - first + 1
    tile = np.repeat(np.arange(nt), pieces)
    spatial = np.repeat(first - np.cumsum(pieces) + pieces, pieces) + np.arange(pieces.sum())
    p_lo = np.maximum(lo[tile], starts[spatial]) - starts[spatial]
    p_hi = np.minimum(hi[tile], starts[spatial + 1] - 1) - starts[spatial]
    b_lo, b_hi = range_boxes(p_lo, p_hi, shape[spatial], offset=origin[spatial])
    slots = b_lo.shape[1]
    rank = np.arange(len(tile)) - np.repeat(np.cumsum(pieces) - pieces, pieces)
    out_lo = np.zeros((nt, int(pieces.max()) * slots, len(grid)), dtype=np.int64)
    out_hi = np.full_like(out_lo, -1)
    cols = rank[:, None] * slots + np.arange(slots)
    out_lo[tile[:, None], cols] = b_lo
    out_hi[tile[:, None], cols] = b_hi
    return _compact(out_lo, out_hi)


def _compact(lo, hi):
    """Drop box slots that no tile uses."""
    used = (lo[..., 0] <= hi[..., 0]).any(axis=0)
    return lo[:, used], hi[:, used]


def _coords_rows(flat, shape, strides):
    return [(flat // strides[..., i]) % shape[..., i] for i in range(shape.shape[-1])]


def classify_boxes(tables: AxisTables, qboxes, kboxes):
    """``(full, empty)`` per tile whose queries are the union of ``qboxes`` and keys the
    union of ``kboxes`` (:func:`range_boxes` pairs, ``(tiles, A, d)`` and ``(tiles, B, d)``).

    An unused slot (``lo = 0``, ``hi = -1``) counts 0 kept pairs out of 0: both full and
    empty, so it changes nothing."""
    q_lo, q_hi = (x[:, :, None, :] for x in qboxes)
    k_lo, k_hi = (x[:, None, :, :] for x in kboxes)
    full = empty = None
    for a in range(q_lo.shape[-1]):
        q0, q1, k0, k1 = q_lo[..., a], q_hi[..., a], k_lo[..., a], k_hi[..., a]
        kept = tables.kept(a, q0, q1, k0, k1)
        f, e = kept == (q1 - q0 + 1) * (k1 - k0 + 1), kept == 0
        full, empty = (f, e) if full is None else (full & f, empty | e)
    return full.all(axis=(1, 2)), empty.all(axis=(1, 2))


GRID_RUNS = 64  # most key runs one query tile's support is split into


_HULL_POINTS = 256  # most query coordinates per axis evaluated for a tile's key hull


def grid_support(node, p_lo, p_hi, an):
    """Key ranges that may hold a kept key of a query in ``p_lo..p_hi``, per query tile.

    Per axis, the tile's queries have coordinates in an interval (the whole axis when the
    tile wraps around it), and their keys lie in an interval too: the keys' lowest end is
    reached at the first coordinate of some dilation group and the highest at the last
    (:func:`axis_progression`), so a tile costs O(axes x dilation) whatever its size. The
    keys' box is, in flat order, one run per combination of its outer-axis coordinates (a
    row of keys per kernel row in 2-D), and the support is those runs when there are at
    most :data:`GRID_RUNS`; else runs over axis 0 only, else the box's flat hull. (The flat
    hull alone spans whole rows: on a 32 x 4096 grid, 16 rows are 65,536 keys, most of them
    in no neighborhood.)"""
    shape = an.grid.shape
    d = len(shape)
    if len(p_lo) == 0:
        return [(np.zeros(0, np.int64), np.full(0, -1, np.int64))]
    strides = [int(np.prod(shape[i + 1:], dtype=np.int64)) for i in range(d)]
    p_lo, p_hi = np.asarray(p_lo, np.int64), np.asarray(p_hi, np.int64)
    box = []
    for i, n in enumerate(shape):
        a, b = (p_lo // strides[i]) % n, (p_hi // strides[i]) % n
        wraps = (p_hi // strides[i] - p_lo // strides[i] >= n) | (a > b)
        a, b = np.where(wraps, 0, a), np.where(wraps, n - 1, b)
        dil = 1 if isinstance(node, ir.Tile) else node.dilation[i]
        m = np.minimum(b - a + 1, dil)  # coordinates that meet every dilation group
        points = min(int(m.max()), _HULL_POINTS)
        j = np.minimum(np.arange(points)[None, :], m[:, None] - 1)
        g, dd, lo, _ = axis_progression(node, i, a[:, None] + j, n)
        k_lo = (g + dd * lo).min(axis=1)
        g, dd, _, hi = axis_progression(node, i, b[:, None] - j, n)
        k_hi = (g + dd * hi).max(axis=1)
        over = m > points  # too many groups to visit: the whole axis
        box.append((np.where(over, 0, k_lo), np.where(over, n - 1, k_hi)))
    ext = [np.maximum(hi - lo + 1, 0) for lo, hi in box]
    for split in range(d - 1, -1, -1):  # axes 0..split-1 become runs; split = 0: the hull
        runs = np.ones_like(ext[0])
        for e in ext[:split]:
            runs = runs * e
        width = int(runs.max(initial=0))
        if width <= GRID_RUNS or split == 0:
            break
    inner_lo = sum(box[i][0] * strides[i] for i in range(split, d))
    inner_hi = sum(box[i][1] * strides[i] for i in range(split, d))
    out = []
    for r in range(width):
        rest, base = np.full_like(runs, r), np.zeros_like(runs)
        for i in range(split - 1, -1, -1):  # unravel r over the outer extents
            base = base + (box[i][0] + rest % np.maximum(ext[i], 1)) * strides[i]
            rest = rest // np.maximum(ext[i], 1)
        used = r < runs
        out.append((np.where(used, base + inner_lo, 0), np.where(used, base + inner_hi, -1)))
    return out
