"""The FlexAttention backend: the IR as a ``mask_mod``, block masks from the block IR, attention.

This module lowers a :class:`maskc.ir.MaskDef` to a FlexAttention ``mask_mod``
through the dispatch table :data:`LOWERINGS`, keyed like ``backends.reference.LOWERINGS``.
Lowering happens in two stages so the returned function is safe under ``torch.vmap`` and
``torch.compile``:

- at build time (plain Python, the sizes known) each node turns into a closure, and every
  data-dependent table is precomputed on the host: random block choices for every query
  block that can occur, layout matrices, segment starts and lengths of ``within`` inputs,
  the arm each head takes in ``heads { ... }``; errors (``random(r)`` with too few key
  blocks, a head no arm covers) are raised here, located at the node;
- at call time the closures only do tensor arithmetic, comparisons, ``torch.where`` and
  gathers from the captured tables at clamped indices: no Python branching on tensor
  values and no ``.item()``.

The result equals ``backends.reference.dense`` exactly (``create_mask`` of the mask_mod).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch

from maskc import ir
from maskc.errors import MaskError, MaskInputError, MaskValueError
from maskc.analysis.rng import random_table
from maskc.ir.grid import coords, na_axis as _na_axis
from maskc.analysis.sizes import check_batch, check_elements, prepare_inputs, resolve_lengths

from maskc.backends import reference

__all__ = ["make_mask_mod", "torch_inputs", "LOWERINGS", "PRED_LOWERINGS"]


@dataclass(frozen=True)
class _Static:
    """What a node may look at when it is lowered (build time, plain Python values)."""

    heads: int
    Lk_outer: int             # length of the key axis in the current position space
    p_lo: int                 # bounds of the aligned query position P here (inclusive)
    p_hi: int
    grid: ir.Grid | None
    inputs: dict              # name -> int64 tensor (B, Lk)
    device: torch.device
    reach: tuple | None = None  # the heads that reach this node (None: all of them)


@dataclass(frozen=True)
class _Vars:
    """Call-time values: 0-d int64 tensors under vmap (``Lq``/``Lk`` may be Python ints)."""

    b: torch.Tensor
    h: torch.Tensor
    Q: torch.Tensor           # raw query index (as predicates see it)
    P: torch.Tensor           # aligned query position
    K: torch.Tensor           # key position
    Lq: object
    Lk: object


MaskFn = Callable[[_Vars], torch.Tensor]


def _lower(node: ir.Node, st: _Static) -> MaskFn:
    fn = LOWERINGS.get(type(node))
    if fn is None:
        raise MaskError(f"the flex backend cannot lower {type(node).__name__}", node.span)
    return fn(node, st)


def _const_fn(keep: bool) -> MaskFn:
    # NOTE: derived from an index, so the value is batched like every other node's.
    if keep:
        return lambda v: v.K == v.K
    return lambda v: v.K != v.K


def _tensor(x, v: _Vars) -> torch.Tensor:
    """A predicate result as a bool tensor (a constant predicate gives a Python bool)."""
    return x if isinstance(x, torch.Tensor) else _const_fn(bool(x))(v)


def _in(x, s: ir.IntSet):
    out = None
    for a, b in s.intervals:
        hit = (x >= a) & (x < b)
        out = hit if out is None else out | hit
    return out


def _global(n: ir.Global, st: _Static) -> MaskFn:
    if not n.positions.intervals:
        return _const_fn(False)
    return lambda v: _in(v.P, n.positions) | _in(v.K, n.positions)


def _window(n: ir.Window, st: _Static) -> MaskFn:
    before, after, d = n.before * n.dilation, n.after * n.dilation, n.dilation

    def fn(v):
        diff = v.P - v.K
        keep = (diff <= before) & (-diff <= after)
        return keep & (diff % d == 0) if d > 1 else keep
    return fn


def _rows(x: torch.Tensor, b: torch.Tensor):
    """The row of a ``(B, L)`` table that batch ``b`` reads (row 0 when B == 1)."""
    return x[0] if x.shape[0] == 1 else x[b.clamp(0, x.shape[0] - 1)]


def _gather(x: torch.Tensor, b, idx):
    """``x[b, idx]`` at a clamped index, and whether ``idx`` was in range."""
    L = x.shape[1]
    return _rows(x, b)[idx.clamp(0, L - 1)], (idx >= 0) & (idx < L)


def _same_fn(x: torch.Tensor) -> MaskFn:
    def fn(v):
        xp, vp = _gather(x, v.b, v.P)
        xk, vk = _gather(x, v.b, v.K)
        return (xp == xk) & vp & vk
    return fn


def _same(n: ir.Same, st: _Static) -> MaskFn:
    return _same_fn(st.inputs[n.input])


def _runs(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per position (host side): the first index of its run of equal values, its length."""
    B, L = x.shape
    idx = torch.arange(L, device=x.device).expand(B, L)
    starts = torch.ones((B, L), dtype=torch.bool, device=x.device)
    starts[:, 1:] = x[:, 1:] != x[:, :-1]
    ends = torch.ones_like(starts)
    ends[:, :-1] = starts[:, 1:]
    start = torch.cummax(torch.where(starts, idx, 0), dim=1).values
    end = torch.cummin(torch.where(ends, idx, L).flip(1), dim=1).values.flip(1)
    return start.contiguous(), (end - start + 1).contiguous()


def _within(n: ir.Within, st: _Static) -> MaskFn:
    x = st.inputs[n.input]
    start, length = _runs(x)
    same = _same_fn(x)
    # NOTE: P - start(P) lies in [0, P] for P in range; out of range, start is start(0) = 0.
    inner = _lower(n.body, replace(st, p_lo=min(st.p_lo, 0), p_hi=max(st.p_hi, 0)))

    def fn(v):
        sp, _ = _gather(start, v.b, v.P)
        sk, _ = _gather(start, v.b, v.K)
        lp, _ = _gather(length, v.b, v.P)
        lk, _ = _gather(length, v.b, v.K)
        P = v.P - sp
        return same(v) & inner(replace(v, P=P, Q=P, K=v.K - sk, Lq=lp, Lk=lk))
    return fn


def _not(n: ir.Not, st: _Static) -> MaskFn:
    body = _lower(n.body, st)
    return lambda v: ~body(v)


def _nary(op):
    def lower(n, st: _Static) -> MaskFn:
        terms = [_lower(t, st) for t in n.terms]
        return lambda v: functools.reduce(op, (t(v) for t in terms))
    return lower


def _heads(n: ir.Heads, st: _Static) -> MaskFn:
    H = st.heads
    reach = np.ones(H, dtype=bool) if st.reach is None else np.array(st.reach, dtype=bool)
    arm_of = np.full(H, -1, dtype=np.int64)
    bodies: list[tuple[int, MaskFn]] = []
    for i, arm in enumerate(n.arms):
        hit = np.array([arm.heads is None or h in arm.heads for h in range(H)], dtype=bool)
        sel = hit & (arm_of < 0) & reach
        # NOTE: like the reference, an arm that no head takes is not lowered at all (so
        # e.g. its random(r) cannot fail), and coverage is checked over the heads that
        # reach this node.
        if sel.any():
            bodies.append((i, _lower(arm.body, replace(st, reach=tuple(sel.tolist())))))
        arm_of[sel] = i
    if ((arm_of < 0) & reach).any():
        h = int(np.flatnonzero((arm_of < 0) & reach)[0])
        raise MaskValueError(f"head {h} is not covered by any arm of heads {{...}} (with "
                             f"{H} heads); add a '_: ...' arm", n.span)
    table = torch.from_numpy(arm_of).to(st.device)
    if len(bodies) == 1:
        return bodies[0][1]

    def fn(v):
        arm = table[v.h.clamp(0, H - 1)]
        out = _const_fn(False)(v)
        for i, body in bodies:
            out = torch.where(arm == i, body(v), out)
        return out
    return fn


def _blocks(n: ir.Blocks, st: _Static) -> MaskFn:
    B = n.size
    nkb = -(-st.Lk_outer // B)
    inner = _lower(n.body, replace(st, Lk_outer=nkb, p_lo=st.p_lo // B, p_hi=st.p_hi // B))

    def fn(v):
        P = v.P // B
        return inner(replace(v, P=P, Q=P, K=v.K // B, Lq=nkb, Lk=nkb))
    return fn


def _random(n: ir.Random, st: _Static) -> MaskFn:
    nkb = st.Lk_outer
    if n.r > nkb:
        raise MaskValueError(f"random({n.r}) needs at least {n.r} key blocks, but there are "
                             f"{nkb}", n.span)
    lo, hi = st.p_lo, st.p_hi
    table = torch.from_numpy(random_table(n.seed, np.arange(lo, hi + 1), nkb, n.r, n.span))
    table = table.to(st.device)
    rows = hi - lo + 1

    def fn(v):
        keep = table[(v.P - lo).clamp(0, rows - 1), v.K.clamp(0, nkb - 1)]
        return keep & (v.K >= 0) & (v.K < nkb)
    return fn


def _layout(n: ir.Layout, st: _Static) -> MaskFn:
    rows = len(n.rows)
    cols = len(n.rows[0]) if rows else 0
    if not rows or not cols:
        return _const_fn(False)
    M = torch.tensor(n.rows, dtype=torch.bool, device=st.device)

    def fn(v):
        ok = (v.P >= 0) & (v.P < rows) & (v.K >= 0) & (v.K < cols)
        return M[v.P.clamp(0, rows - 1), v.K.clamp(0, cols - 1)] & ok
    return fn


def na_axis(qi, ki, n: int, K: int, d: int, s: int, causal: bool):
    """NATTEN's generalized neighborhood rule on one axis, on tensors (the reference's rule)."""
    return _na_axis(qi, ki, n, K, d, s, causal, torch.minimum,
                             lambda x, lo: torch.clamp(x, min=lo))


def _grid_shape(node: ir.Node, st: _Static) -> tuple[int, ...]:
    if st.grid is None:
        raise MaskError(f"{type(node).__name__} needs a mask over a grid", node.span)
    return st.grid.shape


def _neighborhood(n: ir.Neighborhood, st: _Static) -> MaskFn:
    shape = _grid_shape(n, st)

    def fn(v):
        out = None
        for i, (qi, ki) in enumerate(zip(coords(v.P, shape), coords(v.K, shape))):
            keep = na_axis(qi, ki, shape[i], n.kernel[i], n.dilation[i], n.stride[i],
                           n.causal[i])
            out = keep if out is None else out & keep
        return out if out is not None else _const_fn(True)(v)
    return fn


def _tile(n: ir.Tile, st: _Static) -> MaskFn:
    shape = _grid_shape(n, st)

    def fn(v):
        out = _const_fn(True)(v)
        for t, qi, ki in zip(n.sizes, coords(v.P, shape), coords(v.K, shape)):
            out = out & (qi // t == ki // t)
        return out
    return fn


def _where(n: ir.Where, st: _Static) -> MaskFn:
    pred = _lower_pred(n.pred, st)
    return lambda v: _tensor(pred(v), v)


# ---------------------------------------------------------------- predicates

def _lower_pred(p: ir.Pred, st: _Static) -> Callable[[_Vars], object]:
    fn = PRED_LOWERINGS.get(type(p))
    if fn is None:
        raise MaskError(f"the flex backend cannot lower {type(p).__name__}", p.span)
    return fn(p, st)


def _is_t(x) -> bool:
    return isinstance(x, torch.Tensor)


def _and(a, b):
    return a & b if _is_t(a) or _is_t(b) else bool(a) and bool(b)


def _or(a, b):
    return a | b if _is_t(a) or _is_t(b) else bool(a) or bool(b)


def _minimum(a, b):
    return torch.where(a <= b, a, b) if _is_t(a) or _is_t(b) else min(a, b)


def _maximum(a, b):
    return torch.where(a >= b, a, b) if _is_t(a) or _is_t(b) else max(a, b)


# NOTE: on int64 tensors `//` floors and `%` takes the divisor's sign, like Python (the
# language's integer semantics); Python ints mix in as scalars.
import operator  # noqa: E402

_BIN = {op: getattr(operator, op.python) for op in ir.Op if not op.unary}
_BIN.update({ir.Op.AND: _and, ir.Op.OR: _or})


def _pconst(p: ir.PConst, st: _Static):
    value = p.value
    return lambda v: value


def _pvar(p: ir.PVar, st: _Static):
    attr = {"q": "Q", "p": "P", "k": "K", "h": "h", "Lq": "Lq", "Lk": "Lk"}[p.name]
    return lambda v: getattr(v, attr)


def _paxis(p: ir.PAxis, st: _Static):
    shape = _grid_shape(p, st)
    stride = int(np.prod(shape[p.axis + 1:], dtype=np.int64))
    size = shape[p.axis]
    return lambda v: ((v.K if p.of == "k" else v.P) // stride) % size


def _pun(p: ir.PUn, st: _Static):
    x = _lower_pred(p.operand, st)
    if p.op is ir.Op.NEG:
        return lambda v: -x(v)

    def not_(v):
        a = x(v)
        return torch.logical_not(a) if _is_t(a) else not a
    return not_


def _pbin(p: ir.PBin, st: _Static):
    op = _BIN.get(p.op)
    if op is None:
        raise MaskError(f"the flex backend cannot lower the operator {p.op!r}", p.span)
    left, right = _lower_pred(p.left, st), _lower_pred(p.right, st)
    return lambda v: op(left(v), right(v))


def _pcall(p: ir.PCall, st: _Static):
    args = [_lower_pred(a, st) for a in p.args]
    if p.func == "abs":
        return lambda v: abs(args[0](v))
    if p.func not in ("min", "max"):
        raise MaskError(f"the flex backend cannot lower the function {p.func!r}", p.span)
    fn = _minimum if p.func == "min" else _maximum
    return lambda v: functools.reduce(fn, (a(v) for a in args))


PRED_LOWERINGS = {
    ir.PConst: _pconst,
    ir.PVar: _pvar,
    ir.PAxis: _paxis,
    ir.PUn: _pun,
    ir.PBin: _pbin,
    ir.PCall: _pcall,
}


LOWERINGS = {
    ir.Const: lambda n, st: _const_fn(n.keep),
    ir.Causal: lambda n, st: lambda v: v.K <= v.P,
    ir.Window: _window,
    ir.Global: _global,
    ir.Sink: lambda n, st: lambda v: v.K < n.n,
    ir.Prefix: lambda n, st: lambda v: (v.P < n.n) & (v.K < n.n),
    ir.Chunk: lambda n, st: lambda v: v.P // n.n == v.K // n.n,
    ir.Strided: lambda n, st: lambda v: (v.P - v.K) % n.s == 0,
    ir.Fixed: lambda n, st: lambda v: v.K % n.s >= n.s - n.c,
    ir.Same: _same,
    ir.Within: _within,
    ir.Where: _where,
    ir.Not: _not,
    ir.And: _nary(torch.logical_and),
    ir.Or: _nary(torch.logical_or),
    ir.Heads: _heads,
    ir.Blocks: _blocks,
    ir.Random: _random,
    ir.Layout: _layout,
    ir.Neighborhood: _neighborhood,
    ir.Tile: _tile,
}


def torch_inputs(mdef: ir.MaskDef, kv_len: int, inputs: dict, device=None) -> dict:
    """Check runtime inputs (as ``dense`` does) and return int64 tensors ``(B, kv_len)``.

    The tensors go to ``device``; by default to the device of a tensor given, else the CPU.
    """
    if device is None:
        device = next((x.device for x in inputs.values() if isinstance(x, torch.Tensor)),
                      torch.device("cpu"))
    return {name: torch.from_numpy(x).to(device)
            for name, x in prepare_inputs(mdef, kv_len, inputs).items()}


def _normalize_inputs(mdef: ir.MaskDef, kv_len: int, inputs: dict, device) -> dict:
    out = {}
    for name in mdef.inputs:
        if name not in inputs:
            raise MaskInputError(f"mask '{mdef.name}' needs the runtime input '{name}'",
                                 mdef.span)
        x = torch.as_tensor(inputs[name])
        if x.dim() == 1:
            x = x.unsqueeze(0)
        if x.dim() != 2 or x.shape[1] != kv_len or x.is_floating_point() or x.is_complex():
            raise MaskInputError(f"input '{name}' must hold integers of shape ({kv_len},) or "
                                 f"(B, {kv_len}), got {tuple(x.shape)} {x.dtype}", mdef.span)
        out[name] = x.to(device=device, dtype=torch.int64)
    return out


def make_mask_mod(mdef: ir.MaskDef, q_len: int, kv_len: int, heads: int,
                  inputs: dict | None = None, *, device=None):
    """The mask as a FlexAttention ``mask_mod(b, h, q_idx, kv_idx) -> bool tensor``.

    ``q_len``/``kv_len`` default as in ``dense`` (``None`` for a grid's size; ``kv_len`` to
    ``q_len``). ``inputs`` maps each runtime input to an integer tensor of shape ``(kv_len,)`` or
    ``(B, kv_len)`` (read as ``x[b, pos]``). ``heads`` is the number of query heads ``H``:
    arms of ``heads { ... }`` are resolved for it now, and a head that no arm covers raises
    :class:`~maskc.MaskValueError` here, as do ``random(r)`` blocks with too few key blocks.
    Captured tables live on ``device`` (default: the inputs' device, else the CPU).
    ``create_mask(mask_mod, B, heads, q_len, kv_len)`` equals ``reference.dense`` exactly;
    the function uses only vmap-safe tensor ops (no branching on values, no ``.item()``).
    """
    q_len, kv_len = resolve_lengths(mdef, q_len, kv_len)
    if not isinstance(heads, (int, np.integer)) or heads < 1:
        raise MaskValueError(f"heads must be a positive integer, got {heads!r}", mdef.span)
    inputs = dict(inputs or {})
    if device is None:
        device = next((x.device for x in inputs.values() if isinstance(x, torch.Tensor)),
                      torch.device("cpu"))
    device = torch.device(device)
    st = _Static(heads=int(heads), Lk_outer=kv_len, p_lo=kv_len - q_len, p_hi=kv_len - 1,
                 grid=mdef.grid, inputs=_normalize_inputs(mdef, kv_len, inputs, device),
                 device=device)
    body = _lower(mdef.body, st)
    shift = kv_len - q_len

    def mask_mod(b, h, q_idx, kv_idx):
        # NOTE: int64 throughout: compiled kernels pass int32 indices, and predicates may
        # multiply positions (the checker bounds every expression by 64 bits).
        q = q_idx.to(torch.int64)
        return body(_Vars(b=b, h=h.to(torch.int64), Q=q, P=q + shift,
                          K=kv_idx.to(torch.int64), Lq=q_len, Lk=kv_len))

    mask_mod.__name__ = f"maskc_{mdef.name}"
    return mask_mod
