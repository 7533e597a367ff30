"""Attention that walks a block map's visited tiles with torch operations.

The engine under ``maskc.distributed`` for the masks the kernels cannot run per sequence
(grids, ``random`` blocks, selections): its queries and keys are any rows of the whole
sequence, given by their indices, so a rank attends its own query rows against the key
rows it holds and received, with the mask evaluated at their real positions and lengths.
For each head group and query tile it gathers the key rows of the visited tiles, masks
the partial ones (the reference evaluator on those tiles only), applies the score, and
takes a safe softmax. Differentiable through autograd; with gradients each query tile is
checkpointed, so the saved state stays one tile's size. No ``Lq x Lk`` matrix is built.
"""

from __future__ import annotations

import math

import numpy as np

from maskc import ir
from maskc.analysis.blocktable import build
from maskc.errors import MaskError

__all__ = ["attention_rows"]


def attention_rows(mdef: ir.MaskDef, q, k, v, q_rows, k_rows, q_len: int, kv_len: int,
                   block: int = 128, scale=None, inputs=None, score_inputs=None,
                   block_map=None):
    """``softmax(scale * q k^T + score) v`` where ``q``'s rows are queries ``q_rows`` (int
    array, raw query indices of a ``q_len`` x ``kv_len`` problem) and ``k``/``v``'s rows are
    keys ``k_rows``. Every key tile a query tile of ``q_rows`` visits must be wholly in
    ``k_rows`` (``MaskError`` otherwise). ``inputs``: the mask's runtime inputs over the
    whole sequence; ``block_map``: the build at ``block`` for ``q_rows``'s tiles, if known."""
    import torch
    from maskc.backends.reference import evaluate, score_at

    from maskc.analysis.sizes import prepare_inputs
    B, Hq, nq, D = q.shape
    Hkv, Dv = k.shape[1], v.shape[-1]
    rep = Hq // Hkv
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    q_rows, k_rows = np.asarray(q_rows, dtype=np.int64), np.asarray(k_rows, dtype=np.int64)
    xs = prepare_inputs(mdef, kv_len, dict(inputs or {}), heads=Hq)
    tiles = np.unique(q_rows // block)
    bm = block_map if block_map is not None else build(
        mdef, q_len, kv_len, Hq, block, block, evaluate=evaluate, q_tiles=tiles, **xs)
    # where each key row is held locally
    at = np.full(kv_len, -1, dtype=np.int64)
    at[k_rows] = np.arange(len(k_rows))
    tile_of = {int(t): i for i, t in enumerate(tiles)}
    shift = kv_len - q_len
    floats = {n: t for n, t in (score_inputs or {}).items()}
    grad = torch.is_grad_enabled() and any(
        t.requires_grad for t in (q, k, v, *floats.values()))
    out = q.new_zeros((B, Hq, nq, Dv))
    groups = []
    for g in range(int(bm.head_group.max()) + 1):
        heads = np.flatnonzero(bm.head_group == g)
        if len(heads):
            groups.append((g, heads))
    # query rows of each tile, in the order q holds them
    order = np.argsort(q_rows // block, kind="stable")
    starts = np.searchsorted((q_rows // block)[order], tiles)
    stops = np.append(starts[1:], len(order))
    pieces = []  # (heads, local row indices, out tile)
    tb_count = bm.kv_num_blocks.shape[0]
    for bt in range(tb_count):  # table rows: one for the batch, or one per batch entry
        bsel = slice(None) if tb_count == 1 else slice(bt, bt + 1)
        xb = {n: x[min(bt, x.shape[0] - 1)][None, :] for n, x in xs.items()}
        for g, heads in groups:
            hq = torch.as_tensor(heads, device=q.device)
            hk = torch.as_tensor(heads // rep, device=q.device)
            for i, t in enumerate(tiles):
                local = order[starts[i]:stops[i]]
                rows = q_rows[local]
                keys, full = _tile_keys(bm, bt, g, tile_of[int(t)], block, kv_len)
                if not len(keys):
                    continue
                where = at[keys]
                if (where < 0).any():
                    raise MaskError(f"key row {int(keys[where < 0][0])} is visited by query "
                                    f"row {int(rows[0])} but not held")
                P = (rows + shift).reshape(1, 1, -1, 1)
                keep = np.ones((1, 1, len(rows), len(keys)), dtype=bool)
                part = ~full
                if part.any():
                    keep[..., part] = np.broadcast_to(evaluate(
                        mdef.body, P=P, Q=rows.reshape(1, 1, -1, 1),
                        K=keys[part].reshape(1, 1, 1, -1), Hh=np.full((1, 1, 1, 1), heads[0]),
                        Lq=q_len, Lk=kv_len, inputs=xb, grid=mdef.grid),
                        (1, 1, len(rows), int(part.sum())))
                mod = None
                if mdef.score is not None:
                    pos = (P, rows.reshape(1, 1, -1, 1), keys.reshape(1, 1, 1, -1),
                           heads.reshape(1, -1, 1, 1))
                    mod = (mdef, pos, q_len, kv_len, floats, score_at)
                li = torch.as_tensor(local, device=q.device)
                ki = torch.as_tensor(where, device=q.device)
                qi = q[bsel][:, hq][:, :, li]
                kk = k[bsel][:, hk][:, :, ki]
                vv = v[bsel][:, hk][:, :, ki]
                m = torch.as_tensor(keep, device=q.device)
                if grad:
                    from torch.utils.checkpoint import checkpoint
                    o = checkpoint(_attend, qi, kk, vv, m, scale, mod, *floats.values(),
                                   use_reentrant=False)
                else:
                    o = _attend(qi, kk, vv, m, scale, mod)
                pieces.append((bsel, hq, li, o))
    if not grad:
        for bsel, hq, li, o in pieces:
            idx = out[bsel]
            idx[:, hq[:, None], li[None, :]] = o.to(out.dtype)
        return out
    # differentiable assembly: every (batch, head, row) is written once
    flat = out.reshape(-1, Dv)
    index, values = [], []
    for bsel, hq, li, o in pieces:
        b = torch.arange(B, device=q.device)[bsel]
        lin = (b[:, None, None] * Hq + hq[None, :, None]) * nq + li[None, None, :]
        index.append(lin.reshape(-1))
        values.append(o.reshape(-1, Dv).to(out.dtype))
    if index:
        flat = flat.index_copy(0, torch.cat(index), torch.cat(values))
    return flat.view(B, Hq, nq, Dv)


def _tile_keys(bm, bt: int, g: int, i: int, block: int, kv_len: int):
    """The key rows of query tile row ``i``'s visited tiles and whether each is in a full
    tile."""
    full_t = bm.full_kv_indices[bt, g, i, :bm.full_kv_num_blocks[bt, g, i]]
    part_t = bm.kv_indices[bt, g, i, :bm.kv_num_blocks[bt, g, i]]
    keys, full = [], []
    for ts, f in ((full_t, True), (part_t, False)):
        for t in ts:
            r = np.arange(int(t) * block, min((int(t) + 1) * block, kv_len), dtype=np.int64)
            keys.append(r)
            full.append(np.full(len(r), f))
    if not keys:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool)
    return np.concatenate(keys), np.concatenate(full)


def _attend(q, k, v, keep, scale, mod, *_floats):
    """One tile row: safe softmax over the gathered keys (rows with no key give zeros)."""
    import torch
    s = torch.matmul(q, k.transpose(-1, -2)) * scale
    if mod is not None:
        mdef, (P, Q, K, H), Lq, Lk, tensors, score_at = mod
        s = score_at(mdef, s, P, Q, K, H, Lq, Lk, tensors)
    s = s.masked_fill(~keep, float("-inf"))
    m = s.amax(dim=-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = torch.exp(s - m)
    denom = e.sum(dim=-1, keepdim=True)
    return torch.matmul(e, v) / torch.where(denom > 0, denom, torch.ones_like(denom))
