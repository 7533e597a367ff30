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
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from maskc import ir
from maskc.analysis.blocktable import build
from maskc.errors import MaskError

__all__ = ["attention_rows", "attention", "BLOCK"]

BLOCK = 128  # tile size of the engine on a single device
_maps: "OrderedDict" = OrderedDict()


def attention(mdef: ir.MaskDef, q, k, v, scale=None, inputs=None, score_inputs=None):
    """``Mask.attention(..., backend="tiles")``: every query against every key, walking the
    visited tiles; the block map is cached per size, heads and inputs."""
    from maskc.analysis.sizes import prepare_inputs, resolve_lengths
    from maskc.backends.reference import evaluate
    Lq, Lk = q.shape[2], k.shape[2]
    q_len, kv_len = resolve_lengths(mdef, None if mdef.grid is not None else Lq,
                                    None if mdef.grid is not None else Lk)
    xs = prepare_inputs(mdef, kv_len, dict(inputs or {}), heads=q.shape[1])
    key = (mdef, q_len, kv_len, q.shape[1], tuple((n, x.shape, x.tobytes())
                                                  for n, x in sorted(xs.items())))
    bm = _maps.get(key)
    if bm is None:
        bm = build(mdef, q_len, kv_len, q.shape[1], BLOCK, BLOCK, evaluate=evaluate, **xs)
        _maps[key] = bm
        while len(_maps) > 8:
            _maps.popitem(last=False)
    else:
        _maps.move_to_end(key)
    from maskc.analysis.sizes import check_batch
    check_batch(mdef, bm.kv_num_blocks.shape[0], q.shape[0])
    rows = np.arange(q_len, dtype=np.int64)
    return attention_rows(mdef, q, k, v, rows, np.arange(kv_len, dtype=np.int64), q_len,
                          kv_len, BLOCK, scale, xs, score_inputs, block_map=bm)


def attention_rows(mdef: ir.MaskDef, q, k, v, q_rows, k_rows, q_len: int, kv_len: int,
                   block: int = 128, scale=None, inputs=None, score_inputs=None,
                   block_map=None):
    """``softmax(scale * q k^T + score) v`` where ``q``'s rows are queries ``q_rows`` (int
    array, raw query indices of a ``q_len`` x ``kv_len`` problem) and ``k``/``v``'s rows are
    keys ``k_rows``. Every key tile a query tile of ``q_rows`` visits must be wholly in
    ``k_rows`` (``MaskError`` otherwise). ``inputs``: the mask's runtime inputs over the
    whole sequence; ``block_map``: the build at ``block`` for ``q_rows``'s tiles, if known."""
    import torch
    from maskc.analysis.sizes import prepare_inputs
    from maskc.backends.reference import evaluate

    B, Hq, nq, D = q.shape
    Dv = v.shape[-1]
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    q_rows, k_rows = np.asarray(q_rows, dtype=np.int64), np.asarray(k_rows, dtype=np.int64)
    xs = prepare_inputs(mdef, kv_len, dict(inputs or {}), heads=Hq)
    tiles = np.unique(q_rows // block)
    bm = block_map if block_map is not None else build(
        mdef, q_len, kv_len, Hq, block, block, evaluate=evaluate, q_tiles=tiles, **xs)
    plan = schedule(mdef, bm, q_rows, k_rows, q_len, kv_len, block, Hq // k.shape[1], xs)
    floats = dict(score_inputs or {})
    grad = torch.is_grad_enabled() and any(
        t.requires_grad for t in (q, k, v, *floats.values()))
    dev = q.device
    # NOTE: one gather of the query rows and one of the key rows that every tile needs,
    # split into per-tile pieces: their backward is one concatenation and one index_add
    # (slicing a gathered tensor would allocate a zero gradient of its whole size per tile)
    q_all = np.concatenate([plan.q_index[e.q0:e.q0 + e.nq] for e in plan.entries]) \
        if plan.entries else np.zeros(0, dtype=np.int64)
    qs = q.index_select(2, torch.as_tensor(q_all, device=dev)).split(
        [e.nq for e in plan.entries], dim=2)
    k_idx = torch.as_tensor(plan.k_index, device=dev)
    sizes = [e.nk for e in plan.entries]
    ks = k.index_select(2, k_idx).split(sizes, dim=2)
    vs = v.index_select(2, k_idx).split(sizes, dim=2)
    # NOTE: checkpointing each tile keeps the saved state one tile's size, at the price of
    # a second forward; below this many saved score elements it is not worth it
    saved = B * sum(len(e.heads) * e.nq * e.nk for e in plan.entries)
    checkpointed = grad and saved > _SAVE_LIMIT
    outs, index = [], []
    every = len(plan.entries) and all(len(e.heads) == Hq for e in plan.entries)
    for e, qe, ke, ve in zip(plan.entries, qs, ks, vs):
        bsel = slice(None) if plan.batch_rows == 1 else slice(e.bt, e.bt + 1)
        qi, kk, vv = qe[bsel], ke[bsel], ve[bsel]
        if not every:
            hq = torch.as_tensor(e.heads, device=dev)
            hk = torch.as_tensor(e.heads // plan.rep, device=dev)
            qi, kk, vv = qi.index_select(1, hq), kk.index_select(1, hk), vv.index_select(1, hk)
        elif plan.rep > 1:
            kk = kk.repeat_interleave(plan.rep, dim=1)
            vv = vv.repeat_interleave(plan.rep, dim=1)
        keep = None if e.keep is None else torch.as_tensor(e.keep, device=dev)
        mod = None
        if mdef.score is not None:
            mod = (mdef, e.positions, q_len, kv_len, floats)
        if checkpointed:
            from torch.utils.checkpoint import checkpoint
            o = checkpoint(_attend, qi, kk, vv, keep, scale, mod, e.fused, *floats.values(),
                           use_reentrant=False)
        else:
            o = _attend(qi, kk, vv, keep, scale, mod, e.fused)
        b = np.arange(B) if plan.batch_rows == 1 else np.array([e.bt])
        lin = (b[:, None, None] * Hq + e.heads[None, :, None]) * nq + \
            plan.q_index[e.q0:e.q0 + e.nq][None, None, :]
        outs.append(o.reshape(-1, Dv))
        index.append(lin.reshape(-1))
    flat = q.new_zeros((B * Hq * nq, Dv))
    if grad and not outs:  # nothing kept: zero gradients, as the other backends give
        flat = flat + sum(t.sum() for t in (q, k, v, *floats.values())) * 0
    if outs:
        flat = flat.index_copy(0, torch.as_tensor(np.concatenate(index), device=dev),
                               torch.cat(outs).to(flat.dtype))
    return flat.view(B, Hq, nq, Dv)


_SAVE_LIMIT = 1 << 26


@dataclass(eq=False)
class _Entry:
    bt: int             # table batch row
    heads: np.ndarray   # query heads of the group
    q0: int             # this tile's rows in the schedule's q_index
    nq: int
    k0: int             # its keys in k_index
    nk: int
    keep: np.ndarray | None  # (1, 1, nq, nk) bool, None when every tile is full
    fused: bool         # every row keeps a key: torch's fused attention can take the tile
    positions: tuple    # (P, Q, K, H) 4-D arrays for the score


@dataclass(eq=False)
class _Schedule:
    entries: list
    q_index: np.ndarray  # local query rows, tile after tile
    k_index: np.ndarray  # local key rows, entry after entry
    rep: int
    batch_rows: int


_schedules: "OrderedDict" = OrderedDict()


def schedule(mdef, bm, q_rows, k_rows, q_len, kv_len, block, rep, xs) -> _Schedule:
    """Per table row, head group and query tile: the local rows to attend and the keep mask
    of its partial tiles (evaluated once, cached for the block map and these rows)."""
    from maskc.backends.reference import evaluate
    key = (id(bm), q_rows.tobytes(), k_rows.tobytes(), rep)
    hit = _schedules.get(key)
    if hit is not None and hit[0] is bm:
        _schedules.move_to_end(key)
        return hit[1]
    at = np.full(kv_len, -1, dtype=np.int64)
    at[k_rows] = np.arange(len(k_rows))
    tiles = np.unique(q_rows // block)
    order = np.argsort(q_rows // block, kind="stable")
    starts = np.searchsorted((q_rows // block)[order], tiles)
    stops = np.append(starts[1:], len(order))
    shift = kv_len - q_len
    groups = [(g, np.flatnonzero(bm.head_group == g))
              for g in range(int(bm.head_group.max()) + 1)]
    entries, k_index = [], []
    k0 = 0
    rows_b = bm.kv_num_blocks.shape[0]
    for bt in range(rows_b):
        xb = {n: x[min(bt, x.shape[0] - 1)][None, :] for n, x in xs.items()}
        for g, heads in groups:
            if not len(heads):
                continue
            for i in range(len(tiles)):
                local = order[starts[i]:stops[i]]
                rows = q_rows[local]
                keys, full = _tile_keys(bm, bt, g, i, block, kv_len)
                if not len(keys):
                    continue
                where = at[keys]
                if (where < 0).any():
                    raise MaskError(f"key row {int(keys[where < 0][0])} is visited by query "
                                    f"row {int(rows[0])} but not held")
                P = (rows + shift).reshape(1, 1, -1, 1)
                keep = None
                part = ~full
                if part.any():
                    keep = np.ones((1, 1, len(rows), len(keys)), dtype=bool)
                    keep[..., part] = np.broadcast_to(evaluate(
                        mdef.body, P=P, Q=rows.reshape(1, 1, -1, 1),
                        K=keys[part].reshape(1, 1, 1, -1), Hh=np.full((1, 1, 1, 1), heads[0]),
                        Lq=q_len, Lk=kv_len, inputs=xb, grid=mdef.grid),
                        (1, 1, len(rows), int(part.sum())))
                pos = (P, rows.reshape(1, 1, -1, 1), keys.reshape(1, 1, 1, -1),
                       heads.reshape(1, -1, 1, 1))
                fused = keep is None or bool(keep.any(-1).all())
                entries.append(_Entry(bt, heads, int(starts[i]), len(rows), k0, len(keys),
                                      keep, fused, pos))
                k_index.append(where)
                k0 += len(keys)
    out = _Schedule(entries, order.astype(np.int64),
                    np.concatenate(k_index) if k_index else np.zeros(0, dtype=np.int64),
                    rep, rows_b)
    _schedules[key] = (bm, out)
    while len(_schedules) > 8:
        _schedules.popitem(last=False)
    return out


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


def _attend(q, k, v, keep, scale, mod, fused=False, *_floats):
    """One tile row: safe softmax over the gathered keys (rows with no key give zeros)."""
    import torch
    from maskc.backends.reference import score_at
    if mod is None and fused:
        # every row keeps a key: torch's fused attention (its CPU kernel has a backward)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=keep,
                                                                scale=scale)
    s = torch.matmul(q, k.transpose(-1, -2)) * scale
    if mod is not None:
        mdef, (P, Q, K, H), Lq, Lk, tensors = mod
        s = score_at(mdef, s, P, Q, K, H, Lq, Lk, tensors)
    if keep is not None:
        s = s.masked_fill(~keep, float("-inf"))
    m = s.amax(dim=-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = torch.exp(s - m)
    denom = e.sum(dim=-1, keepdim=True)
    return torch.matmul(e, v) / torch.where(denom > 0, denom, torch.ones_like(denom))
