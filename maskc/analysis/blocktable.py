"""The block IR: per head group and query tile, the key tiles to visit, full and partial.

:func:`build` runs block analysis (:mod:`maskc.analysis.blockmap`) for one size and returns a
:class:`BlockMap`, the table every backend lowers from: FlexAttention-style
``kv_num_blocks``/``kv_indices`` for partial tiles and ``full_*`` for full tiles, plus, per
partial tile, the index of its *live predicate* (the mask reduced to the terms that can
still change the answer inside that tile).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from maskc import ir
from maskc.analysis.blockmap import E, F, P, R, U, Analysis, Rects, classify, support, uses_head
from maskc.analysis.gridboxes import AXIS_TABLE_LIMIT
from maskc.passes.bind import check_tables
from maskc.analysis.sizes import (check_elements, dense_limit, check_heads, check_tiles, prepare_inputs,
                    resolve_lengths)

__all__ = ["BlockMap", "build", "build_sequences", "batchable", "live_predicate"]

_RESOLVE_CHUNK = 1 << 22  # elements evaluated at once when resolving tiles densely
RESOLVE_MAX_AREA = 1 << 22  # larger tiles are never evaluated element by element


@dataclass(frozen=True, eq=False)
class BlockMap:
    """Tile tables of one mask at one size. Arrays are ``(B, G, n_q_tiles[, width])`` int32.

    ``head_group[h]`` is the table row ``G`` of head ``h``. Entries past a row's count are
    padding (-1). ``variant[b, g, i, j]`` indexes ``variants``, the live predicate of
    partial tile ``kv_indices[b, g, i, j]``.
    """

    q_len: int
    kv_len: int
    heads: int
    block_q: int
    block_k: int
    head_group: np.ndarray
    kv_num_blocks: np.ndarray
    kv_indices: np.ndarray
    full_kv_num_blocks: np.ndarray
    full_kv_indices: np.ndarray
    variant: np.ndarray
    variants: tuple[ir.Node, ...]
    stats: dict = field(default_factory=dict)
    live: np.ndarray | None = None  # per partial tile: bit i = top-level term i is live

    @property
    def n_q_tiles(self) -> int:
        return -(-self.q_len // self.block_q)

    @property
    def n_k_tiles(self) -> int:
        return -(-self.kv_len // self.block_k)

    def transposed(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per key tile, the query tiles visiting it: ``(part_num, part_idx, full_num, full_idx)``.

        Shapes ``(B, G, n_k_tiles[, width])``, the layout of the forward tables with the roles
        of queries and keys swapped (what a backward pass over key tiles walks).
        """
        B, G, nq = self.kv_num_blocks.shape
        nk = self.n_k_tiles
        out = []
        for num, idx in ((self.kv_num_blocks, self.kv_indices),
                         (self.full_kv_num_blocks, self.full_kv_indices)):
            cells = []
            for b in range(B):
                for g in range(G):
                    qt = np.repeat(np.arange(nq), num[b, g])
                    kt = np.concatenate([idx[b, g, i, :num[b, g, i]] for i in range(nq)]) \
                        if nq else np.zeros(0, dtype=np.int64)
                    counts, table, _ = _csr(kt.astype(np.int64), qt, nk, None)
                    cells.append((counts, table))
            width = max(t.shape[1] for _, t in cells)
            counts = np.stack([c for c, _ in cells]).reshape(B, G, nk)
            tables = np.stack([np.pad(t, ((0, 0), (0, width - t.shape[1])), constant_values=-1)
                               for _, t in cells]).reshape(B, G, nk, width)
            out += [counts, tables]
        return out[0], out[1], out[2], out[3]

    def states(self) -> np.ndarray:
        """Dense ``(B, H, n_q_tiles, n_k_tiles)`` int8 of 0 empty / 1 partial / 2 full (for tests)."""
        B, G, nq = self.kv_num_blocks.shape
        nk = self.n_k_tiles
        check_elements(B * self.heads * nq * nk, "the tile states")
        out = np.zeros((B, G, nq, nk + 1), dtype=np.int8)  # column nk takes the padding
        b, g, i = np.ix_(range(B), range(G), range(nq))
        for idx, state in ((self.kv_indices, P), (self.full_kv_indices, F)):
            out[b[..., None], g[..., None], i[..., None], np.where(idx < 0, nk, idx)] = state
        return out[:, self.head_group, :, :nk]


def _tile_rects(qt, kt, q_len, kv_len, bq, bk, head, grid, offsets=None) -> Rects:
    """The tiles' position ranges: query ``q`` at ``q + q_offset``, key ``k`` at
    ``k + kv_offset`` (``offsets``; by default ``kv_len - q_len`` and 0)."""
    off, ko = offsets if offsets is not None else (kv_len - q_len, 0)
    q_lo = qt.astype(np.int64) * bq
    q_hi = np.minimum(q_lo + bq, q_len) - 1
    k_lo = kt.astype(np.int64) * bk
    k_hi = np.minimum(k_lo + bk, kv_len) - 1
    return Rects(q_lo + off, q_hi + off, k_lo + ko, k_hi + ko, q_lo, q_hi,
                 q_len, kv_len, kv_len, head, grid)


_SUPPORT_CHUNK = 1 << 14  # query tiles whose supports are computed at once


def _candidates(body, q_len, kv_len, bq, bk, an, q_tiles=None, span=None, offsets=None):
    nq, nk = -(-q_len // bq), -(-kv_len // bk)
    qt_all = np.arange(nq, dtype=np.int64) if q_tiles is None else \
        np.asarray(q_tiles, dtype=np.int64)
    off, ko = offsets if offsets is not None else (kv_len - q_len, 0)
    # NOTE: supports a chunk of query tiles at a time (a grid's support looks at every query
    # of a tile), counting candidates as they come: memory stays bounded, and too many
    # candidates are refused once the count passes the limit, not after all of them.
    step = _SUPPORT_CHUNK if q_tiles is None else max(len(qt_all), 1)  # a sample: as given
    if an.grid is not None and q_tiles is None and nq > 8 * step:
        _refuse_early(body, nq, kv_len, bq, bk, off, q_len, an, step, span)
    work = _work_per_tile(an, bq)
    total, ranges = 0, []
    for c in range(0, max(len(qt_all), 1), step):
        qt = qt_all[c:c + step]
        p_lo = qt * bq + off
        p_hi = np.minimum(qt * bq + bq, q_len) - 1 + off
        chunk = []
        for lo, hi in support(body, p_lo, p_hi, kv_len, an):
            # key positions -> key rows (a key offset shifts them)
            lo = np.broadcast_to(np.maximum(lo - ko, 0), qt.shape)
            hi = np.broadcast_to(np.minimum(hi - ko, kv_len - 1), qt.shape)
            ok = lo <= hi
            t0 = lo[ok] // bk
            counts = hi[ok] // bk - t0 + 1
            total += int(counts.sum())
            check_elements(total * work, f"the block analysis ({bq} x {bk} tiles; "
                           f"{_advice(work)})", span)
            chunk.append((qt[ok], t0, counts))
        ranges.append(chunk)
    pieces = []
    for chunk in ranges:  # every count is in: now the candidates themselves
        codes = []
        for rows, t0, counts in chunk:
            starts = np.repeat(t0 - np.cumsum(counts) + counts, counts)
            codes.append(np.repeat(rows, counts) * nk + np.arange(counts.sum()) + starts)
        pieces.append(_sorted_unique(codes))  # chunks hold increasing, disjoint rows
    code = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
    return (code // nk).astype(np.int32), (code % nk).astype(np.int32)  # nq, nk < 2**24


def _refuse_early(body, nq, kv_len, bq, bk, off, q_len, an, sample, span) -> None:
    """A grid's support looks at every query, so counting a huge grid's candidates takes
    seconds before the count passes the limit: estimate it first on ``sample`` query tiles
    spread evenly, and refuse at once when the estimate is over twice the limit. (Supports
    of neighborhoods and tiles are nearly the same for every query tile, so the estimate is
    close; the exact count below still decides every other case.)"""
    qt = np.unique(np.linspace(0, nq - 1, sample).astype(np.int64))
    p_lo = qt * bq + off
    p_hi = np.minimum(qt * bq + bq, q_len) - 1 + off
    count = 0
    for lo, hi in support(body, p_lo, p_hi, kv_len, an):
        lo = np.broadcast_to(np.maximum(lo, 0), qt.shape)
        hi = np.broadcast_to(np.minimum(hi, kv_len - 1), qt.shape)
        ok = lo <= hi
        count += int((hi[ok] // bk - lo[ok] // bk + 1).sum())
    work = _work_per_tile(an, bq)
    estimate = count * nq // len(qt) * work
    if estimate > 2 * dense_limit():
        check_elements(estimate, f"the block analysis ({bq} x {bk} tiles; {_advice(work)}; "
                       f"estimated from {len(qt):,} query tiles)", span)


def _work_per_tile(an, bq: int) -> int:
    """Elements the analysis of one candidate tile works on: 1, or, when a grid axis is too
    long for prefix tables, its queries times :data:`_COUNT_COST` (each query's keys are
    counted axis by axis: about 100 ns per query of a tile on one core, so the dense limit
    stands for about 3 s of counting)."""
    if an.grid is not None and max(an.grid.shape) > AXIS_TABLE_LIMIT:
        return bq * _COUNT_COST
    return 1


_COUNT_COST = 8  # elements of work one counted query stands for


def _advice(work: int) -> str:
    if work == 1:
        return "use larger tiles"
    return (f"each query of a candidate tile is counted, as a grid axis is longer than "
            f"{AXIS_TABLE_LIMIT:,}: use larger key tiles (block_k) or a smaller grid")


def _sorted_unique(codes: list) -> np.ndarray:
    """The sorted distinct values of the arrays in ``codes`` (each already sorted)."""
    if not codes:
        return np.zeros(0, dtype=np.int64)
    if len(codes) == 1:  # one support range per query tile: sorted, no repeats
        return codes[0]
    # NOTE: a plain sort and a neighbour test: np.unique's hash path is several times
    # slower on millions of codes
    code = np.sort(np.concatenate(codes), kind="stable")
    return code[np.concatenate(([True], code[1:] != code[:-1]))] if len(code) else code


def _resolve(node, rects: Rects, an: Analysis, evaluate,
             explicit: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(any, all)`` per tile, by evaluating only these tiles element by element.

    With ``explicit``, ``rects.p_lo``/``q_lo``/``k_lo`` hold each tile's positions, shape
    ``(tiles, width)``, instead of ranges (tiles of a permuted token layout).
    """
    if explicit:
        wq, wk = rects.p_lo.shape[1], rects.k_lo.shape[1]
    else:
        wq = int((rects.p_hi - rects.p_lo).max(initial=0)) + 1
        wk = int((rects.k_hi - rects.k_lo).max(initial=0)) + 1
    n = len(rects.p_lo)
    any_, all_ = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    step = max(1, _RESOLVE_CHUNK // (wq * wk))
    inputs = {k: v[None, :] for k, v in an.inputs.items()}
    # NOTE: what the evaluator derives from the inputs (within()'s runs: 14 ms per slice at
    # 1M keys, 127 slices for packed documents) is built once, when the lengths are one pair
    shared = {} if np.ndim(rects.Lq) == 0 and np.ndim(rects.Lk) == 0 else None
    for s in range(0, n, step):
        sl = slice(s, s + step)
        if explicit:
            P_, Q_, K_ = rects.p_lo[sl], rects.q_lo[sl], rects.k_lo[sl]
        else:
            # NOTE: rows/cols past a tail tile's end repeat its last one: all()/any() hold.
            P_ = np.minimum(rects.p_lo[sl, None] + np.arange(wq), rects.p_hi[sl, None])
            Q_ = np.minimum(rects.q_lo[sl, None] + np.arange(wq), rects.q_hi[sl, None])
            K_ = np.minimum(rects.k_lo[sl, None] + np.arange(wk), rects.k_hi[sl, None])
        # NOTE: lengths per tile (tiles of many sequences) broadcast over its elements
        Lq_, Lk_ = (x[sl].reshape(-1, 1, 1, 1) if np.ndim(x) else x
                    for x in (rects.Lq, rects.Lk))
        m = evaluate(node, P=P_[:, None, :, None], Q=Q_[:, None, :, None],
                     K=K_[:, None, None, :], Hh=np.full((1, 1, 1, 1), an.head),
                     Lq=Lq_, Lk=Lk_, inputs=inputs, grid=an.grid, K0=an.k0, cache=shared)
        m = np.broadcast_to(m, (len(P_), 1, wq, wk))
        any_[sl], all_[sl] = m.any(axis=(1, 2, 3)), m.all(axis=(1, 2, 3))
    return any_, all_


def live_predicate(node: ir.Node, path: tuple, state: dict, head: int) -> ir.Node:
    """``node`` without the terms that cannot change the answer in a tile (``state``: path -> state)."""
    if isinstance(node, (ir.And, ir.Or)):
        drop = F if isinstance(node, ir.And) else E
        decided = E if isinstance(node, ir.And) else F
        terms = []
        for i, t in enumerate(node.terms):
            s = state.get(path + (i,), P)
            if s == decided:
                return ir.Const(isinstance(node, ir.Or))
            if s != drop:
                terms.append(live_predicate(t, path + (i,), state, head))
        if not terms:
            return ir.Const(isinstance(node, ir.And))
        return (ir.and_ if isinstance(node, ir.And) else ir.or_)(*terms)
    if isinstance(node, ir.Not):
        return ir.Not(live_predicate(node.body, path + (0,), state, head))
    if isinstance(node, ir.Heads):
        for i, arm in enumerate(node.arms):
            if arm.heads is None or head in arm.heads:
                return live_predicate(arm.body, path + (i,), state, head)
    if isinstance(node, ir.Blocks):
        return ir.Blocks(node.size, live_predicate(node.body, path + (0,), state, head))
    return node


def head_patterns(mdef: ir.MaskDef, heads: int, chosen_per_head: bool = True) -> np.ndarray:
    """Per head, the id of its pattern: heads whose mask (the arms of ``heads { ... }``
    resolved for them) is the same IR get one id, numbered by their first head. A mask that
    reads ``h`` in ``where``, or whose ``heads`` cannot be resolved outside ``within``, has
    one id per head. Heads of one pattern have equal masks, so equal tables at any size."""
    reads_h = any((isinstance(n, ir.PVar) and n.name == "h") or
                  (chosen_per_head and isinstance(n, (ir.Select, ir.Keys, ir.Diagonals)))
                  for n in ir.walk(mdef.body))
    if reads_h:
        return np.arange(heads, dtype=np.int32)
    seen: dict = {}
    out = np.zeros(heads, dtype=np.int32)
    for h in range(heads):
        node = live_predicate(mdef.body, (), {}, h)
        if any(isinstance(n, ir.Heads) for n in ir.walk(node)):  # e.g. inside within(...)
            node = ("head", h)
        out[h] = seen.setdefault(node, len(seen))
    return out


def build(mdef: ir.MaskDef, q_len=None, kv_len=None, heads: int = 1, block_q: int = 128,
          block_k: int | None = None, evaluate=None, q_tiles=None, offsets=None,
          **inputs) -> BlockMap:
    """Classify every tile of ``mdef`` at this size; see :class:`BlockMap`.

    ``evaluate`` (the reference evaluator) resolves tiles that composition leaves undecided;
    without it they stay partial (sound, not exact); so do tiles over ``RESOLVE_MAX_AREA``
    elements. ``q_tiles`` restricts the analysis to some query tiles, for cost estimates on
    a sample: the tables then have one row per sampled tile. ``offsets`` = ``(q_offset,
    kv_offset)`` puts query ``q`` at position ``q + q_offset`` and key ``k`` at ``k +
    kv_offset`` (docs/language.md section 13; the default is ``(kv_len - q_len, 0)``).
    """
    q_len, kv_len = resolve_lengths(mdef, q_len, kv_len)
    block_k = block_q if block_k is None else block_k
    heads = check_heads(mdef, heads)
    block_q, block_k = check_tiles(mdef, q_len, kv_len, block_q, block_k)  # ints from here
    xs = prepare_inputs(mdef, kv_len, inputs, heads=heads)
    # NOTE: a random() table over the limit fails here as in bind, before any candidate
    check_tables(mdef, q_len, kv_len, heads)
    batch = max([x.shape[0] for x in xs.values()] or [1])
    per_head = uses_head(mdef.body)
    # NOTE: heads of one pattern have one mask: analyse the first head of each pattern once
    # NOTE: selections with one row for all heads (Hx = 1) are the same for every head
    chosen_vary = any(xs[n.input].shape[1] > 1 for n in ir.walk(mdef.body)
                      if isinstance(n, (ir.Select, ir.Keys, ir.Diagonals)))
    pattern = head_patterns(mdef, heads, chosen_vary) if per_head else \
        np.zeros(heads, dtype=np.int32)
    analysed = [int(np.flatnonzero(pattern == g)[0]) for g in range(int(pattern.max()) + 1)]
    nq = -(-q_len // block_q)
    if offsets is not None:
        offsets = (int(offsets[0]), int(offsets[1]))
    # NOTE: keys at other positions than 0..kv_len-1: supports stop bounding "every key" by
    # kv_len (they may keep keys at any position; the rows clip them)
    shifted = offsets is not None and offsets != (kv_len - q_len, 0)
    rows: list[list] = []
    variants: dict[ir.Node, int] = {}
    stats = {"tiles": 0, "full": 0, "partial": 0, "unproven": 0, "resolved": 0,
             "candidates": 0}
    for b in range(batch):
        row = []
        for h in analysed:
            an = Analysis(mdef.grid, {k: v[min(b, v.shape[0] - 1)] for k, v in xs.items()}, h,
                          trace={}, shifted=shifted,
                          k0=offsets[1] if offsets is not None else 0)
            qt, kt = _candidates(mdef.body, q_len, kv_len, block_q, block_k, an, q_tiles,
                                 mdef.span, offsets)
            stats["candidates"] += len(qt)
            pieces = []
            # NOTE: candidates come sorted by (query tile, key tile); a slice at a time keeps
            # the working memory (tile ranges, states, traces) bounded whatever their number
            for s in range(0, max(len(qt), 1), _BUILD_CHUNK):
                pieces.append(_classify_slice(mdef, qt[s:s + _BUILD_CHUNK],
                                              kt[s:s + _BUILD_CHUNK], q_len, kv_len, block_q,
                                              block_k, h, an, evaluate, q_tiles, variants,
                                              stats, offsets))
            row.append(_tables(pieces, nq if q_tiles is None else len(q_tiles)))
        rows.append(row)
    *tables, live = _stack(rows)
    rows_of = pattern if per_head else np.zeros(1, dtype=np.int32)  # a row per head (or one)
    stats["tiles"] = batch * len(rows_of) * nq * (-(-kv_len // block_k))
    stats["full"] = int(tables[2][:, rows_of].sum())
    stats["partial"] = int(tables[0][:, rows_of].sum())
    return BlockMap(q_len, kv_len, heads, block_q, block_k, pattern,
                    *tables, tuple(variants), stats, live)


_BUILD_CHUNK = 1 << 22  # candidate tiles classified at once


def _classify_slice(mdef, qt, kt, q_len, kv_len, block_q, block_k, h, an, evaluate, q_tiles,
                    variants, stats, offsets=None):
    """States of some candidate tiles, as ``(partial (qt, kt, variant, live bits), full
    (qt, kt))``, each sorted as the candidates are."""
    an.trace = {}
    rects = _tile_rects(qt, kt, q_len, kv_len, block_q, block_k, h, mdef.grid, offsets)
    st = classify(mdef.body, rects, an).copy()
    del rects
    part, full, var, live = _settle(
        mdef, st, lambda todo: _tile_rects(qt[todo], kt[todo], q_len, kv_len, block_q,
                                           block_k, h, mdef.grid, offsets),
        block_q * block_k, h, an, evaluate, variants, stats)
    if q_tiles is not None:  # rows of the sample, renumbered
        qt = np.searchsorted(np.asarray(q_tiles), qt)
    return (qt[part], kt[part], var, live), (qt[full], kt[full])


def _settle(mdef, st, rects_of, area: int, h: int, an: Analysis, evaluate, variants: dict,
            stats: dict):
    """Classified tiles ``st`` (changed in place) settled: undecided ones resolved element by
    element (``rects_of(todo)``: their ranges), unproven ones partial, and each partial tile
    given its live predicate (an index into ``variants``) and live bits: ``(part, full,
    variant, live)``."""
    # NOTE: a tile too large to evaluate stays partial (sound): only `show` at huge
    # sizes draws such tiles; kernels use tiles of at most 128 x 128.
    todo = np.flatnonzero(st == R) if area <= RESOLVE_MAX_AREA else []
    if len(todo) and evaluate is not None:
        any_, all_ = _resolve(mdef.body, rects_of(todo), an, evaluate)
        st[todo] = np.where(~any_, E, np.where(all_, F, P))
        stats["resolved"] += len(todo)
    unproven = np.isin(st, (U, R))
    stats["unproven"] += int(unproven.sum())
    st[unproven] = P
    part, full = st == P, st == F
    trace, body = an.trace, mdef.body
    paths = sorted(trace)
    sig = np.stack([trace[p][part] for p in paths], axis=1) if paths else np.zeros((0, 0))
    n = int(part.sum())
    var = np.zeros(n, dtype=np.int64)
    if n:
        uniq, inv = _distinct_rows(sig)
        ids = [variants.setdefault(live_predicate(body, (), dict(zip(paths, u.tolist())), h),
                                   len(variants)) for u in uniq]
        var = np.asarray(ids, dtype=np.int64)[inv]
    return part, full, var, _live_bits(body, paths, sig, n)


def _distinct_rows(sig: np.ndarray):
    """The distinct rows of small non-negative ints ``sig`` and each row's index among them."""
    bits = 3  # tile states are below 8
    if sig.shape[1] * bits <= 21:  # a code per row, counted: no sort
        code = np.zeros(len(sig), dtype=np.int64)
        for c in range(sig.shape[1]):
            code |= sig[:, c].astype(np.int64) << (bits * c)
        present = np.flatnonzero(np.bincount(code))
        rank = np.zeros(int(present[-1]) + 1, dtype=np.int64)
        rank[present] = np.arange(len(present))
        uniq = (present[:, None] >> (bits * np.arange(sig.shape[1]))) & ((1 << bits) - 1)
        return uniq.astype(sig.dtype), rank[code]
    uniq, inv = np.unique(sig, axis=0, return_inverse=True)
    return uniq, inv.reshape(-1)


def _tables(pieces, nq):
    """Per query tile: partial and full key tiles (sorted) and the variant and live bits of
    each partial tile, from the slices :func:`_classify_slice` returned."""
    def cat(arrs):
        return arrs[0] if len(arrs) == 1 else np.concatenate(arrs)
    pq, pk, var, live = (cat([p[0][i] for p in pieces]) for i in range(4))
    fq, fk = (cat([p[1][i] for p in pieces]) for i in range(2))
    num, idx, (vals, bits) = _csr_many(pq, pk, nq, (var, live))
    f_num, f_idx, (f_none,) = _csr_many(fq, fk, nq, (None,))
    return (num, idx, vals), (f_num, f_idx, f_none), bits


def _live_bits(body, paths, sig, n) -> np.ndarray:
    """Per partial tile, bit ``i`` set when top-level term ``i`` of an ``&``/``|`` is live.

    A term is dead in a tile when it cannot change the result there: full under ``&``,
    empty under ``|``. Kernels skip dead terms. Anything else has the single bit 1.
    """
    if not isinstance(body, (ir.And, ir.Or)) or n == 0 or len(body.terms) > 30:
        return np.ones(n, dtype=np.int64)
    dead = F if isinstance(body, ir.And) else E
    bits = np.zeros(n, dtype=np.int64)
    for i in range(len(body.terms)):
        col = paths.index((i,)) if (i,) in paths else None
        alive = np.ones(n, dtype=bool) if col is None else sig[:, col] != dead
        bits |= alive.astype(np.int64) << i
    return bits


def _csr(qt, kt, nq, values):
    """``(counts, idx, val)``: per query tile its key tiles ``idx`` (ascending, padded with
    -1) and ``values`` (one per tile; ``None``: all -1) laid out alike."""
    counts, idx, (val,) = _csr_many(qt, kt, nq, (values,))
    return counts, idx, val


def _csr_many(qt, kt, nq, values: tuple):
    """:func:`_csr` with several value arrays (``None`` for one of all -1), sorted once."""
    counts = np.bincount(qt, minlength=nq)
    width = int(counts.max(initial=0))
    check_elements(nq * width, "the block tables (query tiles x most key tiles in a row)")
    if len(qt) > 1:  # the build's tiles come sorted by (query tile, key tile): check it
        dq = np.diff(qt)
        if not ((dq > 0) | ((dq == 0) & (np.diff(kt) > 0))).all():
            order = np.lexsort((kt, qt))
            qt, kt = qt[order], kt[order]
            values = tuple(None if v is None else v[order] for v in values)
    # NOTE: sorted by row, the tiles fill the table's leading cells row by row: one masked
    # assignment in row-major order (no per-tile row and column index arrays; 33M tiles at 1M
    # tokens, causal)
    lead = np.arange(max(width, 1), dtype=np.int32) < counts[:, None]
    out = []
    for arr in (kt, *values):
        t = np.full((nq, max(width, 1)), -1, dtype=np.int32)
        if arr is not None:
            t[lead] = arr
        out.append(t)
    return counts.astype(np.int32), out[0], tuple(out[1:])


def _stack(rows):
    """Stack per-(batch, head) CSR tables into padded ``(B, G, nq, width)`` arrays.

    ``rows[b][g]`` is ``(partial CSR, full CSR, live bits)`` as :func:`_tables` returns it.
    """
    B, G = len(rows), len(rows[0])
    cells = [cell for row in rows for cell in row]

    def stacked(arrs):
        w = max(a.shape[-1] for a in arrs)
        out = np.stack([np.pad(a, ((0, 0), (0, w - a.shape[-1])), constant_values=-1)
                        for a in arrs])
        return out.reshape(B, G, *out.shape[1:])

    kv_num = np.stack([c[0][0] for c in cells]).reshape(B, G, -1)
    full_num = np.stack([c[1][0] for c in cells]).reshape(B, G, -1)
    return (kv_num, stacked([c[0][1] for c in cells]), full_num,
            stacked([c[1][1] for c in cells]), stacked([c[0][2] for c in cells]),
            stacked([c[2] for c in cells]))


def batchable(mdef: ir.MaskDef) -> bool:
    """Whether :func:`build_sequences` analyses ``mdef`` (no runtime input, no random
    blocks, no grid: nothing whose meaning depends on one sequence's data or size)."""
    return mdef.grid is None and not mdef.inputs and not any(
        isinstance(n, (ir.Random, ir.Layout)) for n in ir.walk(mdef.body))


def build_sequences(mdef: ir.MaskDef, rows, heads: int, block_q: int, block_k: int,
                    evaluate=None, n_q_tiles: int | None = None) -> BlockMap:
    """The tables of many sequences in one vectorized pass: batch row ``b`` is the block
    analysis of sequence ``b`` alone, ``rows[b] = (q_len, kv_len, q_offset, kv_offset)``
    (``build(mdef, q_len, kv_len, ..., offsets=(q_offset, kv_offset))`` for each, equal
    tables), padded to ``n_q_tiles`` query tiles. Every sequence's tiles are classified
    together, with the lengths per tile, so the cost is that of their visited tiles, not of
    one analysis per sequence. Only for :func:`batchable` masks."""
    heads = check_heads(mdef, heads)
    rows = np.asarray(rows, dtype=np.int64).reshape(-1, 4)
    B = len(rows)
    lq, lk, qo, ko = rows.T
    nq_b = np.where(lk > 0, -(-lq // block_q), 0)
    NQ = int(nq_b.max(initial=0)) if n_q_tiles is None else n_q_tiles
    per_head = uses_head(mdef.body)
    pattern = head_patterns(mdef, heads) if per_head else np.zeros(heads, dtype=np.int32)
    analysed = [int(np.flatnonzero(pattern == g)[0]) for g in range(int(pattern.max()) + 1)]
    # every sequence's query tiles, one list
    seq = np.repeat(np.arange(B), nq_b)
    qt = np.arange(len(seq)) - np.repeat(np.cumsum(nq_b) - nq_b, nq_b)
    q_lo = qt * block_q
    q_hi = np.minimum(q_lo + block_q, lq[seq]) - 1
    p_lo, p_hi = q_lo + qo[seq], q_hi + qo[seq]
    nk_max = int((-(-lk // block_k)).max(initial=1)) or 1
    variants: dict[ir.Node, int] = {}
    stats = {"resolved": 0, "unproven": 0}
    cells = []
    for h in analysed:
        an = Analysis(None, {}, h, trace={}, shifted=True)
        total, codes = 0, []
        for lo, hi in support(mdef.body, p_lo, p_hi, int(lk.max(initial=0)), an):
            lo = np.broadcast_to(np.maximum(lo - ko[seq], 0), seq.shape)
            hi = np.broadcast_to(np.minimum(hi - ko[seq], lk[seq] - 1), seq.shape)
            ok = lo <= hi
            t0 = lo[ok] // block_k
            counts = hi[ok] // block_k - t0 + 1
            total += int(counts.sum())
            check_elements(total, f"the block analysis ({block_q} x {block_k} tiles)", mdef.span)
            starts = np.repeat(t0 - np.cumsum(counts) + counts, counts)
            codes.append(np.repeat(np.flatnonzero(ok), counts) * nk_max +
                         np.arange(counts.sum()) + starts)
        code = _sorted_unique(codes) if codes else np.zeros(0, dtype=np.int64)
        r, kt = code // nk_max, code % nk_max
        s = seq[r]
        k_lo = kt * block_k
        rects = Rects(p_lo[r], p_hi[r], k_lo + ko[s], np.minimum(k_lo + block_k, lk[s]) - 1 + ko[s],
                      q_lo[r], q_hi[r], lq[s], lk[s], lk[s], h, None)
        an.trace = {}
        st = classify(mdef.body, rects, an).copy()
        part, full, var, live = _settle(
            mdef, st, lambda todo: Rects(*(getattr(rects, f)[todo] for f in (
                "p_lo", "p_hi", "k_lo", "k_hi", "q_lo", "q_hi", "Lq", "Lk", "Lk_outer")),
                h, None), block_q * block_k, h, an, evaluate, variants, stats)
        row = s * NQ + qt[r]   # (sequence, query tile) -> one table row
        pn, pi, pv = _csr(row[part], kt[part], B * NQ, var)
        fnum, fidx, _ = _csr(row[full], kt[full], B * NQ, None)
        cells.append((pn, pi, pv, _csr(row[part], kt[part], B * NQ, live)[2], fnum, fidx))
    G = len(cells)
    pw = max(c[1].shape[1] for c in cells)
    fw = max(c[5].shape[1] for c in cells)

    def stack(i, width, fill=-1):
        out = np.full((G, B * NQ, width), fill, dtype=np.int32)
        for g, c in enumerate(cells):
            out[g, :, :c[i].shape[1]] = c[i]
        return out.reshape(G, B, NQ, width).transpose(1, 0, 2, 3)

    num = np.stack([c[0] for c in cells]).reshape(G, B, NQ).transpose(1, 0, 2)
    fnum = np.stack([c[4] for c in cells]).reshape(G, B, NQ).transpose(1, 0, 2)
    kv_len = int(lk.max(initial=0))
    return BlockMap(NQ * block_q, max(kv_len, 1), heads, block_q, block_k, pattern,
                    np.ascontiguousarray(num), np.ascontiguousarray(stack(1, pw)),
                    np.ascontiguousarray(fnum), np.ascontiguousarray(stack(5, fw)),
                    np.ascontiguousarray(stack(2, pw)), tuple(variants), {},
                    np.ascontiguousarray(stack(3, pw)))
