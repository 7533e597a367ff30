"""The deterministic choice behind ``random(r, seed)``, shared by every backend.

Key block ``j`` of query block ``i`` gets a 64-bit score ``mix(seed, i, n, j)`` (SplitMix64's
finalizer); the ``r`` key blocks with the smallest ``(score, j)`` are kept. The choice is a
uniformly random ``r``-subset for a good hash, reproducible on any machine and in any
language (it uses only 64-bit integer arithmetic), and independent of numpy's generators.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import numpy as np

__all__ = ["block_scores", "random_blocks", "random_choice", "random_table"]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_MASK = (1 << 64) - 1
_SCORES_PER_SLICE = 1 << 22  # 32 MB of uint64 scores at a time


def _mix(x: np.ndarray) -> np.ndarray:
    x = x + _GOLDEN  # a new array; the rest works in place (scores are most of random's cost)
    t = x >> np.uint64(30)
    x ^= t
    x *= _M1
    np.right_shift(x, np.uint64(27), out=t)
    x ^= t
    x *= _M2
    np.right_shift(x, np.uint64(31), out=t)
    x ^= t
    return x


def block_scores(seed: int, query_blocks: np.ndarray, n_key_blocks: int, start: int = 0,
                 stop: int | None = None) -> np.ndarray:
    """Scores of shape ``(len(query_blocks), n_key_blocks)``, as uint64 (or of the key
    blocks ``start..stop-1`` only)."""
    with np.errstate(over="ignore"):
        qb = np.asarray(query_blocks, dtype=np.int64).astype(np.uint64)  # two's complement
        h = _mix(np.full(qb.shape, np.uint64(seed & _MASK), dtype=np.uint64))
        h = _mix(h ^ qb)
        h = _mix(h ^ np.uint64(n_key_blocks))
        kb = np.arange(start, n_key_blocks if stop is None else stop, dtype=np.uint64)
        return _mix(h[:, None] ^ kb[None, :])


_CHOICES: OrderedDict = OrderedDict()  # the last few choices: bind, block analysis and the
_CHOICES_KEPT = 8                      # backends ask for the same one (a second each at 1M)
_CHOICES_LOCK = threading.Lock()


def random_choice(seed: int, query_blocks: np.ndarray, n_key_blocks: int, r: int,
                  span=None) -> np.ndarray:
    """Int64 ``(len(query_blocks), r)``: the key blocks each query block keeps, ascending
    (:func:`_choose`; the last few answers are kept, and a copy returned).

    The work is a score per (query block, key block): over :func:`maskc.dense_limit` of them
    is a :class:`~maskc.MaskSizeError` (what :func:`random_table` says, so block analysis
    and the bind stage agree), checked before the kept answers are looked at."""
    from maskc.analysis.sizes import check_elements
    query_blocks = np.asarray(query_blocks)
    check_elements(len(query_blocks) * n_key_blocks, f"random()'s table of "
                   f"{len(query_blocks):,} x {n_key_blocks:,} blocks (use larger blocks)", span)
    key = (int(seed), int(n_key_blocks), int(r), query_blocks.shape,
           hashlib.blake2b(np.ascontiguousarray(query_blocks, dtype=np.int64).tobytes(),
                           digest_size=16).digest())
    with _CHOICES_LOCK:
        hit = _CHOICES.get(key)
        if hit is not None:
            _CHOICES.move_to_end(key)
            return hit.copy()
    out = _choose(seed, query_blocks, n_key_blocks, r, span)
    with _CHOICES_LOCK:
        _CHOICES[key] = out
        while len(_CHOICES) > _CHOICES_KEPT:
            _CHOICES.popitem(last=False)
    return out.copy()


def _choose(seed: int, query_blocks: np.ndarray, n_key_blocks: int, r: int,
            span=None) -> np.ndarray:
    """The choice itself. Memory stays proportional to the answer: scores are computed a
    slice of rows at a time, and each row's ``r`` smallest are found by partition."""
    out = np.zeros((len(query_blocks), r), dtype=np.int64)
    if r == 0:
        return out
    if r >= n_key_blocks:
        out[:] = np.arange(n_key_blocks)
        return out
    if n_key_blocks > _SCORES_PER_SLICE:  # rows wider than a slice: a slice of keys at a time
        for i, qb in enumerate(query_blocks):
            out[i] = _wide_row(seed, int(qb), n_key_blocks, r)
        return out
    step = max(1, _SCORES_PER_SLICE // max(n_key_blocks, 1))
    for s in range(0, len(query_blocks), step):
        scores = block_scores(seed, query_blocks[s:s + step], n_key_blocks)
        idx = np.argpartition(scores, r - 1, axis=1)[:, :r]
        picked = np.take_along_axis(scores, idx, axis=1)
        top = picked.max(axis=1, keepdims=True)
        # NOTE: the r smallest (score, j): a row whose r-th score is shared by a key block
        # left out breaks the tie by j (a stable sort of that row)
        ties = (scores == top).sum(axis=1) != (picked == top).sum(axis=1)
        if ties.any():
            idx[ties] = np.argsort(scores[ties], axis=1, kind="stable")[:, :r]
        out[s:s + step] = np.sort(idx, axis=1)
    return out


def _wide_row(seed: int, qb: int, n_key_blocks: int, r: int) -> np.ndarray:
    """The ``r`` smallest ``(score, j)`` of one row, scored a slice of key blocks at a time:
    each slice contributes every block whose score is at most its own ``r``-th smallest
    (ties included), and the few survivors are ordered exactly at the end."""
    keep_s = np.zeros(0, dtype=np.uint64)
    keep_j = np.zeros(0, dtype=np.int64)
    for c in range(0, n_key_blocks, _SCORES_PER_SLICE):
        sc = block_scores(seed, np.array([qb]), n_key_blocks, c,
                          min(c + _SCORES_PER_SLICE, n_key_blocks))[0]
        k = min(r, len(sc))
        cut = np.partition(sc, k - 1)[k - 1]
        j = np.flatnonzero(sc <= cut)
        keep_s, keep_j = np.concatenate([keep_s, sc[j]]), np.concatenate([keep_j, j + c])
        if len(keep_s) > r:  # keep this row's best r so far (ties by j), then go on
            order = np.lexsort((keep_j, keep_s))[:r]
            keep_s, keep_j = keep_s[order], keep_j[order]
    return np.sort(keep_j[np.lexsort((keep_j, keep_s))[:r]])


def random_table(seed: int, query_blocks: np.ndarray, n_key_blocks: int, r: int,
                 span=None) -> np.ndarray:
    """Boolean ``(len(query_blocks), n_key_blocks)``: which key blocks each query block keeps.

    A table over :func:`maskc.dense_limit` cells is a :class:`~maskc.MaskSizeError` located
    at ``span``."""
    from maskc.analysis.sizes import check_elements
    query_blocks = np.asarray(query_blocks)
    check_elements(len(query_blocks) * n_key_blocks, f"random()'s table of "
                   f"{len(query_blocks):,} x {n_key_blocks:,} blocks (use larger blocks)", span)
    table = np.zeros((len(query_blocks), n_key_blocks), dtype=bool)
    np.put_along_axis(table, random_choice(seed, query_blocks, n_key_blocks, r, span), True,
                      axis=1)
    return table


def random_blocks(seed: int, query_block: int, n_key_blocks: int, r: int) -> list[int]:
    """The sorted key blocks that query block ``query_block`` keeps."""
    row = random_table(seed, np.array([query_block]), n_key_blocks, r)[0]
    return [int(j) for j in np.flatnonzero(row)]
