"""Block tables of a grid mask under a token layout (:mod:`maskc.passes.layout`).

Requires: a mask over a grid and a :class:`~maskc.passes.layout.TokenLayout` of that grid.
Guarantees: a :class:`~maskc.analysis.blocktable.BlockMap` over *permuted* positions whose tiles are
exactly the tiles of ``permuted_dense(dense, layout)`` (checked in tests). Candidate key
tiles come from the bounding box of each query tile's neighborhood (for ``neighborhood``
and ``tile`` masks; every tile otherwise). A bare ``neighborhood`` or ``tile`` mask is
classified axis by axis on the boxes that make up each tile (:mod:`maskc.analysis.gridboxes`; cost:
the candidates times the boxes per tile pair); any other mask by evaluating each candidate
on its tokens (cost: the candidates times the tile area). Both are exact.
"""

from __future__ import annotations

import numpy as np

from maskc import ir
from maskc.analysis.blocktable import BlockMap, _csr, _resolve, _stack
from maskc.analysis.blockmap import (Analysis, Rects, and_states, not_states, or_states,
                                     uses_head)
from maskc.analysis.states import E, F, R, from_bounds
from maskc.analysis.tileblocks import MAX_PAIRS, pair_states, tiles_of_tokens
from maskc.ir.grid import coords as _coords
from maskc.analysis.gridboxes import (_CHUNK, AXIS_TABLE_LIMIT, axis_tables, classify_boxes,
                         layout_boxes, progressions)
from maskc.analysis.sizes import check_elements, dense_limit, prepare_inputs
from maskc.passes.layout import TokenLayout

__all__ = ["permuted_block_map", "visited_tiles", "tiled_layout", "choose_layout",
           "row_major_visits", "LAYOUT_GAIN"]


def _boxes(tokens: np.ndarray, shape) -> tuple[np.ndarray, np.ndarray]:
    """Per block of original tokens ``(n, B)``: the coordinate bounding box, ``(n, d)`` each."""
    c = np.stack(_coords(tokens, shape), axis=-1)
    return c.min(axis=1), c.max(axis=1)


def _key_boxes(body: ir.Node, tokens, shape):
    """Bounding box of the keys that the queries of each block may keep (or ``None``)."""
    if not isinstance(body, (ir.Neighborhood, ir.Tile)):
        return None
    progs = progressions(body, tokens, shape)
    lo = np.stack([(g + d * a).min(axis=1) for g, d, a, _ in progs], axis=-1)
    hi = np.stack([(g + d * b).max(axis=1) for g, d, _, b in progs], axis=-1)
    return lo, hi


def permuted_block_map(mdef: ir.MaskDef, layout: TokenLayout, block: int, heads: int = 1,
                       evaluate=None, block_k: int | None = None, **inputs) -> BlockMap:
    """Tile tables of ``mdef`` with tokens in ``layout`` order; see the module docstring.

    Tiles are ``block`` queries by ``block_k`` keys (default: square)."""
    shape = mdef.grid.shape
    n = mdef.grid.numel
    block_k = block if block_k is None else block_k

    # NOTE: int32 tokens halve the evaluation's work; `where` arithmetic needs 64 bits.
    narrow = np.int64 if any(isinstance(x, ir.Where) for x in ir.walk(mdef.body)) \
        else np.int32

    def tile_tokens(size):  # (tiles, size) original tokens; the last tile repeats its end
        nt = -(-n // size)
        perm = layout.perm.astype(narrow)
        return perm[np.minimum(np.arange(nt * size).reshape(nt, size), n - 1)]
    nq, nk = -(-n // block), -(-n // block_k)
    # NOTE: every pair of tiles is looked at: refuse before tokens or boxes are built
    check_elements(nq * nk, f"the tiled layout's analysis ({nq:,} x {nk:,} tile pairs)",
                   mdef.span)
    q_tokens, k_tokens = tile_tokens(block), tile_tokens(block_k)
    box_lo, box_hi = _boxes(k_tokens, shape)
    keys = _key_boxes(mdef.body, q_tokens, shape)
    if keys is None:
        qt, kt = np.divmod(np.arange(nq * nk), nk)
    else:
        k_lo, k_hi = keys
        qt, kt = [], []
        step = max(1, (1 << 22) // nk)  # query tiles at a time: a few MiB of booleans
        for r in range(0, nq, step):
            overlap = np.all((box_lo[None, :, :] <= k_hi[r:r + step, None, :]) &
                             (k_lo[r:r + step, None, :] <= box_hi[None, :, :]), axis=-1)
            q, k = np.nonzero(overlap)
            qt.append(q + r)
            kt.append(k)
        qt, kt = np.concatenate(qt), np.concatenate(kt)
    prepared = prepare_inputs(mdef, n, inputs)
    batch = max([x.shape[0] for x in prepared.values()] or [1])
    per_head = uses_head(mdef.body)
    by_boxes = keys is not None and max(shape) <= AXIS_TABLE_LIMIT
    if by_boxes:  # a bare neighborhood or tile: decided axis by axis, nothing evaluated
        full, empty = _classify_layout_tiles(mdef.body, layout, block, block_k, qt, kt)
    rows, static = [], {}  # static: states of the terms that read no input, made once
    stats = {"unproven": 0, "resolved": 0}
    for b in range(batch):  # batched runtime inputs: one set of tables per batch entry
        xs = {k: v[b % v.shape[0]] for k, v in prepared.items()}
        cells = []
        for h in (range(heads) if per_head else range(1)):
            an = Analysis(mdef.grid, xs, h)
            if by_boxes:
                any_, all_ = ~empty, full
            else:
                # NOTE: permuted blocks are not position ranges: tile-shaped blocks and grid
                # terms are classified from the tokens' tiles and boxes; what that leaves
                # undecided is evaluated on its tokens.
                st = _token_states(mdef.body, q_tokens, k_tokens, qt, kt, layout, block,
                                   block_k, an, static)
                todo = np.arange(len(qt)) if st is None else np.flatnonzero(st == R)
                any_, all_ = (np.zeros(len(qt), bool), np.zeros(len(qt), bool)) \
                    if st is None else (st != E, st == F)
                if len(todo) and evaluate is None:  # undecided: partial (sound)
                    any_[todo], all_[todo] = True, False
                elif len(todo):
                    any_[todo], all_[todo] = _resolve_tokens(mdef.body, q_tokens[qt[todo]],
                                                             k_tokens[kt[todo]], n, an,
                                                             evaluate)
                    stats["resolved"] += len(todo)
            full, part = any_ & all_, any_ & ~all_
            zeros = np.zeros(int(part.sum()), dtype=np.int64)
            cells.append((_csr(qt[part], kt[part], nq, zeros),
                          _csr(qt[full], kt[full], nq, None),
                          _csr(qt[part], kt[part], nq, zeros - 1)[2]))  # every term live
        rows.append(cells)
    kv_num, kv_idx, full_num, full_idx, var, live = _stack(rows)
    G = len(rows[0])
    head_group = np.arange(heads) if per_head else np.zeros(heads, dtype=np.int64)
    stats.update({"tiles": batch * G * nq * nk, "full": int(full_num.sum()),
                  "partial": int(kv_num.sum()), "candidates": len(qt) * G * batch})
    return BlockMap(n, n, heads, block, block_k, head_group.astype(np.int32), kv_num, kv_idx,
                    full_num, full_idx, var, (mdef.body,), stats, live)


def _classify_layout_tiles(body, layout, block_q, block_k, qt, kt):
    """``(full, empty)`` of the candidate tiles ``(qt, kt)`` of a bare ``neighborhood`` or
    ``tile`` mask: each layout tile is a union of boxes (:mod:`maskc.analysis.gridboxes`)."""
    tables = axis_tables(body, tuple(layout.grid_shape))
    q_lo, q_hi = layout_boxes(layout, block_q)
    k_lo, k_hi = layout_boxes(layout, block_k)
    full, empty = np.empty(len(qt), bool), np.empty(len(qt), bool)
    step = max(1, _CHUNK // (q_lo.shape[1] * k_lo.shape[1]))
    for s in range(0, len(qt), step):
        q, k = qt[s:s + step], kt[s:s + step]
        full[s:s + step], empty[s:s + step] = classify_boxes(tables, (q_lo[q], q_hi[q]),
                                                             (k_lo[k], k_hi[k]))
    return full, empty


def _token_states(node, q_tokens, k_tokens, qt, kt, layout, block_q, block_k, an, static):
    """States of the candidate tiles ``(qt, kt)`` (``R`` where undecided) of a mask made of
    tile-shaped blocks, neighborhoods and tiles with ``&``, ``|`` and ``~``, from the grid
    tiles and boxes of each tile's tokens; ``None`` for any other mask."""
    shape = tuple(layout.grid_shape)
    if isinstance(node, ir.Const):
        return np.full(len(qt), F if node.keep else E, dtype=np.int8)
    if isinstance(node, ir.TileBlocks):
        tq = static.get(("tiles", node.shape, block_q))
        if tq is None:
            tq = static[("tiles", node.shape, block_q)] = tiles_of_tokens(q_tokens, shape,
                                                                            node.shape)
        tk = static.get(("tiles", node.shape, block_k))
        if tk is None:
            tk = static[("tiles", node.shape, block_k)] = tiles_of_tokens(k_tokens, shape,
                                                                            node.shape)
        if tq.shape[1] * tk.shape[1] > MAX_PAIRS:
            return None
        out = np.empty(len(qt), dtype=np.int8)
        step = max(1, _CHUNK // (tq.shape[1] * tk.shape[1]))
        for s in range(0, len(qt), step):
            sl = slice(s, s + step)
            out[sl] = pair_states(node, tq[qt[sl]], tk[kt[sl]], an.head, an)
        return out
    if isinstance(node, (ir.Neighborhood, ir.Tile)):
        if max(shape) > AXIS_TABLE_LIMIT:
            return None
        if node not in static:
            full, empty = _classify_layout_tiles(node, layout, block_q, block_k, qt, kt)
            static[node] = from_bounds(full, empty)
        return static[node]
    if isinstance(node, (ir.And, ir.Or, ir.Not)):
        terms = [node.body] if isinstance(node, ir.Not) else node.terms
        parts = [_token_states(t, q_tokens, k_tokens, qt, kt, layout, block_q, block_k, an,
                               static) for t in terms]
        if any(p is None for p in parts):
            return None
        return (not_states(parts[0]) if isinstance(node, ir.Not) else
                and_states(parts) if isinstance(node, ir.And) else or_states(parts))
    return None


def _resolve_tokens(body, q_tokens, k_tokens, n, an, evaluate):
    """``(any, all)`` per candidate tile whose rows/cols are the given original tokens."""
    rects = Rects(q_tokens, q_tokens, k_tokens, k_tokens, q_tokens, q_tokens, n, n, n, an.head,
                  an.grid)
    return _resolve(body, rects, an, evaluate, explicit=True)


def visited_tiles(bm: BlockMap) -> tuple[int, int]:
    """``(visited, partial)`` tiles of a block map, for comparing layouts."""
    return bm.stats["full"] + bm.stats["partial"], bm.stats["partial"]


def tiled_layout(mdef: ir.MaskDef, tokens_per_tile: int) -> TokenLayout:
    """The tile-major layout of ``mdef``'s grid, tiles of ``tokens_per_tile`` tokens shaped
    like its tile-shaped blocks (so that a kernel tile holds whole grid tiles, or lies in
    one), else like its neighborhood's kernel (balanced when it has neither)."""
    from maskc.passes.layout import choose_tile_shape, make_layout
    kernel = next((n.shape for n in ir.walk(mdef.body) if isinstance(n, ir.TileBlocks)), None)
    kernel = kernel or next((n.kernel for n in ir.walk(mdef.body)
                             if isinstance(n, ir.Neighborhood)), None)
    shape = mdef.grid.shape
    return make_layout(shape, choose_tile_shape(shape, tokens_per_tile, kernel))


# A tiled layout must visit at most this fraction of row-major's tiles: reordering q, k, v
# and the output costs a few memory passes (measured on an H100, bench/README.md).
LAYOUT_GAIN = 0.8


def row_major_visits(mdef: ir.MaskDef, block_q: int, block_k: int, heads: int = 1,
                     evaluate=None, sample: int = 64, **inputs) -> float:
    """Tiles row-major order would visit, estimated on ``sample`` query tiles spread evenly."""
    from maskc.analysis.blocktable import build
    nq = -(-mdef.grid.numel // block_q)
    rows = np.unique(np.linspace(0, nq - 1, min(nq, sample)).astype(np.int64))
    bm = build(mdef, None, None, heads, block_q, block_k, evaluate=evaluate, q_tiles=rows,
               **inputs)
    return (bm.stats["full"] + bm.stats["partial"]) * nq / len(rows)


def choose_layout(mdef: ir.MaskDef, block_q: int, block_k: int | None = None, how: str = "auto",
                  heads: int = 1, evaluate=None, **inputs):
    """The token order the kernels run in (the pipeline's one layout rule).

    Requires: ``how`` is ``"auto"``, ``"row-major"`` or ``"tiled"``. Guarantees:
    ``(layout, block_map)``; ``(None, None)`` for row-major order (always for a mask without
    a grid); otherwise the tile-major :func:`tiled_layout` for tiles of ``max(block_q,
    block_k)`` tokens and its exact permuted block map. With ``"auto"`` the layout is taken
    only when it visits at most :data:`LAYOUT_GAIN` of the tiles that row-major order would
    (estimated on a sample of query tiles), as small kernels on narrow grids often favour
    row-major order.
    """
    if how not in ("auto", "row-major", "tiled"):
        from maskc.errors import MaskError
        raise MaskError(f"layout must be 'auto', 'row-major' or 'tiled', got {how!r}")
    block_k = block_q if block_k is None else block_k
    if mdef.grid is None or how == "row-major":
        return None, None
    n = mdef.grid.numel
    if how == "auto" and -(-n // block_q) * -(-n // block_k) > dense_limit():
        return None, None  # NOTE: too many tile pairs to analyse a permutation: row-major
    layout = tiled_layout(mdef, max(block_q, block_k))
    permuted = permuted_block_map(mdef, layout, block_q, heads, evaluate, block_k=block_k,
                                  **inputs)
    if how == "auto" and visited_tiles(permuted)[0] >= LAYOUT_GAIN * row_major_visits(
            mdef, block_q, block_k, heads, evaluate, **inputs):
        return None, None
    return layout, permuted
