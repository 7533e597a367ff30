"""Block analysis: classify every (query tile, key tile) as empty, partial or full from the IR.

No mask is evaluated element by element over the whole ``Lq x Lk`` square. Each node has
a *support* (per query tile, the key positions it may keep: intervals) and a *classifier*
(per candidate tile, vectorized interval reasoning). Named primitives are classified
exactly; ``&``/``|`` of two partial tiles may be anything, so such tiles are resolved by
evaluating only those tiles densely; ``where`` predicates get sound interval arithmetic
(a tile may be called partial when it is really empty or full, never the reverse).
The cost grows with the candidate tiles and ``N / B``, not with ``N**2``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from maskc import ir
from maskc.errors import MaskValueError
from maskc.analysis.intervals import cond_range
from maskc.analysis.rng import random_choice
from maskc.analysis.states import E, F, P, R, U, from_bounds
from maskc.analysis.sizes import check_elements

__all__ = ["E", "P", "F", "U", "R", "Rects", "Analysis", "classify", "support", "uses_head"]



@dataclass
class Rects:
    """A batch of tiles: inclusive ranges of aligned query (p), raw query (q) and key positions."""

    p_lo: np.ndarray
    p_hi: np.ndarray
    k_lo: np.ndarray
    k_hi: np.ndarray
    q_lo: np.ndarray
    q_hi: np.ndarray
    Lq: object
    Lk: object
    Lk_outer: int   # length of the key axis in this position space (blocks: number of blocks)
    h: int = 0      # the head being analysed
    grid: ir.Grid | None = None

    def var(self, name):
        return {"p": (self.p_lo, self.p_hi), "q": (self.q_lo, self.q_hi),
                "k": (self.k_lo, self.k_hi), "Lq": (self.Lq, self.Lq),
                "Lk": (self.Lk, self.Lk), "h": (self.h, self.h)}[name]


@dataclass
class Analysis:
    """What stays fixed while one head of one batch row is analysed."""

    grid: ir.Grid | None
    inputs: dict[str, np.ndarray]   # 1-D int64 arrays of length Lk
    head: int
    trace: dict | None = None       # node path -> states, for live-term reduction
    shifted: bool = False           # offsets put keys outside positions 0..Lk-1
    k0: int = 0                     # the first key's position: inputs are read at rows p - k0
    _cache: dict = field(default_factory=dict)

    def cached(self, key, make):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]


def uses_head(node: ir.Node) -> bool:
    """Whether the node's meaning may depend on the head index (a selection, keys or
    diagonals may list different entries per head)."""
    return any(isinstance(n, (ir.Heads, ir.Select, ir.Keys, ir.Diagonals)) or
               (isinstance(n, ir.PVar) and n.name == "h") for n in ir.walk(node))


_states = from_bounds


# ------------------------------------------------------------------ composition

def and_states(parts: list[np.ndarray]) -> np.ndarray:
    s = np.stack(np.broadcast_arrays(*parts))
    nonfull = s != F
    count = nonfull.sum(0)
    single = np.where(nonfull, s, 0).max(0)
    out = np.where(count == 1, single, np.where((s == U).any(0), U, R))
    out = np.where(count == 0, F, out)
    return np.where((s == E).any(0), E, out).astype(np.int8)


def not_states(s: np.ndarray) -> np.ndarray:
    return np.where(s == E, F, np.where(s == F, E, s)).astype(np.int8)


def or_states(parts: list[np.ndarray]) -> np.ndarray:
    return not_states(and_states([not_states(p) for p in parts]))


# ------------------------------------------------------------------ classifiers

def classify(node: ir.Node, r: Rects, an: Analysis, path: tuple = ()) -> np.ndarray:
    """States (int8, one per tile) of ``node`` on the tiles ``r``."""
    fn = CLASSIFIERS.get(type(node))
    if fn is None:
        raise MaskValueError(f"block analysis does not know {type(node).__name__}", node.span)
    out = np.broadcast_to(fn(node, r, an, path), r.p_lo.shape).astype(np.int8)
    if an.trace is not None:
        an.trace[path] = out
    return out


def _window(n: ir.Window, r, an, path):
    dmin, dmax = r.p_lo - r.k_hi, r.p_hi - r.k_lo
    lo, hi = -n.after * n.dilation, n.before * n.dilation
    if n.dilation == 1:
        return _states((dmin >= lo) & (dmax <= hi), (dmax < lo) | (dmin > hi))
    x0, x1 = np.maximum(dmin, lo), np.minimum(dmax, hi)
    has = (x0 <= x1) & (-((-x0) // n.dilation) * n.dilation <= x1)
    return _states((dmin == dmax) & has, ~has)


def _count_in(s: ir.IntSet, lo, hi):
    """How many elements of ``s`` lie in ``lo..hi`` (inclusive), vectorized."""
    total = np.zeros(np.shape(lo), dtype=np.int64)
    for a, b in s.intervals:
        total += np.maximum(0, np.minimum(hi + 1, b) - np.maximum(lo, a))
    return total


def _global(n: ir.Global, r, an, path):
    cp = _count_in(n.positions, r.p_lo, r.p_hi)
    ck = _count_in(n.positions, r.k_lo, r.k_hi)
    full = (cp == r.p_hi - r.p_lo + 1) | (ck == r.k_hi - r.k_lo + 1)
    return _states(full, (cp == 0) & (ck == 0))


def _chunk(n: ir.Chunk, r, an, path):
    a0, a1, b0, b1 = r.p_lo // n.n, r.p_hi // n.n, r.k_lo // n.n, r.k_hi // n.n
    return _states((a0 == a1) & (b0 == b1) & (a0 == b0), (a1 < b0) | (b1 < a0))


def _strided(n: ir.Strided, r, an, path):
    dmin, dmax = r.p_lo - r.k_hi, r.p_hi - r.k_lo
    has = -((-dmin) // n.s) * n.s <= dmax
    return _states((dmin == dmax) & has | (n.s == 1), ~has)


def _fixed(n: ir.Fixed, r, an, path):
    def count(x):  # keys k < x with k % s >= s - c
        return (x // n.s) * n.c + np.maximum(0, x % n.s - (n.s - n.c))
    kept = count(r.k_hi + 1) - count(r.k_lo)
    return _states(kept == r.k_hi - r.k_lo + 1, kept == 0)


class _Input:
    """Range min/max and run structure of one runtime input, for O(1) tile queries.

    Runs of equal ids are kept as their first positions only (one entry per run, found by
    binary search), so sorted ids cost O(N) time and O(runs) memory; other ids also get a
    sparse table for range min/max, whose ``2 N log2 N`` entries are checked against the
    dense limit before it is built."""

    def __init__(self, x: np.ndarray, name: str = "x", span=None):
        self.x = x
        n = len(x)
        self.monotone = bool(np.all(x[1:] >= x[:-1])) if n > 1 else True
        self.mins, self.maxs = [x], [x]
        if not self.monotone and n > 1:
            levels = int(np.log2(n))
            check_elements(2 * n * levels, f"the range table of input '{name}' (ids that are "
                           "not sorted)", span)
        step = 1
        while not self.monotone and 2 * step <= n:
            a, b = self.mins[-1], self.maxs[-1]
            self.mins.append(np.minimum(a[:-step], a[step:]))
            self.maxs.append(np.maximum(b[:-step], b[step:]))
            step *= 2
        # first position of every run, then n (the end of the last run)
        self.firsts = np.concatenate(([0], np.flatnonzero(x[1:] != x[:-1]) + 1, [n]))

    def start(self, p):
        """The first position of the run of equal ids holding each position ``p``."""
        return self.firsts[np.searchsorted(self.firsts, p, side="right") - 1]

    def end(self, p):
        """The last position of the run holding each position ``p``."""
        return self.firsts[np.searchsorted(self.firsts, p, side="right")] - 1

    def minmax(self, lo, hi):
        if self.monotone:
            return self.x[lo], self.x[hi]
        level = np.floor(np.log2(np.maximum(hi - lo + 1, 1))).astype(np.int64)
        out_min = np.empty(np.shape(lo), dtype=np.int64)
        out_max = np.empty(np.shape(lo), dtype=np.int64)
        for lv in np.unique(level):
            sel = level == lv
            a, b = lo[sel], hi[sel] - (1 << int(lv)) + 1
            out_min[sel] = np.minimum(self.mins[lv][a], self.mins[lv][b])
            out_max[sel] = np.maximum(self.maxs[lv][a], self.maxs[lv][b])
        return out_min, out_max


def _input(an: Analysis, name: str) -> _Input:
    return an.cached(("input", name), lambda: _Input(an.inputs[name], name))


def _same_core(name, r, an):
    """States of same(x), plus whether query rows p < 0 (which keep nothing) exist."""
    xi = _input(an, name)
    L = len(xi.x)
    r = _key_rows(r, an)
    pv = np.clip(np.maximum(r.p_lo, 0), 0, L - 1)
    ph = np.clip(r.p_hi, 0, L - 1)
    none_valid = (r.p_hi < 0) | (r.p_lo >= L)
    some_invalid = (r.p_lo < 0) | (r.p_hi >= L)
    qmin, qmax = xi.minmax(pv, ph)
    kmin, kmax = xi.minmax(r.k_lo, r.k_hi)
    full = (qmin == qmax) & (kmin == kmax) & (qmin == kmin) & ~some_invalid
    empty = none_valid | (qmax < kmin) | (kmax < qmin)
    st = _states(full, empty)
    if not xi.monotone:  # overlapping id ranges need not share an id
        st = np.where(st == P, R, st).astype(np.int8)
    return st


def _key_rows(r, an):
    """``r`` with positions made key rows (``position - k0``), as runtime inputs are read."""
    if an.k0 == 0:
        return r
    k0 = an.k0
    return replace(r, p_lo=r.p_lo - k0, p_hi=r.p_hi - k0, k_lo=r.k_lo - k0, k_hi=r.k_hi - k0)


def _same(n: ir.Same, r, an, path):
    return _same_core(n.input, r, an)


def _within(n: ir.Within, r, an, path):
    xi = _input(an, n.input)
    L = len(xi.x)
    same = _same_core(n.input, r, an)
    r = _key_rows(r, an)
    pv = np.clip(np.maximum(r.p_lo, 0), 0, L - 1)
    ph = np.clip(r.p_hi, 0, L - 1)
    sp, sk = xi.start(pv), xi.start(r.k_lo)
    one_run = (sp == xi.start(ph)) & (sk == xi.start(r.k_hi)) & (r.p_lo >= 0)
    inner = replace(r, p_lo=pv - sp, p_hi=ph - sp, q_lo=pv - sp, q_hi=ph - sp,
                    k_lo=r.k_lo - sk, k_hi=r.k_hi - sk,
                    Lq=xi.end(pv) - sp + 1, Lk=xi.end(r.k_lo) - sk + 1)
    # NOTE: inner states of tiles that straddle segments are meaningless: keep them out of
    # the trace that live-predicate reduction reads.
    saved, an.trace = an.trace, None
    k0, an.k0 = an.k0, 0   # positions inside are rows of a run
    body = classify(n.body, inner, an, path + (0,))
    an.trace, an.k0 = saved, k0
    combined = and_states([same, body])
    return np.where(one_run, combined, np.where(same == E, E, R))


def _heads(n: ir.Heads, r, an, path):
    for i, arm in enumerate(n.arms):
        if arm.heads is None or an.head in arm.heads:
            return classify(arm.body, r, an, path + (i,))
    raise MaskValueError(f"head {an.head} is not covered by any arm of heads {{...}}; add a "
                         "'_: ...' arm", n.span)


def _blocks(n: ir.Blocks, r, an, path):
    B = n.size
    nkb = -(-r.Lk_outer // B)
    pl, ph = r.p_lo // B, r.p_hi // B
    inner = Rects(pl, ph, r.k_lo // B, r.k_hi // B, pl, ph, nkb, nkb, nkb, r.h, r.grid)
    return classify(n.body, inner, an, path + (0,))


def _rect_count(table: np.ndarray, r0, r1, c0, c1):
    """Ones of a 2-D 0/1 table inside rows r0..r1, cols c0..c1 (inclusive; clipped)."""
    rows, cols = table.shape
    S = np.zeros((rows + 1, cols + 1), dtype=np.int64)
    S[1:, 1:] = table.astype(np.int64).cumsum(0).cumsum(1)
    a0, a1 = np.clip(r0, 0, rows), np.clip(r1 + 1, 0, rows)
    b0, b1 = np.clip(c0, 0, cols), np.clip(c1 + 1, 0, cols)
    a1, b1 = np.maximum(a1, a0), np.maximum(b1, b0)
    return S[a1, b1] - S[a0, b1] - S[a1, b0] + S[a0, b0]


def _random_rows(n: ir.Random, nkb: int, first: int, last: int, an: Analysis):
    """``(chosen, base)``: the key blocks of query blocks ``base..``, covering first..last
    (grown as needed and cached, so the support and the classifier share one choice)."""
    have = an._cache.get(("random", n.r, n.seed, nkb))
    if have is not None and have[1] <= first and last < have[1] + len(have[0]):
        return have
    if have is not None:
        first, last = min(first, have[1]), max(last, have[1] + len(have[0]) - 1)
    got = (random_choice(n.seed, np.arange(first, last + 1), nkb, n.r, n.span), first)
    an._cache[("random", n.r, n.seed, nkb)] = got
    return got


def _random(n: ir.Random, r, an, path):
    nkb = r.Lk_outer
    if n.r > nkb:
        raise MaskValueError(f"random({n.r}) needs at least {n.r} key blocks, but there are "
                             f"{nkb}", n.span)
    chosen, base = _random_rows(n, nkb, int(r.p_lo.min(initial=0)), int(r.p_hi.max(initial=0)),
                                an)
    # per tile: the chosen blocks of each of its query blocks that fall in its key range
    width = int((r.p_hi - r.p_lo).max(initial=0)) + 1
    count = np.zeros(r.p_lo.shape, dtype=np.int64)
    step = max(1, (1 << 20) // max(width * n.r, 1))  # random(0) keeps nothing
    for s in range(0, len(r.p_lo), step):
        sl = slice(s, s + step)
        rows = r.p_lo[sl, None] + np.arange(width)
        valid = rows <= r.p_hi[sl, None]
        c = chosen[np.clip(rows - base, 0, len(chosen) - 1)]  # (tiles, width, r)
        hit = (c >= r.k_lo[sl, None, None]) & (c <= r.k_hi[sl, None, None])
        count[sl] = (hit & valid[..., None]).sum(axis=(1, 2))
    area = (r.p_hi - r.p_lo + 1) * (r.k_hi - r.k_lo + 1)
    return _states(count == area, count == 0)


def _chosen(an: Analysis, name: str) -> np.ndarray:
    """The head's rows of a selection ``(NB, r)`` or list ``(r,)``, each sorted with
    repeats made padding (``-1``, at the front), so counts of listed entries are exact."""
    def make():
        x = an.inputs[name]  # this batch entry's (Hx, NB, r) or (Hx, r)
        x = np.sort(x[an.head if x.shape[0] > 1 else 0], axis=-1)
        if x.shape[-1] > 1:
            x[..., 1:][x[..., 1:] == x[..., :-1]] = -1
            x = np.sort(x, axis=-1)
        return x
    return an.cached(("chosen", name), make)


def _select(n: ir.Select, r, an, path):
    chosen = _chosen(an, n.input)  # (NB, r); rects are in block indices here
    nb, k = chosen.shape
    width = int((r.p_hi - r.p_lo).max(initial=0)) + 1
    if width == 1:  # one query block per tile: a search in its sorted row
        m = int(chosen.max(initial=0)) + 2
        code = (np.arange(nb)[:, None] * m + chosen + 1).ravel()  # sorted: rows are
        row = np.clip(r.p_lo, 0, nb - 1) * m
        count = (np.searchsorted(code, row + np.clip(r.k_hi, -1, m - 2) + 1, side="right") -
                 np.searchsorted(code, row + np.clip(r.k_lo, 0, m - 1) + 1, side="left"))
        count = np.where((r.p_lo >= 0) & (r.k_hi >= r.k_lo), np.maximum(count, 0), 0)
        area = r.k_hi - r.k_lo + 1
        return _states(count == area, count == 0)
    count = np.zeros(r.p_lo.shape, dtype=np.int64)
    step = max(1, (1 << 20) // max(width * k, 1))
    for s in range(0, len(r.p_lo), step):
        sl = slice(s, s + step)
        rows = r.p_lo[sl, None] + np.arange(width)
        valid = (rows <= r.p_hi[sl, None]) & (rows >= 0)  # query blocks p < 0 keep nothing
        c = chosen[np.clip(rows, 0, nb - 1)]  # (tiles, width, r)
        hit = (c >= r.k_lo[sl, None, None]) & (c <= r.k_hi[sl, None, None]) & (c >= 0)
        count[sl] = (hit & valid[..., None]).sum(axis=(1, 2))
    area = (r.p_hi - r.p_lo + 1) * (r.k_hi - r.k_lo + 1)
    return _states(count == area, count == 0)


def _listed_in(sorted_list: np.ndarray, lo, hi):
    """How many entries of a sorted list (``-1`` padding first) lie in ``lo..hi``."""
    return (np.searchsorted(sorted_list, hi, side="right") -
            np.searchsorted(sorted_list, np.maximum(lo, 0), side="left"))


def _keys(n: ir.Keys, r, an, path):
    c = _listed_in(_chosen(an, n.input), r.k_lo, r.k_hi)
    return _states(c == r.k_hi - r.k_lo + 1, c == 0)


def _diagonals(n: ir.Diagonals, r, an, path):
    d_lo, d_hi = r.p_lo - r.k_hi, r.p_hi - r.k_lo  # every offset in between occurs
    c = np.where(d_hi < 0, 0, _listed_in(_chosen(an, n.input), d_lo, d_hi))
    return _states((d_lo >= 0) & (c == d_hi - d_lo + 1), c == 0)


def _layout(n: ir.Layout, r, an, path):
    if not n.rows or not n.rows[0]:
        return np.int8(E)  # layout([]) keeps nothing
    table = np.array(n.rows, dtype=bool).reshape(len(n.rows), -1)
    count = _rect_count(table, r.p_lo, r.p_hi, r.k_lo, r.k_hi)
    area = (r.p_hi - r.p_lo + 1) * (r.k_hi - r.k_lo + 1)
    return _states(count == area, count == 0)


def _where(n: ir.Where, r, an, path):
    may_false, may_true = cond_range(n.pred, r)
    return np.where(~may_true, E, np.where(~may_false, F, U)).astype(np.int8)


def _and(n: ir.And, r, an, path):
    return and_states([classify(t, r, an, path + (i,)) for i, t in enumerate(n.terms)])


def _or(n: ir.Or, r, an, path):
    return or_states([classify(t, r, an, path + (i,)) for i, t in enumerate(n.terms)])


def _not(n: ir.Not, r, an, path):
    return not_states(classify(n.body, r, an, path + (0,)))


from maskc.analysis.gridboxes import classify_grid, grid_support  # noqa: E402  (uses the helpers above)
from maskc.analysis.tileblocks import classify_tile_blocks, tile_blocks_support  # noqa: E402

CLASSIFIERS = {
    ir.Const: lambda n, r, an, path: np.int8(F if n.keep else E),
    ir.Causal: lambda n, r, an, path: _states(r.k_hi <= r.p_lo, r.k_lo > r.p_hi),
    ir.Window: _window,
    ir.Global: _global,
    ir.Sink: lambda n, r, an, path: _states(r.k_hi < n.n, r.k_lo >= n.n),
    ir.Prefix: lambda n, r, an, path: _states((r.p_hi < n.n) & (r.k_hi < n.n),
                                              (r.p_lo >= n.n) | (r.k_lo >= n.n)),
    ir.Chunk: _chunk,
    ir.Strided: _strided,
    ir.Fixed: _fixed,
    ir.Same: _same,
    ir.Within: _within,
    ir.Where: _where,
    ir.Not: _not,
    ir.And: _and,
    ir.Or: _or,
    ir.Heads: _heads,
    ir.Blocks: _blocks,
    ir.TileBlocks: classify_tile_blocks,
    ir.Random: _random,
    ir.Select: _select,
    ir.Keys: _keys,
    ir.Diagonals: _diagonals,
    ir.Layout: _layout,
    ir.Neighborhood: classify_grid,
    ir.Tile: classify_grid,
}


# ------------------------------------------------------------------ supports

# The most intervals a support keeps: past it, their hull per query row (still a superset).
MAX_PIECES = 64


def _pruned(pieces: list[tuple]) -> list[tuple]:
    """``pieces`` without the intervals empty on every row; over :data:`MAX_PIECES`, one
    hull per row. NOTE: ``&`` of supports takes every pairwise intersection, so nested
    ``&``/``|`` of grid terms once made 270,000 intervals for a 16-token grid (10 s)."""
    pieces = [(lo, hi) for lo, hi in pieces if np.any(lo <= hi)]
    if len(pieces) <= MAX_PIECES:
        return pieces
    big = np.iinfo(np.int64).max
    los = np.broadcast_arrays(*[np.where(lo <= hi, lo, big) for lo, hi in pieces])
    his = np.broadcast_arrays(*[np.where(lo <= hi, hi, -1) for lo, hi in pieces])
    lo, hi = np.min(los, axis=0), np.max(his, axis=0)
    return [(np.where(hi < 0, 0, lo), hi)]


_UNBOUNDED = 1 << 40  # "any position", still safe to scale by a block size in int64


def support(node: ir.Node, p_lo, p_hi, Lk: int, an: Analysis) -> list[tuple]:
    """Key-position intervals ``[(lo, hi), ...]`` (arrays over query rows) ``node`` may keep.

    A superset: every kept key of a query in ``p_lo..p_hi`` lies in one of the intervals.
    """
    # NOTE: with offsets keys sit at any position: "every key" is then unbounded (the
    # caller clips the intervals to its key rows)
    top = _UNBOUNDED if an.shifted else Lk - 1
    everything = [(np.full_like(p_lo, -_UNBOUNDED if an.shifted else 0), np.full_like(p_lo, top))]
    nothing = [(np.zeros_like(p_lo), np.full_like(p_lo, -1))]
    if isinstance(node, ir.Const):
        return everything if node.keep else nothing
    zero = everything[0][0]  # the first key position there may be
    if isinstance(node, ir.Causal):
        return [(zero, p_hi)]
    if isinstance(node, ir.Window):
        return [(p_lo - node.before * node.dilation, p_hi + node.after * node.dilation)]
    if isinstance(node, ir.Sink):
        return [(zero, np.full_like(p_lo, node.n - 1))]
    if isinstance(node, ir.Prefix):
        return [(np.where(p_lo < node.n, zero, 0), np.where(p_lo < node.n, node.n - 1, -1))]
    if isinstance(node, ir.Chunk):
        return [((p_lo // node.n) * node.n, (p_hi // node.n) * node.n + node.n - 1)]
    if isinstance(node, ir.Global):
        hit = _count_in(node.positions, p_lo, p_hi) > 0
        out = [(np.where(hit, zero, 0), np.where(hit, top, -1))]
        return out + [(np.full_like(p_lo, a), np.full_like(p_lo, b - 1))
                      for a, b in node.positions.intervals]
    if isinstance(node, (ir.Same, ir.Within)):
        xi = _input(an, node.input)
        if not xi.monotone:
            return everything
        L = len(xi.x)
        rl, rh = p_lo - an.k0, p_hi - an.k0   # key rows
        pv, ph = np.clip(rl, 0, L - 1), np.clip(rh, 0, L - 1)
        lo = np.searchsorted(xi.x, xi.x[pv], side="left")
        hi = np.searchsorted(xi.x, xi.x[ph], side="right") - 1
        return [(lo + an.k0, np.where((rh < 0) | (rl >= L), -1 - _UNBOUNDED, hi + an.k0))]
    if isinstance(node, ir.Or):
        return _pruned([iv for t in node.terms for iv in support(t, p_lo, p_hi, Lk, an)])
    if isinstance(node, ir.And):
        positive = [t for t in node.terms if not isinstance(t, ir.Not)]
        if not positive:
            return everything
        out = support(positive[0], p_lo, p_hi, Lk, an)
        for t in positive[1:]:
            other = support(t, p_lo, p_hi, Lk, an)
            out = _pruned([(np.maximum(a0, b0), np.minimum(a1, b1))
                           for a0, a1 in out for b0, b1 in other])
        return out
    if isinstance(node, ir.Heads):
        for arm in node.arms:
            if arm.heads is None or an.head in arm.heads:
                return support(arm.body, p_lo, p_hi, Lk, an)
        return nothing
    if isinstance(node, ir.Blocks):
        B = node.size
        nkb = -(-Lk // B)
        inner = support(node.body, p_lo // B, p_hi // B, nkb, an)
        return [(a * B, b * B + B - 1) for a, b in inner]
    if isinstance(node, (ir.Neighborhood, ir.Tile)):
        return grid_support(node, p_lo, p_hi, an)
    if isinstance(node, ir.TileBlocks):
        return tile_blocks_support(node, p_lo, p_hi, Lk, an)
    if isinstance(node, ir.Random) and len(p_lo) and node.r <= Lk and not an.shifted:
        width = int((p_hi - p_lo).max(initial=0)) + 1
        if width * node.r <= 64:  # each query block keeps r key blocks: list them
            chosen, base = _random_rows(node, Lk, int(p_lo.min()), int(p_hi.max()), an)
            out = []
            for o in range(width):
                c = chosen[np.clip(np.minimum(p_lo + o, p_hi) - base, 0, len(chosen) - 1)]
                out += [(c[:, j], c[:, j]) for j in range(node.r)]
            return out
    if isinstance(node, (ir.Select, ir.Keys, ir.Diagonals)) and len(p_lo):
        chosen = _chosen(an, node.input)
        listed = chosen.shape[-1]
        if isinstance(node, ir.Select):
            width = int((p_hi - p_lo).max(initial=0)) + 1
            if width * listed <= 64:  # each query block lists its key blocks
                out = []
                for o in range(width):
                    row = np.minimum(p_lo + o, p_hi)
                    c = np.where((row >= 0)[:, None], chosen[np.clip(row, 0, len(chosen) - 1)],
                                 -1)
                    out += [(np.where(c[:, j] >= 0, c[:, j], 0), c[:, j])
                            for j in range(listed)]
                return out
        elif listed <= 64:  # a key, or a diagonal's keys p - d, per listed entry
            keys = isinstance(node, ir.Keys)
            return [((np.full_like(p_lo, x), np.full_like(p_lo, x)) if keys else
                     (p_lo - x, p_hi - x)) for x in chosen.tolist() if x >= 0] or nothing
    return everything  # strided, fixed, where, not, layout: no cheaper bound

