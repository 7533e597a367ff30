"""Estimators: choose the blocks, keys and diagonals that ``select``/``keys``/``diagonals`` read
(docs/language.md section 10), from the queries and keys themselves.

Each returns ``int32`` tensors on the device of its inputs, rows in ascending order padded
with ``-1`` at the end, computed with tensor operations only (no ``.item()``, nothing that
waits for the device); what they return is known to be in range, so the Triton kernels take
it without reading it back (:func:`maskc.passes.chosen.mark_checked`). Scores are float32, float64 with ``backend="reference"``. Ties go to
the smaller index: candidates are sorted by score with a stable sort.

The candidate blocks of ``mask=`` come from the mask's block analysis at the estimator's
block size (host work, once per mask, size and head count, kept in a small cache).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict

import numpy as np

from maskc import validate
from maskc.errors import MaskInputError, MaskTypeError, MaskValueError
from maskc.passes.chosen import mark_checked

__all__ = ["topk_blocks", "topp_blocks", "vertical_slash", "alibi_slopes"]


# ---------------------------------------------------------------- checks

def _tensor(x, name: str):
    import torch
    if not isinstance(x, torch.Tensor):
        raise MaskTypeError(f"{name} must be a torch tensor, got {type(x).__name__}")
    return x


def _qk(q, k):
    q, k = _tensor(q, "q"), _tensor(k, "k")
    if q.dim() != 4 or k.dim() != 4:
        raise MaskInputError(f"q and k must be (B, H, L, D) tensors, got {tuple(q.shape)} and "
                             f"{tuple(k.shape)}")
    if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3] or k.shape[1] == 0 or \
            q.shape[1] % k.shape[1] != 0 or q.shape[2] == 0 or k.shape[2] == 0:
        raise MaskInputError(f"q {tuple(q.shape)} and k {tuple(k.shape)} need one batch, one "
                             "head dim, lengths >= 1 and query heads a multiple of kv heads")
    if not q.is_floating_point() or not k.is_floating_point():
        raise MaskInputError(f"q and k must be floating point, got {q.dtype} and {k.dtype}")
    if q.device != k.device:
        raise MaskInputError(f"q and k are on different devices ({q.device}, {k.device})")
    return q, k


def _count(x, name: str, lo: int = 0) -> int:
    return validate.integer(x, name, lo=lo, error=MaskValueError)


def _dtype(backend: str):
    import torch
    if backend not in ("auto", "reference"):
        raise MaskValueError(f"backend must be 'auto' or 'reference', got {backend!r}")
    return torch.float64 if backend == "reference" else torch.float32


def _scale(scale, D: int) -> float:
    return 1.0 / math.sqrt(D) if scale is None else validate.real(scale, "scale")


# ---------------------------------------------------------------- pooling and candidates

def _pooled(x, block: int, shift: int, nb: int, dtype):
    """Means over the rows ``t`` of ``x (B, H, L, D)`` with ``(t + shift) // block == i``, for
    ``i < nb``: ``(B, H, nb, D)``, and whether each block holds a row ``(nb,)``."""
    import torch
    L = x.shape[2]
    blk = (torch.arange(L, device=x.device) + shift).div(block, rounding_mode="floor")
    keep = (blk >= 0) & (blk < nb)
    at = torch.where(keep, blk, 0)
    w = keep.to(dtype)
    sums = torch.zeros(x.shape[:2] + (nb, x.shape[3]), dtype=dtype, device=x.device)
    sums.index_add_(2, at, x.to(dtype) * w[:, None])
    counts = torch.zeros(nb, dtype=dtype, device=x.device).index_add_(0, at, w)
    return sums / counts.clamp(min=1)[:, None], counts > 0


_CANDIDATES: OrderedDict = OrderedDict()
_LOCK = threading.Lock()


def candidates(mask, q_len: int, kv_len: int, heads: int, block: int) -> np.ndarray:
    """Bool ``(Hc, NB, NB)`` (``Hc`` 1 or ``heads``): whether ``mask`` keeps a pair of the
    tile (query block ``i``, key block ``j``), query blocks counted in key positions."""
    from maskc.api import Mask
    if not isinstance(mask, Mask):
        raise MaskTypeError(f"mask must be a maskc.Mask (e.g. maskc.compile('mask m = "
                            f"causal')), got {type(mask).__name__}")
    if mask.inputs:
        raise MaskInputError(f"mask '{mask.name}' reads runtime inputs; the estimators take "
                             "masks without them")
    key = (mask.ir, q_len, kv_len, heads, block)
    with _LOCK:
        if key in _CANDIDATES:
            _CANDIDATES.move_to_end(key)
            return _CANDIDATES[key]
    shift, nb = kv_len - q_len, -(-kv_len // block)
    # NOTE: query tiles of g = gcd(shift, block) rows each lie within one key-aligned block
    g = math.gcd(shift, block)
    bm = mask.block_map(q_len, kv_len, heads=heads, block_q=g, block_k=block)
    B, G, nq = bm.kv_num_blocks.shape
    out = np.zeros((G, nb, nb + 1), dtype=bool)  # column nb takes the padding
    first = (shift + np.arange(nq, dtype=np.int64) * g) // block
    ok = (first >= 0) & (first < nb)
    for idx in (bm.kv_indices, bm.full_kv_indices):
        cols = np.where(idx[0] < 0, nb, idx[0])[:, ok]  # (G, tiles in range, width)
        rows = np.broadcast_to(first[ok][None, :, None], cols.shape)
        out[np.arange(G)[:, None, None], rows, cols] = True
    out = out[:, :, :nb]
    out = out if G == 1 else out[bm.head_group]  # one table for all heads, or one per head
    with _LOCK:
        _CANDIDATES[key] = out
        while len(_CANDIDATES) > 16:
            _CANDIDATES.popitem(last=False)
    return out


def _block_scores(q, k, block, mask, scale, dtype):
    """``S (B, Hq, NB, NB)`` with ``-inf`` at non-candidates (and rows of no query)."""
    import torch
    B, Hq, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    nb = -(-Lk // block)
    pq, has_q = _pooled(q, block, Lk - Lq, nb, dtype)
    pk, _ = _pooled(k, block, 0, nb, dtype)
    pk = pk.repeat_interleave(Hq // Hkv, dim=1)  # each query head sees its kv head's keys
    S = torch.matmul(pq, pk.transpose(-1, -2)) * _scale(scale, D)
    ok = has_q[:, None]
    if mask is not None:
        cand = torch.from_numpy(candidates(mask, Lq, Lk, Hq, block)).to(q.device)
        ok = ok & cand
    return S.masked_fill(~ok, float("-inf"))


def _ascending(idx, keep):
    """Rows of ``idx`` where ``keep``, ascending, then ``-1``s: int32."""
    import torch
    big = torch.iinfo(torch.int64).max
    out = torch.where(keep, idx.to(torch.int64), big).sort(dim=-1).values
    return torch.where(out == big, -1, out).to(torch.int32)


def _ranked(S):
    """Candidates by decreasing score (ties: the smaller index): ``(values, indices)``."""
    return S.sort(dim=-1, descending=True, stable=True)


# ---------------------------------------------------------------- estimators

def topk_blocks(q=None, k=None, r=None, block: int = 64, mask=None, scale=None, *,
                scores=None, backend: str = "auto"):
    """The ``r`` key blocks of largest block score per query block: ``int32 (B, Hq, NB, r)``.

    Pooled query of block ``i``: the mean of the query rows ``t`` with
    ``(t + Lk - Lq) // block == i``; pooled key of block ``j``: the mean of its rows (GQA:
    the query head's kv head). ``S[i, j] = scale * pooled_q . pooled_k`` (``scale``
    defaults to ``1/sqrt(D)``). Candidates are the blocks where ``mask`` (a
    :class:`maskc.Mask`; ``None``: all) keeps a pair of the tile; fewer than ``r``
    candidates leave ``-1`` padding, and a block holding no query row is all ``-1``.
    ``topk_blocks(scores=S, r=r)`` chooses from block scores ``S (B, H, NB, NB)`` a model
    computed itself (``-inf``: not a candidate).
    """
    import torch
    if r is None:
        raise MaskTypeError("topk_blocks needs r, the number of key blocks to keep per row")
    r = _count(r, "r")
    if scores is not None:
        if q is not None or k is not None:
            raise MaskTypeError("topk_blocks takes q and k, or scores=, not both")
        S = _tensor(scores, "scores")
        if S.dim() != 4 or S.shape[-1] != S.shape[-2] or not S.is_floating_point():
            raise MaskInputError(f"scores must be a float (B, H, NB, NB) tensor, got "
                                 f"{tuple(S.shape)} {S.dtype}")
    else:
        if q is None or k is None:
            raise MaskTypeError("topk_blocks needs q and k (or scores=)")
        q, k = _qk(q, k)
        block = _count(block, "block", lo=1)
        S = _block_scores(q, k, block, mask, scale, _dtype(backend))
    vals, idx = _ranked(S)
    width = min(r, S.shape[-1])
    out = _ascending(idx[..., :width], vals[..., :width] > float("-inf"))
    if width < r:
        out = torch.cat([out, out.new_full(out.shape[:-1] + (r - width,), -1)], dim=-1)
    mark_checked(out, S.shape[-1])
    return out


def topp_blocks(q, k, p, block: int = 64, mask=None, scale=None, min_blocks: int = 1,
                max_blocks: int | None = None, *, backend: str = "auto"):
    """Per query block, the fewest candidate key blocks, taken by decreasing block score
    (as :func:`topk_blocks`), whose ``softmax`` mass over the candidates reaches ``p``; at
    least ``min_blocks`` and at most ``max_blocks`` (default ``NB``, also the result's
    width): ``int32 (B, Hq, NB, max_blocks)``."""
    import torch
    q, k = _qk(q, k)
    p = validate.real(p, "p")
    if not 0.0 <= p <= 1.0:
        raise MaskValueError(f"p must be within [0, 1], got {p}")
    block = _count(block, "block", lo=1)
    nb = -(-k.shape[2] // block)
    lo = _count(min_blocks, "min_blocks")
    hi = nb if max_blocks is None else _count(max_blocks, "max_blocks")
    if lo > hi:
        raise MaskValueError(f"min_blocks ({lo}) is more than max_blocks ({hi})")
    S = _block_scores(q, k, block, mask, scale, _dtype(backend))
    vals, idx = _ranked(S)
    cand = vals > float("-inf")
    prob = torch.softmax(vals, dim=-1).nan_to_num(0.0)  # a row of no candidates: zeros
    before = torch.cumsum(prob, dim=-1) - prob  # the mass of the blocks taken before each
    n = ((before < p) & cand).sum(-1, keepdim=True).clamp(min=lo, max=hi)
    rank = torch.arange(nb, device=S.device)
    keep = cand & (rank < n)
    width = min(hi, nb)
    out = _ascending(idx[..., :width], keep[..., :width])
    if width < hi:
        out = torch.cat([out, out.new_full(out.shape[:-1] + (hi - width,), -1)], dim=-1)
    mark_checked(out, nb)
    return out


# NOTE: the probabilities of vertical_slash are built this many elements at a time (heads
# of one batch entry in turn), so 64 rows x 1M keys x 32 heads is not one 8 GiB tensor.
_CHUNK = 1 << 24


def vertical_slash(q, k, n_keys: int, n_diagonals: int, last_q: int = 64, scale=None, *,
                   backend: str = "auto"):
    """MInference's vertical and slash lines: ``(keys, diagonals)``, ``int32 (B, Hq, n)``.

    With ``A`` the causal softmax of the last ``min(last_q, Lq)`` query rows over all keys
    (query ``t`` at position ``p = t + Lk - Lq`` sees keys ``k <= p``), a key's score is the
    sum of its column of ``A``, a diagonal ``d >= 0``'s the sum of ``A[t, k]`` over the pairs
    with ``p - k = d``; the top ``n_keys`` keys and ``n_diagonals`` diagonals are kept.
    """
    import torch
    q, k = _qk(q, k)
    n_keys, n_diag = _count(n_keys, "n_keys"), _count(n_diagonals, "n_diagonals")
    m = min(_count(last_q, "last_q", lo=1), q.shape[2])
    dtype = _dtype(backend)
    B, Hq, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    s = _scale(scale, D)
    pos = torch.arange(Lq - m, Lq, device=q.device) + (Lk - Lq)  # (m,)
    kk = torch.arange(Lk, device=q.device)
    seen = kk[None, :] <= pos[:, None]  # (m, Lk)
    diag = torch.where(seen, pos[:, None] - kk[None, :], 0).reshape(-1)
    vert = torch.zeros((B, Hq, Lk), dtype=dtype, device=q.device)
    slash = torch.zeros((B, Hq, Lk), dtype=dtype, device=q.device)
    step = max(1, _CHUNK // (m * Lk))
    for b in range(B):
        for h0 in range(0, Hq, step):
            hs = torch.arange(h0, min(Hq, h0 + step), device=q.device)
            qs = q[b, h0:h0 + len(hs), Lq - m:].to(dtype)
            ks = k[b, hs // (Hq // Hkv)].to(dtype)
            logits = torch.matmul(qs, ks.transpose(-1, -2)) * s
            A = torch.softmax(logits.masked_fill(~seen, float("-inf")), dim=-1).nan_to_num(0.0)
            vert[b, h0:h0 + len(hs)] = A.sum(1)
            slash[b, h0:h0 + len(hs)].index_add_(1, diag, A.reshape(len(hs), -1))
    return _top(vert, n_keys), _top(slash, n_diag)


def _top(score, n: int):
    """The ``n`` indices of largest score per row (ties: the smaller), ascending, padded."""
    import torch
    _, idx = _ranked(score)
    width = min(n, score.shape[-1])
    out = _ascending(idx[..., :width], torch.ones_like(idx[..., :width], dtype=torch.bool))
    if width < n:
        out = torch.cat([out, out.new_full(out.shape[:-1] + (n - width,), -1)], dim=-1)
    mark_checked(out, score.shape[-1])
    return out


def alibi_slopes(heads: int):
    """The ALiBi slopes of ``heads`` heads (Press, Smith and Lewis, "Train Short, Test Long",
    ICLR 2022), a float32 tensor ``(heads,)`` for ``alibi(slopes)``: for a power of two ``n``,
    ``2**(-8 / n * i)`` for ``i = 1..n``; otherwise those of the largest power of two
    ``n0 < heads``, then every other slope of ``2 * n0`` heads, as the paper's code does."""
    import torch
    heads = validate.integer(heads, "heads", 1, 1 << 16)

    def power_of_two(n):
        return [2.0 ** (-8.0 * i / n) for i in range(1, n + 1)]
    n0 = 1 << (heads.bit_length() - 1)
    out = power_of_two(n0)
    if n0 != heads:
        out += power_of_two(2 * n0)[0::2][:heads - n0]
    return torch.tensor(out, dtype=torch.float32)
