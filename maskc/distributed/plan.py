"""Context-parallel plans: which rank owns which query tiles, and which key tiles it needs.

A plan is pure host work over the mask's exact tile structure (the visited tiles as
rectangles, :mod:`maskc.analysis.refine`), with no ``torch.distributed`` in it:

1. **Work per query tile**: the tiles it visits, summed over batch rows and heads.
2. **Assignment**: the query tiles are cut into ``c * world_size`` chunks of equal length
   (every rank holds the same number of tokens, so activations balance too), and chunks
   go to ranks by *longest processing time first* with at most ``c`` chunks per rank:
   the heaviest chunk not yet placed goes to the least loaded rank that has room. With
   ``c = 1`` that is a contiguous split (what sliding windows want: a rank's keys are its
   own and its left neighbour's); with ``c = 2`` and work growing along the sequence
   (causal) it pairs the heaviest chunk with the lightest, which is the zig-zag
   assignment. ``c`` in 1, 2, 4 is tried and the smallest whose heaviest rank is within
   1% of the best wins: fewer chunks mean fewer key ranges to send.
3. **Needed keys**: per rank, the union of the key tiles its query tiles visit (intervals
   of tiles), split by the ranks that own them. Keys are owned like queries (self
   attention); when ``kv_len != q_len`` they are split contiguously in equal parts.

Cost: ``O(rectangles + chunks * world_size)``, independent of the visited tiles' number.
"""

from __future__ import annotations

import numpy as np

from maskc import ir
from maskc.analysis.refine import visited_rectangles
from maskc.analysis.sizes import prepare_inputs, resolve_lengths
from maskc.errors import MaskError, MaskSizeError, MaskTypeError
from maskc.validate import integer, length

__all__ = ["Plan", "plan", "MAX_WORLD"]

MAX_WORLD = 1 << 16
DEFAULT_BLOCK = 128
_CHUNKS_PER_RANK = (1, 2, 4)
_SLACK = 1.01  # a finer assignment must beat the coarser one by more than this


def plan(mask, q_len=None, world_size=None, heads: int = 1, kv_len=None, block=None,
         **inputs) -> "Plan":
    """Plan context-parallel attention of ``mask`` over ``world_size`` ranks (the README's
    "Many GPUs"): see :class:`Plan`. ``block``: the tile size (tokens) of the plan; by
    default 128, halved (down to 16) while there are fewer than 4 tiles per rank, since
    one tile per rank cannot be balanced (causal: the last rank would do 2x the mean)."""
    from maskc.api import Mask
    if not isinstance(mask, Mask):
        raise MaskTypeError(f"plan() takes a maskc.Mask (from maskc.compile), got "
                            f"{type(mask).__name__}")
    if world_size is None:
        raise MaskError("plan() needs world_size, the number of ranks")
    world = integer(world_size, "world_size", 1, MAX_WORLD, mask._span())
    q_len, kv_len = resolve_lengths(mask.ir, q_len, kv_len)
    if block is None:
        block = DEFAULT_BLOCK
        while block > 16 and -(-q_len // block) < 4 * world:
            block //= 2
    block = length(block, "block", mask._span())
    rects = visited_rectangles(mask.ir, q_len, kv_len, heads, block,
                               evaluate=_evaluate(), **inputs)
    ids = prepare_inputs(mask.ir, kv_len, inputs, copy=True, heads=heads)
    return Plan(mask, q_len, kv_len, world, heads, block, rects, inputs, ids)


def _evaluate():
    from maskc.backends import reference
    return reference.evaluate


def _bounds(n: int, parts: int) -> np.ndarray:
    """``parts + 1`` cut points splitting ``0..n`` into parts of equal length (+-1)."""
    return (np.arange(parts + 1, dtype=np.int64) * n) // parts


def _assign(work: np.ndarray, world: int) -> tuple[np.ndarray, np.ndarray, int]:
    """``(cuts, owner, c)``: chunk ``i`` is tiles ``cuts[i]..cuts[i+1]-1``, held by
    ``owner[i]``; see the module docstring."""
    prefix = np.concatenate([[0], np.cumsum(work)])
    best = None
    for c in _CHUNKS_PER_RANK:
        cuts = _bounds(len(work), c * world)
        w = prefix[cuts[1:]] - prefix[cuts[:-1]]
        owner = np.arange(world, dtype=np.int64) if c == 1 else _lpt(w, world, c)
        heaviest = int(np.bincount(owner, weights=w, minlength=world).max(initial=0))
        if best is None or heaviest * _SLACK < best[0]:
            best = (heaviest, cuts, owner, c)
    return best[1], best[2], best[3]


def _lpt(w: np.ndarray, world: int, c: int) -> np.ndarray:
    """Longest processing time first, at most ``c`` chunks per rank."""
    owner = np.empty(len(w), dtype=np.int64)
    load = np.zeros(world, dtype=np.float64)
    room = np.full(world, c)
    for i in np.argsort(-w, kind="stable"):
        r = int(np.argmin(np.where(room > 0, load, np.inf)))  # ties: the lowest rank
        owner[i] = r
        load[r] += w[i]
        room[r] -= 1
    return owner


def _merge(group: np.ndarray, lo: np.ndarray, hi: np.ndarray, span: int):
    """Union of inclusive intervals ``[lo, hi]`` within each ``group``: ``(group, lo, hi)``
    sorted, disjoint and not adjacent within a group. ``span`` bounds ``hi`` (+1)."""
    if not len(lo):
        return group, lo, hi
    stride = span + 2
    a = group * stride + lo
    b = group * stride + hi
    order = np.argsort(a, kind="stable")
    a, b = a[order], b[order]
    reach = np.maximum.accumulate(b)
    start = np.ones(len(a), dtype=bool)
    start[1:] = a[1:] > reach[:-1] + 1
    first = np.flatnonzero(start)
    last = np.concatenate([first[1:], [len(a)]]) - 1
    g = a[first] // stride
    return g, a[first] - g * stride, reach[last] - g * stride


class Plan:
    """Which rank holds which tokens, and which key/value tiles each rank receives.

    ``shard(t, rank)`` takes a rank's rows of a full tensor, ``unshard(parts)`` puts them
    back in sequence order, ``stats()`` reports the balance and the traffic, and
    :func:`maskc.distributed.attention` runs the plan on ``torch.distributed``.

    Attributes (tile indices at ``block``): ``q_cuts``/``q_owner`` the query chunks and
    their ranks, ``k_cuts``/``k_owner`` the key chunks (the same arrays for self attention),
    ``visited[r]`` the tiles rank ``r`` visits, ``needs[r]`` its key tiles as inclusive
    intervals ``(lo, hi)``, ``recv[r]`` the intervals it receives, as ``(owner, lo, hi)``
    rows sorted by owner then position.
    """

    def __init__(self, mask, q_len, kv_len, world, heads, block, rects, inputs, ids):
        self.mask, self.q_len, self.kv_len = mask, q_len, kv_len
        self.world_size, self.heads, self.block = world, heads, block
        self.inputs, self.ids = dict(inputs), ids
        self.rects = rects
        nq, nk = rects.n_q_tiles, rects.n_k_tiles
        self.work = rects.visited_per_row()
        self.q_cuts, self.q_owner, self.chunks_per_rank = _assign(self.work, world)
        if q_len == kv_len:
            self.k_cuts, self.k_owner = self.q_cuts, self.q_owner
        else:
            self.k_cuts, self.k_owner = _bounds(nk, world), np.arange(world, dtype=np.int64)
        w = np.add.reduceat(self.work, self.q_cuts[:-1]) if nq else np.zeros(0)
        w[self.q_cuts[:-1] == self.q_cuts[1:]] = 0  # empty chunks (fewer tiles than chunks)
        self.visited = np.bincount(self.q_owner, weights=w, minlength=world).astype(np.int64)
        self.runs = [_runs(self.q_cuts, self.q_owner, r) for r in range(world)]
        self.k_runs = self.runs if self.k_cuts is self.q_cuts else \
            [_runs(self.k_cuts, self.k_owner, r) for r in range(world)]
        self._needs(nk)

    # ------------------------------------------------------------------ planning
    def _needs(self, nk: int) -> None:
        r = self.rects
        # each rectangle, split by the query chunks it crosses: (chunk, key lo, key hi)
        ca = np.searchsorted(self.q_cuts, r.q0, side="right") - 1
        cb = np.searchsorted(self.q_cuts, r.q1, side="right") - 1
        n = cb - ca + 1
        chunk = np.repeat(ca, n) + (np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n))
        lo, hi = np.repeat(r.k0, n), np.repeat(r.k1, n)
        # NOTE: a rank also holds its own query rows' keys (inputs are read at the query's
        # own row, and they cost nothing to send)
        rank_of = self.q_owner[chunk]
        own = [(np.full(len(lo_), rank), lo_, hi_) for rank in range(self.world_size)
               for lo_, hi_ in [self._positions(self.runs[rank])]]
        g = np.concatenate([rank_of] + [o[0] for o in own]).astype(np.int64)
        lo = np.concatenate([lo] + [o[1] for o in own]).astype(np.int64)
        hi = np.concatenate([hi] + [o[2] for o in own]).astype(np.int64)
        g, lo, hi = _merge(g, lo, hi, nk)
        # per query run too: the local attention runs one sequence per run
        self._chunk_needs = (chunk, np.repeat(r.k0, n), np.repeat(r.k1, n))
        cut = np.searchsorted(g, np.arange(self.world_size + 1))
        self.needs = [np.stack([lo[cut[i]:cut[i + 1]], hi[cut[i]:cut[i + 1]]], axis=1)
                      for i in range(self.world_size)]
        # split every needed interval at key chunk boundaries: who sends it
        self.recv = []
        for rank, need in enumerate(self.needs):
            owner, a, b = self._owners(need)
            keep = owner != rank
            self.recv.append(np.stack([owner[keep], a[keep], b[keep]], axis=1))

    def _owners(self, need: np.ndarray):
        """Intervals ``need`` split by key chunks: ``(owner, lo, hi)`` sorted by owner,
        then position."""
        if not len(need):
            return (np.zeros(0, dtype=np.int64),) * 3
        ca = np.searchsorted(self.k_cuts, need[:, 0], side="right") - 1
        cb = np.searchsorted(self.k_cuts, need[:, 1], side="right") - 1
        n = cb - ca + 1
        c = np.repeat(ca, n) + (np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n))
        a = np.maximum(np.repeat(need[:, 0], n), self.k_cuts[c])
        b = np.minimum(np.repeat(need[:, 1], n), self.k_cuts[c + 1] - 1)
        owner = self.k_owner[c]
        order = np.lexsort((a, owner))
        return owner[order], a[order], b[order]

    def _positions(self, runs: np.ndarray):
        """The key tiles at the positions of query runs ``runs`` (inclusive ``(lo, hi)``
        arrays): a query reads runtime inputs at its own position's key row. Self
        attention: the runs themselves (local keys, nothing to send); other lengths: only
        for masks with runtime inputs."""
        if self.q_len == self.kv_len:
            return runs[:, 0], runs[:, 1] - 1
        if not self.mask.ir.inputs or not len(runs):
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        B, shift = self.block, self.kv_len - self.q_len
        p0 = np.clip(runs[:, 0] * B + shift, 0, self.kv_len - 1)
        p1 = np.clip(np.minimum(runs[:, 1] * B, self.q_len) - 1 + shift, 0, self.kv_len - 1)
        ok = (runs[:, 0] * B + shift <= self.kv_len - 1) & \
            (np.minimum(runs[:, 1] * B, self.q_len) - 1 + shift >= 0)
        return p0[ok] // B, p1[ok] // B

    def run_needs(self, rank: int) -> list[np.ndarray]:
        """Per query run of ``rank`` (``runs[rank]``), its key tiles as intervals, its own
        tiles included."""
        rank = self._rank(rank)
        chunk, lo, hi = self._chunk_needs
        runs = self.runs[rank]
        out = []
        for a, b in runs:
            cs = np.flatnonzero((self.q_cuts[:-1] >= a) & (self.q_cuts[1:] <= b) &
                                (self.q_cuts[:-1] < self.q_cuts[1:]))
            sel = np.isin(chunk, cs)
            plo, phi = self._positions(np.array([[a, b]]))
            glo, ghi = np.concatenate([lo[sel], plo]), np.concatenate([hi[sel], phi])
            _, m_lo, m_hi = _merge(np.zeros(len(glo), dtype=np.int64), glo, ghi,
                                   self.rects.n_k_tiles)
            out.append(np.stack([m_lo, m_hi], axis=1))
        return out

    # ------------------------------------------------------------------ tokens
    def _tokens(self, lo, hi, n_rows: int) -> np.ndarray:
        """Rows in tiles ``lo..hi`` (inclusive, arrays) of an axis of ``n_rows`` rows."""
        B = self.block
        return np.minimum((np.asarray(hi) + 1) * B, n_rows) - np.asarray(lo) * B

    def rows(self, rank: int, keys: bool = False) -> np.ndarray:
        """The rows (token indices) ``rank`` holds, in the order of its shard."""
        rank = self._rank(rank)
        runs = self.k_runs[rank] if keys else self.runs[rank]
        n = self.kv_len if keys else self.q_len
        B = self.block
        parts = [np.arange(a * B, min(b * B, n), dtype=np.int64) for a, b in runs]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def stats(self) -> dict:
        """``visited_max``/``visited_mean``: tiles a rank visits (over batch rows and
        heads); ``recv_tokens_max``: the most key/value tokens a rank receives;
        ``ring_recv_tokens``: what each rank receives in ring attention (every other
        rank's keys)."""
        recv = [int(self._tokens(x[:, 1], x[:, 2], self.kv_len).sum()) for x in self.recv]
        own = [len(self.rows(r, keys=True)) for r in range(self.world_size)]
        return {"visited_max": int(self.visited.max(initial=0)),
                "visited_mean": float(self.visited.mean()),
                "recv_tokens_max": max(recv, default=0),
                "ring_recv_tokens": self.kv_len - min(own, default=0)}

    def recv_tokens(self) -> np.ndarray:
        """Per rank, the key/value tokens it receives."""
        return np.array([int(self._tokens(x[:, 1], x[:, 2], self.kv_len).sum())
                         for x in self.recv], dtype=np.int64)

    def peers(self, rank: int) -> int:
        """How many other ranks send keys to ``rank``."""
        return len(np.unique(self.recv[self._rank(rank)][:, 0]))

    # ------------------------------------------------------------------ tensors
    def _rank(self, rank) -> int:
        return integer(rank, "rank", 0, self.world_size - 1, self.mask._span(), MaskError)

    def shard(self, t, rank: int, dim: int = -2):
        """The rows of ``t`` (a full tensor, the sequence along ``dim``) that ``rank``
        holds. A tensor of ``q_len`` rows is split like queries, one of ``kv_len`` rows
        like keys (the same when they are equal)."""
        import torch
        if not isinstance(t, torch.Tensor):
            raise MaskTypeError(f"shard() takes a torch tensor, got {type(t).__name__}")
        rank = self._rank(rank)
        dim = self._dim(t, dim)
        n = t.shape[dim]
        if n not in (self.q_len, self.kv_len):
            raise MaskSizeError(f"shard(): the tensor has {n} rows along dim {dim}; the plan "
                                f"is for {self.q_len} queries and {self.kv_len} keys")
        rows = self.rows(rank, keys=n != self.q_len)
        return t.index_select(dim, torch.as_tensor(rows, device=t.device))

    def unshard(self, parts, dim: int = -2):
        """The ranks' shards (a list in rank order) put back in sequence order."""
        import torch
        parts = list(parts) if isinstance(parts, (list, tuple)) else None
        if parts is None or len(parts) != self.world_size or \
                not all(isinstance(p, torch.Tensor) for p in parts):
            raise MaskTypeError(f"unshard() takes a list of {self.world_size} tensors, one "
                                f"per rank")
        dim = self._dim(parts[0], dim)
        for keys in (False, True):
            want = [len(self.rows(r, keys)) for r in range(self.world_size)]
            if [p.shape[dim] for p in parts] == want:
                break
        else:
            got = [p.shape[dim] for p in parts]
            raise MaskSizeError(f"unshard(): the parts have {got} rows along dim {dim}; "
                                f"the plan's ranks hold {want}")
        rows = np.concatenate([self.rows(r, keys) for r in range(self.world_size)])
        inverse = np.empty_like(rows)
        inverse[rows] = np.arange(len(rows))
        whole = torch.cat(parts, dim=dim)
        return whole.index_select(dim, torch.as_tensor(inverse, device=whole.device))

    @staticmethod
    def _dim(t, dim) -> int:
        nd = t.dim()
        if isinstance(dim, bool) or not isinstance(dim, int) or not -nd <= dim < nd:
            raise MaskError(f"dim {dim!r} is not a dimension of a {nd}-d tensor")
        return dim % nd

    def __repr__(self) -> str:
        s = self.stats()
        return (f"<maskc.distributed.Plan {self.mask.name}: {self.q_len} x {self.kv_len} "
                f"tokens over {self.world_size} ranks, {self.chunks_per_rank} chunk(s) per "
                f"rank, visited tiles max {s['visited_max']} / mean "
                f"{s['visited_mean']:.1f}, received tokens max {s['recv_tokens_max']} "
                f"(ring: {s['ring_recv_tokens']})>")


def _runs(cuts: np.ndarray, owner: np.ndarray, rank: int) -> np.ndarray:
    """``rank``'s tiles as ``(start, stop)`` runs in sequence order, adjacent chunks merged."""
    mine = np.flatnonzero((owner == rank) & (cuts[:-1] < cuts[1:]))
    if not len(mine):
        return np.zeros((0, 2), dtype=np.int64)
    a, b = cuts[mine], cuts[mine + 1]
    start = np.ones(len(a), dtype=bool)
    start[1:] = a[1:] != b[:-1]
    first = np.flatnonzero(start)
    last = np.concatenate([first[1:], [len(a)]]) - 1
    return np.stack([a[first], b[last]], axis=1)


def reads_rows(mdef: ir.MaskDef) -> list[str]:
    """The variables of ``mdef`` a shard cannot compute (``q``, ``Lq``, ``Lk``: a rank's
    local call sees its own rows and lengths; ``p`` and ``k`` are absolute)."""
    nodes = list(ir.walk(mdef.body)) + (list(ir.walk(mdef.score)) if mdef.score else [])
    return sorted({n.name for n in nodes if isinstance(n, ir.PVar) and
                   n.name in ("q", "Lq", "Lk")})
