"""Per-sequence tables (docs/language.md section 13): the plan's stage for a batch of sequences.

Requires: a :class:`~maskc.pipeline.KernelPlan` at the tensors' lengths (its tiles) and the
call's checked :class:`~maskc.analysis.sequences.Sequences`.
Guarantees: :func:`sequence_map` returns one :class:`~maskc.analysis.blocktable.BlockMap`
whose batch row ``b`` is the block analysis of sequence ``b`` alone (the mask at lengths
``(q_lens[b], kv_lens[b])``, its queries at ``q + q_offset[b]`` and keys at ``k +
kv_offset[b]``), padded to the tensors' tile counts; key tiles whose keys ``kv_valid`` marks
all invalid are dropped from the rows that visit them. Table rows are per head pattern
(``head_group``), the same for every sequence. A mask without runtime inputs or random
blocks analyses all sequences in one vectorized pass (``build_sequences``: the cost of
their visited tiles, with no per-sequence overhead; cached per call shape); otherwise each
sequence is analysed alone (O(its visited tiles)) and cached per distinct lengths and
offsets (and input row). Tensors never change with the lengths: nothing is recompiled.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from maskc.analysis.blocktable import BlockMap, batchable, build, build_sequences
from maskc.analysis.sizes import check_elements

__all__ = ["sequence_map", "tiles_of_valid"]

_CACHED = 4096  # per-sequence analyses kept per plan (least recently used dropped)
_CACHED_BATCHES = 64  # whole-batch analyses kept per plan


def tiles_of_valid(kv_valid, kv_lens, block_k: int, n_k_tiles: int, every: bool = False
                   ) -> np.ndarray:
    """``(B, n_k_tiles)`` bool: whether a key tile holds a key that is valid and within its
    sequence's length (``every``: whether all its keys are). ``kv_valid`` is a bool tensor on
    any device; the reduction runs there, so only ``B x n_k_tiles`` flags reach the host."""
    import torch
    valid = torch.as_tensor(kv_valid)
    B, Lk = valid.shape
    lens = torch.as_tensor(list(kv_lens), device=valid.device).view(-1, 1)
    within = torch.arange(Lk, device=valid.device).view(1, -1) < lens
    v = torch.nn.functional.pad(valid & within, (0, max(n_k_tiles * block_k - Lk, 0)))
    v = v[:, :n_k_tiles * block_k].reshape(B, n_k_tiles, block_k)
    return (v.all(dim=2) if every else v.any(dim=2)).cpu().numpy()


def _one(plan, b: int, seqs, block_q: int, block_k: int) -> BlockMap | None:
    """Sequence ``b``'s tables (cached), or ``None`` when it has no query or no key."""
    lq, lk = seqs.q_lens[b], seqs.kv_lens[b]
    if lq == 0 or lk == 0:
        return None
    qo, ko = seqs.q_offset[b], seqs.kv_offset[b]
    bound = plan.bound
    inputs = {n: x[min(b, x.shape[0] - 1)][:lk] for n, x in bound.inputs.items()}
    row = tuple(x.tobytes() for x in inputs.values())
    key = ("sequence", block_q, block_k, lq, lk, qo, ko, row)
    cache = plan.cache.setdefault("sequences", OrderedDict())
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    bm = build(plan.mdef, lq, lk, bound.heads, block_q, block_k, evaluate=plan.evaluate,
               offsets=(qo, ko), **inputs)
    cache[key] = bm
    if len(cache) > _CACHED:
        cache.popitem(last=False)
    return bm


def _pad(a: np.ndarray, shape: tuple, fill) -> np.ndarray:
    out = np.full(shape, fill, dtype=a.dtype)
    out[tuple(slice(0, n) for n in a.shape)] = a
    return out


def _drop(num, idx, extra, keep_tile):
    """Rows ``(num, idx[, extra])`` without the entries whose tile ``keep_tile`` rejects
    (``keep_tile``: ``(B, n_k_tiles)``), kept in order."""
    B = num.shape[0]
    used = np.arange(idx.shape[-1]) < num[..., None]
    b = np.arange(B).reshape((B,) + (1,) * (idx.ndim - 1))
    ok = used & keep_tile[b, np.clip(idx, 0, keep_tile.shape[1] - 1)]
    order = np.argsort(~ok, axis=-1, kind="stable")  # kept entries first, in their order
    new_num = ok.sum(axis=-1).astype(np.int32)
    pad = np.arange(idx.shape[-1]) >= new_num[..., None]
    out = [np.where(pad, -1, np.take_along_axis(x, order, axis=-1)) for x in (idx, *extra)]
    return new_num, out[0], out[1:]


def sequence_map(plan, seqs, q_len: int, kv_len: int, block_q: int, block_k: int) -> BlockMap:
    """The stacked per-sequence tables at ``block_q x block_k``, over the tensors' ``q_len``
    queries and ``kv_len`` keys; see the module docstring."""
    B = seqs.batch
    Lq, Lk = q_len, kv_len
    nq, nk = max(-(-Lq // block_q), 1), max(-(-Lk // block_k), 1)
    if batchable(plan.mdef):  # every sequence in one vectorized analysis
        rows = tuple(zip(seqs.q_lens, seqs.kv_lens, seqs.q_offset, seqs.kv_offset))
        cache = plan.cache.setdefault("sequences", OrderedDict())
        key = ("batch", block_q, block_k, nq, rows)
        if key not in cache:
            cache[key] = build_sequences(plan.mdef, rows, plan.heads, block_q, block_k,
                                         plan.evaluate, n_q_tiles=nq)
            if len(cache) > _CACHED_BATCHES:
                cache.popitem(last=False)
        bm = cache[key]
        return _valid_only(bm, seqs, block_k, nk, Lq, Lk)
    maps = [_one(plan, b, seqs, block_q, block_k) for b in range(B)]
    some = next((m for m in maps if m is not None), None)
    head_group = some.head_group if some is not None else np.zeros(plan.heads, np.int32)
    G = int(head_group.max()) + 1
    fw = max([m.full_kv_indices.shape[-1] for m in maps if m is not None] + [1])
    pw = max([m.kv_indices.shape[-1] for m in maps if m is not None] + [1])
    check_elements(B * G * nq * (fw + 2 * pw), "the per-sequence tables")
    num, idx = np.zeros((B, G, nq), np.int32), np.full((B, G, nq, pw), -1, np.int32)
    live = np.full((B, G, nq, pw), -1, np.int32)
    fnum, fidx = np.zeros((B, G, nq), np.int32), np.full((B, G, nq, fw), -1, np.int32)
    for b, m in enumerate(maps):
        if m is None:
            continue
        num[b] = _pad(m.kv_num_blocks[0], (G, nq), 0)
        idx[b] = _pad(m.kv_indices[0], (G, nq, pw), -1)
        fnum[b] = _pad(m.full_kv_num_blocks[0], (G, nq), 0)
        fidx[b] = _pad(m.full_kv_indices[0], (G, nq, fw), -1)
        if m.live is not None:
            live[b] = _pad(m.live[0], (G, nq, pw), -1)
    variant = np.zeros_like(idx)
    bm = BlockMap(nq * block_q, nk * block_k, plan.heads, block_q, block_k, head_group,
                  num, idx, fnum, fidx, variant, (), {}, live)
    return _valid_only(bm, seqs, block_k, nk, Lq, Lk)


def _valid_only(bm: BlockMap, seqs, block_k: int, nk: int, Lq: int, Lk: int) -> BlockMap:
    """``bm`` over the tensors' tiles, without the key tiles that hold no valid key."""
    num, idx, fnum, fidx, live = (bm.kv_num_blocks, bm.kv_indices, bm.full_kv_num_blocks,
                                  bm.full_kv_indices, bm.live)
    if seqs.kv_valid is not None:  # tiles with no valid key are never visited
        keep = tiles_of_valid(seqs.kv_valid, seqs.kv_lens, block_k, nk)
        num, idx, (live,) = _drop(num, idx, (live,), keep)
        fnum, fidx, _ = _drop(fnum, fidx, (), keep)
    return BlockMap(max(Lq, 1), max(Lk, 1), bm.heads, bm.block_q,
                    block_k, bm.head_group, num, idx, fnum, fidx, np.zeros_like(idx), (), {},
                    live)
