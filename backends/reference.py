"""The NumPy reference: the exact dense mask of any IR, and float64 reference attention.

This module *is* the specification every other backend is tested against. Each IR node
has one entry in ``LOWERINGS``; a node evaluates to a boolean array that broadcasts to
``(B, H, Lq, Lk)`` (a dimension of size 1 where the node does not depend on it).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

import numpy as np

from maskc import ir
from maskc.ir.grid import coords, na_axis, tile_counts, tile_index
from maskc.analysis.blockmap import uses_head
from maskc.passes.bind import check_coverage, segment_runs
from maskc.errors import MaskError, MaskInputError, MaskValueError
from maskc.analysis.rng import random_table
from maskc.analysis.sizes import (check_heads, check_size, dense_limit, is_batched, listed,
                                  prepare_inputs, resolve_lengths, set_dense_limit)

__all__ = ["dense", "attention", "CHUNK", "run", "dense_from_plan", "evaluate", "prepare_inputs",
           "dense_limit", "set_dense_limit", "LOWERINGS"]

@dataclass(frozen=True)
class _Env:
    """Index arrays, each 4-D and broadcastable to (B, H, Lq, Lk)."""

    P: np.ndarray   # aligned query position
    Q: np.ndarray   # raw query index
    K: np.ndarray   # key position
    Hh: np.ndarray  # head index
    Lq: object      # as seen by predicates (an int, or an array inside within)
    Lk: object
    Lk_outer: int   # length of the key axis in the current position space
    inputs: dict
    grid: ir.Grid | None
    reach: np.ndarray | None = None  # heads that reach this node (None: every head)
    cache: dict | None = None  # tables shared by the chunks of one dense() call (per node)
    K0: int = 0     # the first key's position: inputs are read at rows position - K0


def _eval(node: ir.Node, env: _Env) -> np.ndarray:
    fn = LOWERINGS.get(type(node))
    if fn is None:
        raise MaskError(f"the reference backend cannot evaluate {type(node).__name__}",
                        node.span)
    return fn(node, env)


def _const(n: ir.Const, env):
    return np.full((1, 1, 1, 1), n.keep)


def _window(n: ir.Window, env):
    diff = env.P - env.K
    keep = (diff <= n.before * n.dilation) & (-diff <= n.after * n.dilation)
    return keep & (diff % n.dilation == 0) if n.dilation > 1 else keep


def _in(x: np.ndarray, s: ir.IntSet) -> np.ndarray:
    out = np.zeros(x.shape, dtype=bool)
    for a, b in s.intervals:
        out |= (x >= a) & (x < b)
    return out


def _gather(x: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``x[b, idx]`` for ``x`` of shape (B, L); also whether ``idx`` was in range."""
    L = x.shape[1]
    valid = (idx >= 0) & (idx < L)
    b = np.arange(x.shape[0]).reshape(-1, 1, 1, 1)
    return x[b, np.clip(idx, 0, L - 1)], valid


def _same(n: ir.Same, env):
    x = env.inputs[n.input]
    xp, vp = _gather(x, env.P - env.K0)   # runtime inputs are indexed by key rows
    xk, vk = _gather(x, env.K - env.K0)
    return (xp == xk) & vp & vk


_runs = segment_runs  # per position: the start of its run of equal ids, the run's length


def _cached(env: _Env, key, valid, make):
    """``make()``, or the value kept under ``key`` by an earlier chunk when ``valid(kept)``."""
    if env.cache is None:
        return make()
    hit = env.cache.get(key)
    if hit is None or not valid(hit):
        hit = env.cache[key] = make()
    return hit


def _within(n: ir.Within, env):
    x = env.inputs[n.input]
    start, length = _cached(env, ("runs", n.input), lambda _: True, lambda: _runs(x))
    rp, rk = env.P - env.K0, env.K - env.K0   # key rows
    sp, _ = _gather(start, rp)
    sk, _ = _gather(start, rk)
    lp, _ = _gather(length, rp)
    lk, _ = _gather(length, rk)
    P = rp - sp
    inner = replace(env, P=P, Q=P, K=rk - sk, Lq=lp, Lk=lk, K0=0)
    return _same(ir.Same(n.input), env) & _eval(n.body, inner)


def _heads(n: ir.Heads, env):
    H = env.Hh.shape[1]
    heads = env.Hh.reshape(-1)
    reach = np.ones(H, dtype=bool) if env.reach is None else env.reach
    assigned = np.zeros(H, dtype=bool)
    out = np.zeros((1, 1, 1, 1), dtype=bool)
    for arm in n.arms:
        hit = np.ones(H, dtype=bool) if arm.heads is None else _in(heads, arm.heads)
        sel = hit & ~assigned & reach
        if sel.any():
            # NOTE: nested heads { } check coverage only over the heads that reach them
            body = _eval(arm.body, replace(env, reach=sel))
            out = np.where(sel.reshape(1, H, 1, 1), body, out)
        assigned |= hit
    if (reach & ~assigned).any():
        h = int(heads[np.flatnonzero(reach & ~assigned)[0]])  # Hh may be a slice of the heads
        raise MaskValueError(f"head {h} is not covered by any arm of heads {{...}} (with "
                             f"{H} heads); add a '_: ...' arm", n.span)
    return out


def _blocks(n: ir.Blocks, env):
    P = env.P // n.size
    nkb = -(-env.Lk_outer // n.size)
    inner = replace(env, P=P, Q=P, K=env.K // n.size, Lq=nkb, Lk=nkb, Lk_outer=nkb)
    return _eval(n.body, inner)


def _tile_blocks(n: ir.TileBlocks, env):
    shape = env.grid.shape
    nt = math.prod(tile_counts(shape, n.shape))
    P, K = tile_index(env.P, shape, n.shape), tile_index(env.K, shape, n.shape)
    inner = replace(env, P=P, Q=P, K=K, Lq=nt, Lk=nt, Lk_outer=nt, grid=None)
    return _eval(n.body, inner)


def _random(n: ir.Random, env):
    nkb = env.Lk_outer
    if n.r > nkb:
        raise MaskValueError(f"random({n.r}) needs at least {n.r} key blocks, but there are "
                             f"{nkb}", n.span)
    qbs, inv = np.unique(env.P, return_inverse=True)
    # NOTE: chunks of keys of one row of chunks share the query blocks: one table for them
    qbs, table = _cached(env, ("random", id(n), nkb), lambda kept: np.array_equal(kept[0], qbs),
                         lambda: (qbs, random_table(n.seed, qbs, nkb, n.r, n.span)))
    rows = inv.reshape(env.P.shape)
    return table[rows, np.clip(env.K, 0, nkb - 1)] & (env.K >= 0) & (env.K < nkb)


def _chosen_lookup(env, table: np.ndarray, at: np.ndarray) -> np.ndarray:
    """``table[b, h, ..., at]`` with the batch and head of every element (``Hx`` may be 1)."""
    b = np.arange(table.shape[0]).reshape(-1, 1, 1, 1)
    h = env.Hh if table.shape[1] > 1 else np.zeros((1, 1, 1, 1), dtype=np.int64)
    width = table.shape[-1]
    ok = (at >= 0) & (at < width)
    return table[(b, h) + ((np.clip(env.P, 0, table.shape[2] - 1),) if table.ndim == 4
                           else ()) + (np.clip(at, 0, width - 1),)] & ok


_LISTED_MAX = 1 << 24  # a membership table larger than this is not built: rows compared


def _select(n: ir.Select, env):
    x = env.inputs[n.input]  # (Bx, Hx, NB, r); P and K are block indices here
    nkb = x.shape[2]
    if int(np.prod(x.shape[:-1])) * (nkb + 1) > _LISTED_MAX:
        # NOTE: the table is (NB, NB + 1) per row: 64 GiB at 16M tokens in blocks of 64;
        # comparing with the r listed entries costs r times the elements instead
        return _listed_rows(env, x, env.K) & (env.P >= 0)
    table = _cached(env, ("select", n.input), lambda _: True, lambda: listed(x, nkb))
    return _chosen_lookup(env, table, env.K) & (env.P >= 0)


def _listed_rows(env, x: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Whether ``at`` is listed in row ``x[b, h, P]`` (``x``: ``(Bx, Hx, NB, r)``), by
    comparing with the row's entries (padding ``< 0`` never matches a valid ``at``)."""
    b = np.arange(x.shape[0]).reshape(-1, 1, 1, 1)
    h = env.Hh if x.shape[1] > 1 else np.zeros((1, 1, 1, 1), dtype=np.int64)
    out = np.zeros(np.broadcast_shapes(b.shape, np.shape(h), np.shape(env.P), np.shape(at)),
                   dtype=bool)
    rows = np.clip(env.P, 0, x.shape[2] - 1)
    for j in range(x.shape[3]):
        out |= x[b, h, rows, j] == at
    return out & (at >= 0)


def _keys(n: ir.Keys, env):
    x = env.inputs[n.input]  # (Bx, Hx, r)
    table = _cached(env, ("keys", n.input, env.Lk_outer), lambda _: True,
                    lambda: listed(x, env.Lk_outer))
    return _chosen_lookup(env, table, env.K)


def _diagonals(n: ir.Diagonals, env):
    x = env.inputs[n.input]  # (Bx, Hx, r): offsets p - k >= 0
    table = _cached(env, ("keys", n.input, env.Lk_outer), lambda _: True,
                    lambda: listed(x, env.Lk_outer))
    return _chosen_lookup(env, table, env.P - env.K)


def _layout(n: ir.Layout, env):
    rows = len(n.rows)
    cols = len(n.rows[0]) if rows else 0
    if not rows or not cols:
        return np.zeros((1, 1, 1, 1), dtype=bool)
    M = _cached(env, ("layout", id(n)), lambda _: True, lambda: np.array(n.rows, dtype=bool))
    ok = (env.P >= 0) & (env.P < rows) & (env.K >= 0) & (env.K < cols)
    return M[np.clip(env.P, 0, rows - 1), np.clip(env.K, 0, cols - 1)] & ok


def _neighborhood(n: ir.Neighborhood, env):
    shape = env.grid.shape
    out = np.ones((1, 1, 1, 1), dtype=bool)
    for i, (qi, ki) in enumerate(zip(coords(env.P, shape), coords(env.K, shape))):
        out = out & na_axis(qi, ki, shape[i], n.kernel[i], n.dilation[i], n.stride[i],
                            n.causal[i])
    return out


def _tile(n: ir.Tile, env):
    shape = env.grid.shape
    out = np.ones((1, 1, 1, 1), dtype=bool)
    for t, qi, ki in zip(n.sizes, coords(env.P, shape), coords(env.K, shape)):
        out = out & (qi // t == ki // t)
    return out


def _where(n: ir.Where, env):
    return np.asarray(_pred(n.pred, env), dtype=bool)


# every operator, unary and binary, as its NumPy ufunc (Python's integer semantics)
_OPS = {op: getattr(np, op.numpy) for op in ir.Op}


def _pred(p: ir.Pred, env):
    if isinstance(p, ir.PConst):
        return np.asarray(p.value)
    if isinstance(p, ir.PVar):
        return {"q": env.Q, "p": env.P, "k": env.K, "h": env.Hh, "Lq": env.Lq,
                "Lk": env.Lk}[p.name]
    if isinstance(p, ir.PAxis):
        return coords(env.K if p.of == "k" else env.P, env.grid.shape)[p.axis]
    if isinstance(p, ir.PUn):
        x = _pred(p.operand, env)
        return _OPS[p.op](x)
    if isinstance(p, ir.PBin):
        return _OPS[p.op](_pred(p.left, env), _pred(p.right, env))
    if isinstance(p, ir.PCall):
        args = [_pred(a, env) for a in p.args]
        if p.func == "abs":
            return np.abs(args[0])
        fn = np.minimum if p.func == "min" else np.maximum
        out = args[0]
        for a in args[1:]:
            out = fn(out, a)
        return out
    raise MaskError(f"the reference backend cannot evaluate {type(p).__name__}", p.span)


LOWERINGS = {
    ir.Const: _const,
    ir.Causal: lambda n, env: env.K <= env.P,
    ir.Window: _window,
    ir.Global: lambda n, env: _in(env.P, n.positions) | _in(env.K, n.positions),
    ir.Sink: lambda n, env: env.K < n.n,
    ir.Prefix: lambda n, env: (env.P < n.n) & (env.K < n.n),
    ir.Chunk: lambda n, env: env.P // n.n == env.K // n.n,
    ir.Strided: lambda n, env: (env.P - env.K) % n.s == 0,
    ir.Fixed: lambda n, env: env.K % n.s >= n.s - n.c,
    ir.Same: _same,
    ir.Within: _within,
    ir.Where: _where,
    ir.Not: lambda n, env: ~_eval(n.body, env),
    ir.And: lambda n, env: functools.reduce(np.logical_and, (_eval(t, env) for t in n.terms)),
    ir.Or: lambda n, env: functools.reduce(np.logical_or, (_eval(t, env) for t in n.terms)),
    ir.Heads: _heads,
    ir.Blocks: _blocks,
    ir.TileBlocks: _tile_blocks,
    ir.Random: _random,
    ir.Select: _select,
    ir.Keys: _keys,
    ir.Diagonals: _diagonals,
    ir.Layout: _layout,
    ir.Neighborhood: _neighborhood,
    ir.Tile: _tile,
}


# NOTE: dense() and attention() evaluate this many elements at a time, so their working
# memory is the result plus a few MiB of temporaries (int64 indices, float64 scores), not
# many times the result.
CHUNK = 1 << 18


def dense(mdef: ir.MaskDef, q_len=None, kv_len=None, heads: int = 1, **inputs) -> np.ndarray:
    """The exact mask: bool ``(heads, q_len, kv_len)``, or ``(B, heads, ...)`` for batched inputs.

    Evaluated a block of query rows (and, for long rows, of keys and heads) at a time: the
    peak memory is the result's size plus :data:`CHUNK` elements of temporaries.
    """
    return dense_at(mdef, q_len, kv_len, heads, None, 0, inputs)


def dense_at(mdef: ir.MaskDef, q_len, kv_len, heads: int, q_offset: int | None,
             kv_offset: int, inputs: dict) -> np.ndarray:
    """:func:`dense` with the query at absolute position ``q + q_offset`` and the key at
    ``k + kv_offset`` (docs/language.md section 13; ``None``: ``kv_len - q_len``)."""
    q_len, kv_len = resolve_lengths(mdef, q_len, kv_len)
    q_offset = kv_len - q_len if q_offset is None else q_offset
    heads = check_heads(mdef, heads)
    xs = prepare_inputs(mdef, kv_len, inputs, heads=heads)
    batch = max([x.shape[0] for x in xs.values()] or [1])
    check_size(mdef, (batch, heads, q_len, kv_len))
    check_coverage(mdef.body, heads)  # bind's error, before any work (chunks see some heads)
    per_head = uses_head(mdef.body)
    hs = heads if per_head else 1  # a mask that ignores the head is evaluated once
    cols = min(kv_len, CHUNK)
    hn = min(hs, max(1, CHUNK // cols))
    rows = min(q_len, max(1, CHUNK // (cols * hn)))
    out = np.empty((batch, heads, q_len, kv_len), dtype=bool)
    for b in range(batch):
        xb = {name: x[min(b, x.shape[0] - 1)][None, :] for name, x in xs.items()}
        cache: dict = {}
        for h0 in range(0, hs, hn):
            hh = np.arange(h0, min(h0 + hn, hs), dtype=np.int64).reshape(1, -1, 1, 1)
            hsl = slice(h0, h0 + hn) if per_head else slice(None)
            for r0 in range(0, q_len, rows):
                q = np.arange(r0, min(r0 + rows, q_len), dtype=np.int64).reshape(1, 1, -1, 1)
                for c0 in range(0, kv_len, cols):
                    k = np.arange(c0, min(c0 + cols, kv_len), dtype=np.int64).reshape(1, 1, 1, -1)
                    env = _Env(P=q + q_offset, Q=q, K=k + kv_offset, Hh=hh, Lq=q_len, Lk=kv_len,
                               Lk_outer=kv_len, inputs=xb, grid=mdef.grid, cache=cache,
                               K0=kv_offset)
                    got = np.asarray(_eval(mdef.body, env))
                    got = got.reshape((1,) * (4 - got.ndim) + got.shape)  # where(true): 0-D
                    out[b, hsl, r0:r0 + rows, c0:c0 + cols] = got[0]
    batched = is_batched(mdef, inputs)
    return out if batched else out[0]


def attention(mask: np.ndarray, q, k, v, scale=None, return_lse: bool = False,
              score=None):
    """Reference attention in float64 on torch tensors (differentiable through autograd).

    ``mask`` is bool ``(Hq, Lq, Lk)`` or ``(B, Hq, Lq, Lk)``. ``score`` (optional) is
    ``(mdef, tensors)``: the mask's score and its float inputs, applied to every kept pair
    in float64 (gradients flow to the inputs that require them). Returns the output in
    ``q``'s dtype, and the log-sum-exp (natural log, ``-inf`` on empty rows) if asked.
    """
    import torch

    B, Hq, Lq, D = q.shape
    Hkv = k.shape[1]
    rep = Hq // Hkv
    qd, kd, vd = q.double(), k.double(), v.double()
    if rep > 1:
        kd = kd.repeat_interleave(rep, dim=1)
        vd = vd.repeat_interleave(rep, dim=1)
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    keep = torch.from_numpy(np.ascontiguousarray(mask, dtype=bool)).to(q.device)
    if keep.dim() == 3:
        keep = keep.unsqueeze(0)
    # NOTE: a block of query rows at a time, so the float64 scores and their exponentials
    # take CHUNK elements, not (B, H, Lq, Lk) each; under autograd each block is
    # checkpointed (recomputed in the backward), so the saved state stays that size too.
    rows = max(1, CHUNK // max(B * Hq * kd.shape[2], 1))
    mod = None
    if score is not None and score[0].score is not None:
        mdef, tensors, *offsets = score   # offsets: (q_offset, kv_offset), section 10
        tensors = {n: t.to(device=q.device, dtype=torch.float64) for n, t in tensors.items()}
        mod = functools.partial(score_values, mdef, Lq=Lq, Lk=kd.shape[2], tensors=tensors,
                                offsets=offsets[0] if offsets else None)
    if rows >= Lq:
        out, lse = _attend(qd, kd, vd, keep, scale, mod, 0)
    else:
        from torch.utils.checkpoint import checkpoint
        grad = torch.is_grad_enabled() and (
            any(t.requires_grad for t in (qd, kd, vd)) or
            (mod is not None and any(t.requires_grad for t in mod.keywords["tensors"].values())))
        parts = []
        for r0 in range(0, Lq, rows):
            args = (qd[:, :, r0:r0 + rows], kd, vd, keep[:, :, r0:r0 + rows], scale, mod, r0)
            parts.append(checkpoint(_attend, *args, use_reentrant=False) if grad
                         else _attend(*args))
        out = torch.cat([o for o, _ in parts], dim=2)
        lse = torch.cat([x for _, x in parts], dim=2)
    out = out.to(q.dtype)
    return (out, lse) if return_lse else out


def _attend(qd, kd, vd, keep, scale, mod=None, r0=0):
    """Float64 attention of some query rows (``r0, r0 + 1, ...``): ``(out, lse)``, lse
    ``-inf`` on empty rows; ``mod(s, r0)`` is the score, when the mask has one."""
    import torch

    s = torch.matmul(qd, kd.transpose(-1, -2)) * scale
    if mod is not None:
        s = mod(s, r0)
    s = s.masked_fill(~keep, float("-inf"))
    m = s.amax(dim=-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = torch.exp(s - m)
    denom = e.sum(dim=-1, keepdim=True)
    out = torch.matmul(e, vd) / torch.where(denom > 0, denom, torch.ones_like(denom))
    # NOTE: log of a safe denominator: where a score (not the mask) empties a row, log(0)'s
    # derivative would reach the gradients as 0 * inf = NaN
    safe = torch.where(denom > 0, denom, torch.ones_like(denom))
    lse = torch.where(denom > 0, torch.log(safe) + m,
                      torch.full_like(denom, float("-inf"))).squeeze(-1)
    return out, lse


def score_values(mdef: ir.MaskDef, s, r0: int, Lq: int, Lk: int, tensors: dict,
                 offsets: tuple | None = None):
    """The score of ``mdef`` on float64 scores ``s`` ``(B, H, rows, Lk)`` of query rows
    ``r0, ...``: the IR evaluated with torch, indices clamped to each input's axes.
    ``offsets``: ``(q_offset, kv_offset)``, the absolute positions of the first query and key
    (default: ``Lk - Lq`` and 0)."""
    import torch

    B, H, rows, _ = s.shape
    qo, ko = offsets if offsets is not None else (Lk - Lq, 0)
    Q = np.arange(r0, r0 + rows, dtype=np.int64).reshape(1, 1, -1, 1)
    return score_at(mdef, s, Q + qo, Q, np.arange(Lk, dtype=np.int64).reshape(1, 1, 1, -1) + ko,
                    np.arange(H, dtype=np.int64).reshape(1, -1, 1, 1), Lq, Lk, tensors)


def score_at(mdef: ir.MaskDef, s, P, Q, K, Hh, Lq: int, Lk: int, tensors: dict):
    """The score of ``mdef`` on scores ``s`` at explicit 4-D position arrays ``P`` (aligned
    query), ``Q`` (query row), ``K`` (key), ``Hh`` (head), in ``s``'s dtype, with torch
    (differentiable in ``s`` and ``tensors``)."""
    import torch

    env = _Env(P=P, Q=Q, K=K, Hh=Hh, Lq=Lq, Lk=Lk, Lk_outer=Lk, inputs={}, grid=mdef.grid)
    dtype = s.dtype

    def ints(p):
        return torch.from_numpy(np.ascontiguousarray(np.asarray(_pred(p, env), dtype=np.int64))
                                ).to(s.device)

    def go(n):
        if isinstance(n, ir.SVar):
            return s
        if isinstance(n, ir.SConst):
            return torch.tensor(n.value, dtype=dtype)
        if isinstance(n, ir.SInt):
            return ints(n.value).to(dtype)
        if isinstance(n, ir.SIndex):
            x = tensors[n.input].to(device=s.device, dtype=dtype)
            idx = [ints(i).clamp(0, x.shape[a] - 1) for a, i in enumerate(n.index)]
            idx = torch.broadcast_tensors(*idx)
            return x[tuple(idx)]
        if isinstance(n, ir.SNeg):
            return -go(n.operand)
        if isinstance(n, ir.SBin):
            a, b = go(n.left), go(n.right)
            return {"+": torch.add, "-": torch.sub, "*": torch.mul, "/": torch.div}[n.op](a, b)
        if isinstance(n, ir.SCall):
            args = [go(a) for a in n.args]
            if n.func == "min":
                return functools.reduce(torch.minimum, args)
            if n.func == "max":
                return functools.reduce(torch.maximum, args)
            if n.func == "clamp":
                return torch.minimum(torch.maximum(args[0], args[1]), args[2])
            if n.func.startswith("select_"):  # derivatives of min/max (maskc.ir.scores)
                a, b, x, y = args
                first, second = (a < b, a > b) if n.func == "select_lt" else (a > b, a < b)
                return torch.where(first, x, torch.where(second, y, (x + y) * 0.5))
            return getattr(torch, n.func)(args[0])
        if isinstance(n, ir.Softcap):
            c = go(n.cap)
            return c * torch.tanh(s / c)
        if isinstance(n, ir.Alibi):
            x = tensors[n.slopes].to(device=s.device, dtype=dtype)
            h = torch.from_numpy(np.asarray(env.Hh)).to(s.device).clamp(0, x.shape[0] - 1)
            return s - x[h] * torch.from_numpy(np.abs(env.P - env.K)).to(s.device, dtype)
        raise MaskError(f"the reference backend cannot evaluate {type(n).__name__}", n.span)
    return torch.broadcast_to(go(mdef.score), s.shape)


def evaluate(node: ir.Node, P, Q, K, Hh, Lq: int, Lk: int, inputs: dict, grid,
             K0: int = 0, cache: dict | None = None) -> np.ndarray:
    """Evaluate ``node`` on explicit 4-D index arrays (e.g. a few tiles, for block analysis);
    ``K0``: the first key's position (inputs are read at rows ``position - K0``); ``cache``:
    a dict kept across calls on the same inputs and lengths (the runs of ``within``'s ids,
    the tables of selections), so slices of tiles share them."""
    return _eval(node, _Env(P=P, Q=Q, K=K, Hh=Hh, Lq=Lq, Lk=Lk, Lk_outer=Lk, inputs=inputs,
                            grid=grid, K0=K0, cache=cache))


def run(plan, q, k, v, scale=None, return_lse: bool = False, score_inputs=None):
    """Reference attention with a plan's mask: its bound sizes, heads and runtime inputs."""
    b = plan.bound
    mask = dense(b.mdef, b.q_len, b.kv_len, b.heads, **b.inputs)  # (B, H, Lq, Lk): inputs are 2-D
    return attention(mask, q, k, v, scale, return_lse, score=(b.mdef, score_inputs or {}))


def dense_from_plan(plan, kernel: str = "fwd") -> np.ndarray:
    """The mask ``(B, heads, q_len, kv_len)`` that a plan's ``kernel`` tables describe.

    Each head reads its group's table row; a full tile keeps every pair, a partial tile is
    evaluated pair by pair, any other tile keeps nothing; positions go back from the plan's
    token layout to row-major order. Equal to :func:`dense` when the plan is right (the
    property tests' check that tables, grouping and layout lose nothing).
    """
    bm, b = plan.block_map(kernel), plan.bound
    check_size(b.mdef, (b.batch, b.heads, b.q_len, b.kv_len))
    bq, bk = bm.block_q, bm.block_k
    Lq, Lk = b.q_len, b.kv_len
    layout = plan.layout
    perm = layout.perm if layout is not None else np.arange(Lq)
    kperm = layout.perm if layout is not None else np.arange(Lk)
    out = np.zeros((b.batch, b.heads, Lq, Lk), dtype=bool)
    for bi in range(b.batch):
        tb = min(bi, bm.kv_num_blocks.shape[0] - 1)
        xs = {name: x[min(bi, x.shape[0] - 1)][None, :] for name, x in b.inputs.items()}
        for h in range(b.heads):
            g = bm.head_group[h]
            for i in range(bm.n_q_tiles):
                rows = np.arange(i * bq, min((i + 1) * bq, Lq))
                for full, num, idx in ((True, bm.full_kv_num_blocks, bm.full_kv_indices),
                                       (False, bm.kv_num_blocks, bm.kv_indices)):
                    for j in idx[tb, g, i, :num[tb, g, i]]:
                        cols = np.arange(j * bk, min((j + 1) * bk, Lk))
                        qt, kt = perm[rows], kperm[cols]  # row-major tokens of this tile
                        if full:
                            keep = True
                        else:
                            Q = qt.reshape(1, 1, -1, 1)
                            keep = evaluate(b.mdef.body, P=Q + (Lk - Lq), Q=Q,
                                            K=kt.reshape(1, 1, 1, -1),
                                            Hh=np.full((1, 1, 1, 1), h), Lq=Lq, Lk=Lk,
                                            inputs=xs, grid=b.mdef.grid)[0, 0]
                        out[bi, h, qt[:, None], kt[None, :]] = keep
    return out


def run_sequences(mdef: ir.MaskDef, seqs, q, k, v, scale=None, return_lse: bool = False,
                  inputs: dict | None = None, score_inputs: dict | None = None):
    """Reference attention with per-sequence lengths, offsets, key validity and paged caches
    (docs/language.md section 13): each sequence is the mask at its own lengths and offsets,
    attended in float64; query rows past its length give zeros (lse ``-inf``)."""
    import torch

    B, Hq, Lq, _ = q.shape
    DV = v.shape[-1]
    # NOTE: bind's errors whatever the lengths (a batch of empty sequences included), as the
    # kernels' plans raise them
    check_coverage(mdef.body, check_heads(mdef, Hq))
    outs, lses = [], []
    for b in range(B):
        lq, lk, qo, ko = seqs.q_lens[b], seqs.kv_lens[b], seqs.q_offset[b], seqs.kv_offset[b]
        if seqs.page_table is not None:   # key t is row t % page_size of its page
            pages = torch.as_tensor(seqs.page_table[b, :-(-lk // seqs.page_size)],
                                    device=k.device, dtype=torch.long)
            kb, vb = (x[pages].permute(1, 0, 2, 3).reshape(x.shape[1], -1, x.shape[3])[:, :lk]
                      .unsqueeze(0) for x in (k, v))
        else:
            kb, vb = k[b:b + 1, :, :lk], v[b:b + 1, :, :lk]
        out = q.new_zeros((1, Hq, Lq, DV))
        lse = torch.full((1, Hq, Lq), float("-inf"), dtype=torch.float64, device=q.device)
        if lq > 0 and lk > 0:
            xs = {n: (x[min(b, x.shape[0] - 1)] if x.ndim == 2 else x)[..., :lk]
                  for n, x in (inputs or {}).items()}
            keep = dense_at(mdef, lq, lk, Hq, qo, ko, xs)
            if seqs.kv_valid is not None:
                keep = keep & seqs.kv_valid[b, :lk].cpu().numpy()
            check_size(mdef, (1, Hq, lq, lk), "reference score matrix")
            o, l_ = attention(keep, q[b:b + 1, :, :lq], kb, vb, scale, True,
                              score=(mdef, score_inputs or {}, (qo, ko)))
            out = torch.cat([o, out[:, :, lq:]], dim=2)
            lse = torch.cat([l_, lse[:, :, lq:]], dim=2)
        outs.append(out)
        lses.append(lse)
    out, lse = torch.cat(outs), torch.cat(lses)
    return (out, lse) if return_lse else out
