"""The FlexAttention backend's ``mask_mod``: Python source generated from the IR.

:func:`make_mask_mod` renders the mask, for known lengths and head count, through the same
memoizing emitter as the Triton kernels (:mod:`maskc.backends.emit`, the constructs of
:mod:`maskc.backends.constructs`): each value computed once and named for what it is,
constants folded (the lengths too), the cheapest exact form of each construct. Everything
data-dependent is built on the host first and captured: the runtime inputs, segment starts
and lengths of ``within``, random block choices for every query block that can occur,
layout matrices; the arm each head takes in ``heads { ... }`` is resolved then too, and
errors (``random(r)`` with too few key blocks, a head no arm covers) are raised there,
located at the node. The function itself only does tensor arithmetic, comparisons,
``torch.where`` and gathers at clamped indices: no Python branching on tensor values and no
``.item()``, so it is safe under ``torch.vmap`` and ``torch.compile``.

NOTE: source rather than closures: one closure per node costs a Python call per node and
per evaluation, and hides what runs; the source can be read (``mask_mod.source``,
``inspect.getsource``) and compiles to the straight-line code a person would write.
The result equals ``backends.reference.dense`` exactly (``create_mask`` of the mask_mod).
"""

from __future__ import annotations

import hashlib
import math
import linecache
from dataclasses import dataclass, fields, replace

import numpy as np
import torch

from maskc import ir
from maskc.errors import MaskError, MaskInputError, MaskValueError
from maskc.analysis.rng import random_table
from maskc.analysis.sizes import (check_batches, prepare_chosen, prepare_inputs,
                                  resolve_lengths)
from maskc.ir.inputs import input_kinds
from maskc.ir import Op
from maskc.ir.pretty import pretty

from maskc.backends.constructs import LOWERINGS as _ARITH, Env, coord, in_set
from maskc.ir.grid import tile_counts
from maskc.backends.emit import TORCH, Emitter, w

__all__ = ["make_mask_mod", "mask_mod_source", "make_score_mod", "score_mod_source",
           "make_sequence_mask_mod", "sequence_supported", "torch_inputs", "LOWERINGS"]


@dataclass(frozen=True)
class _Static:
    """What a node may rely on (build time): bounds of the positions it sees for indices in
    range, the key axis length of its position space, and the heads that reach it."""

    p_lo: int
    p_hi: int
    k_hi: int
    Lk_outer: int
    reach: tuple | None = None   # None: every head


class _Gen:
    """Renders one mask_mod: the emitter's lines plus the host tensors it captures."""

    def __init__(self, mdef: ir.MaskDef, heads: int, inputs: dict, device):
        self.mdef, self.heads, self.inputs, self.device = mdef, heads, inputs, device
        self.e = Emitter(TORCH, ("b", "h", "q_idx", "kv_idx", "torch", "make"))
        self.captures: list[tuple[str, object]] = []
        self._captured: dict[object, str] = {}

    def scalar(self, value: int, hint: str):
        """A length-dependent int, captured by name so the source does not depend on lengths
        (0 stays a literal, so ``+ 0`` folds away)."""
        if value == 0:
            return 0
        return self.capture(("int", hint, value), lambda: int(value), hint)

    def capture(self, key, make, hint: str) -> str:
        """The name of a captured host tensor (built by ``make()`` once per key)."""
        if key not in self._captured:
            name = self.e.ns.fresh(hint)
            self.captures.append((name, make()))
            self._captured[key] = name
        return self._captured[key]

    def mask(self, n: ir.Node, env: Env):
        fn = LOWERINGS.get(type(n))
        if fn is None:
            raise MaskError(f"the flex backend cannot lower {type(n).__name__}", n.span)
        if isinstance(n, (ir.Neighborhood, ir.Tile)) and env.grid is None:
            raise MaskError(f"{type(n).__name__} needs a mask over a grid", n.span)
        out = fn(self, n, env)
        self.e.note(None)
        return out


def _tensor(x, env: Env):
    """A boolean value as a tensor (a folded constant becomes one, batched like an index)."""
    if isinstance(x, bool):
        return f"{env.K} == {env.K}" if x else f"{env.K} != {env.K}"
    return x


def _gather(g: _Gen, table: str, rows: int, length: int, pos, lo: int, hi: int, hint: str,
            limit=None):
    """``table[b, pos]`` at a clamped index, and whether ``pos`` (within ``lo..hi`` for indices
    in range) is inside ``0..length-1`` (folded when the bounds decide it), or inside
    ``0..limit-1`` for a ``limit`` computed per pair (a sequence's key count)."""
    e = g.e
    row = table if rows == 1 else e.let(f"{table}[b.clamp(0, {rows - 1})]", f"{table}_b")
    val = e.let(f"{row}[{pos}.clamp(0, {g.scalar(length - 1, 'kv_last')})]", hint)
    below = e.cmp(Op.LT, pos, limit) if limit is not None else \
        True if hi < length else e.cmp(Op.LT, pos, g.scalar(length, "kv_len"))
    ok = e.and_(True if lo >= 0 else e.cmp(Op.GE, pos, 0), below)
    return val, e.let(ok, f"ok_{hint}")


def _input(g: _Gen, name: str, x: torch.Tensor, hint: str) -> str:
    # NOTE: one batch row is captured as a 1-D tensor: no per-element batch index.
    return g.capture(("input", hint), lambda: x[0] if x.shape[0] == 1 else x, hint)


def _rows(g: _Gen, env: Env):
    """``(query row, key row, query bounds, key bounds)``: where runtime inputs are read (rows
    are positions less the key offset ``k0``, docs/language.md section 13). With an offset per
    sequence the bounds are unknown here: every range check is emitted, rows in range being
    those below the sequence's key count (``_gather``'s ``limit``)."""
    st = env.extra
    if isinstance(env.k0, int) and env.k0 == 0:
        return env.P, env.K, (st.p_lo, st.p_hi, None), (0, st.k_hi, None)
    e = g.e
    unknown = (-1, st.Lk_outer, env.Lk)
    return (e.let(e.sub(env.P, env.k0), "row_q"), e.let(e.sub(env.K, env.k0), "row_k"),
            unknown, unknown)


def _same(g: _Gen, n: ir.Same, env: Env):
    e, x = g.e, g.inputs[n.input]
    t = _input(g, n.input, x, n.input)
    e.note(f"same({n.input})")
    B, L = x.shape
    rq, rk, bq, bk = _rows(g, env)
    xq, okq = _gather(g, t, B, L, rq, *bq[:2], f"{n.input}_q", bq[2])
    xk, okk = _gather(g, t, B, L, rk, *bk[:2], f"{n.input}_k", bk[2])
    return e.let(e.and_(e.cmp(Op.EQ, xq, xk), okq, okk), f"same_{n.input}")


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


def _within(g: _Gen, n: ir.Within, env: Env):
    e, st, x = g.e, env.extra, g.inputs[n.input]
    same = _same(g, ir.Same(n.input), env)
    B, L = x.shape
    runs = {}

    def table(i, hint):
        if not runs:
            runs["st"], runs["len"] = _runs(x)
        t = runs["st"] if i == 0 else runs["len"]
        return g.capture((hint, n.input), lambda: t[0] if B == 1 else t, f"{n.input}_{hint}")
    e.note(f"within({n.input}): positions from the start of the run")
    starts = table(0, "start")
    rq, rk, bq, bk = _rows(g, env)
    sq, _ = _gather(g, starts, B, L, rq, *bq[:2], "start_q", bq[2])
    sk, _ = _gather(g, starts, B, L, rk, *bk[:2], "start_k", bk[2])
    P = e.let(e.sub(rq, sq), f"p_{n.input}")
    K = e.let(e.sub(rk, sk), f"k_{n.input}")
    lens = lambda: table(1, "len")  # noqa: E731
    lq = lambda: _gather(g, lens(), B, L, rq, *bq[:2], "len_q", bq[2])[0]  # noqa: E731
    lk = lambda: _gather(g, lens(), B, L, rk, *bk[:2], "len_k", bk[2])[0]  # noqa: E731
    # NOTE: P - start(P) lies in [0, P] for P in range; out of range, start is start(0) = 0.
    # Inside, positions are rows of the run (k0 = 0).
    nonneg = env.p_nonneg and bq[0] >= 0
    inner = replace(env, P=P, Q=P, K=K, Lq=lq, Lk=lk, p_nonneg=nonneg, k0=0,
                    extra=replace(st, p_lo=min(bq[0], 0), p_hi=max(bq[1], 0)))
    return e.and_(same, g.mask(n.body, inner))


def _heads(g: _Gen, n: ir.Heads, env: Env):
    e, st, H = g.e, env.extra, g.heads
    reach = np.ones(H, dtype=bool) if st.reach is None else np.array(st.reach, dtype=bool)
    arm_of = np.full(H, -1, dtype=np.int64)
    bodies = []
    for i, arm in enumerate(n.arms):
        hit = np.array([arm.heads is None or h in arm.heads for h in range(H)], dtype=bool)
        sel = hit & (arm_of < 0) & reach
        # NOTE: like the reference, an arm that no head takes is not lowered at all (so
        # e.g. its random(r) cannot fail), and coverage is checked over the heads that
        # reach this node.
        if sel.any():
            body = g.mask(arm.body, replace(env, extra=replace(st, reach=tuple(sel.tolist()))))
            bodies.append((ir.IntSet.of(np.flatnonzero(sel).tolist()), body))
        arm_of[sel] = i
    if ((arm_of < 0) & reach).any():
        h = int(np.flatnonzero((arm_of < 0) & reach)[0])
        raise MaskValueError(f"head {h} is not covered by any arm of heads {{...}} (with "
                             f"{H} heads); add a '_: ...' arm", n.span)
    # the last arm taken needs no test: every head that reaches here takes one of them
    out = bodies[-1][1]
    for heads, body in reversed(bodies[:-1]):
        out = e.where(in_set(g, env.h, heads, nonneg=True), _tensor(body, env), _tensor(out, env))
    return out


def _blocks(g: _Gen, n: ir.Blocks, env: Env):
    e, st, B = g.e, env.extra, n.size
    nkb = -(-st.Lk_outer // B)
    e.note(f"blocks({B}): block indices")
    P = e.let(e.floordiv(env.P, B, env.p_nonneg), "qb")
    K = e.let(e.floordiv(env.K, B, True), "kb")
    inner = replace(env, P=P, Q=P, K=K, Lq=nkb, Lk=nkb,
                    extra=replace(st, Lk_outer=nkb, p_lo=st.p_lo // B, p_hi=st.p_hi // B,
                                  k_hi=st.k_hi // B))
    return g.mask(n.body, inner)


def _tile_index(g, env: Env, of: str, shape: tuple, tiles: tuple, counts: tuple):
    e, out, stride = g.e, 0, 1
    for axis in reversed(range(len(shape))):
        c = coord(g, env, of, axis)
        out = e.add(e.mul(e.floordiv(c, tiles[axis], True), stride), out)
        stride *= counts[axis]
    return e.let(out, f"t{of}")


def _tile_blocks(g: _Gen, n: ir.TileBlocks, env: Env):
    e, st, shape = g.e, env.extra, env.grid.shape
    counts = tile_counts(shape, n.shape)
    nt = math.prod(counts)
    e.note(f"blocks(({', '.join(map(str, n.shape))}), ...): tile indices")
    P = _tile_index(g, env, "q", shape, n.shape, counts)
    K = _tile_index(g, env, "k", shape, n.shape, counts)
    inner = replace(env, P=P, Q=P, K=K, Lq=nt, Lk=nt, p_nonneg=True, grid=None,
                    extra=replace(st, Lk_outer=nt, p_lo=0, p_hi=nt - 1, k_hi=nt - 1))
    return g.mask(n.body, inner)


def _lookup(g: _Gen, t: str, rows: int, cols: int, row, env: Env, row_lo: int, row_hi: int,
            sized: bool):
    """``t[row, K]`` of a host table, False outside it (bounds folded where they decide).
    ``sized``: the table's size follows the lengths (its bounds are captured, not written)."""
    e, st = g.e, env.extra
    last_row = g.scalar(rows - 1, f"{t}_last_row") if sized else rows - 1
    last_col = g.scalar(cols - 1, f"{t}_last_col") if sized else cols - 1
    hit = e.let(f"{t}[{row}.clamp(0, {last_row}), {env.K}.clamp(0, {last_col})]", f"{t}_hit")
    return e.and_(hit, True if row_lo >= 0 else e.cmp(Op.GE, row, 0),
                  True if row_hi < rows else e.cmp(Op.LT, row, rows),
                  True if st.k_hi < cols else e.cmp(Op.LT, env.K, cols))


def _random(g: _Gen, n: ir.Random, env: Env):
    st, nkb = env.extra, env.extra.Lk_outer
    if n.r > nkb:
        raise MaskValueError(f"random({n.r}) needs at least {n.r} key blocks, but there are "
                             f"{nkb}", n.span)
    lo, hi = st.p_lo, st.p_hi
    t = g.capture(n, lambda: torch.from_numpy(random_table(
        n.seed, np.arange(lo, hi + 1), nkb, n.r, n.span)).to(g.device), "rand")
    g.e.note(f"random({n.r}, seed = {n.seed}): a host table of key blocks per query block")
    row = g.e.let(g.e.sub(env.P, g.scalar(lo, f"{t}_first")), f"{t}_row")
    return _lookup(g, t, hi - lo + 1, nkb, row, env, 0, hi - lo, sized=True)


def _layout(g: _Gen, n: ir.Layout, env: Env):
    rows = len(n.rows)
    cols = len(n.rows[0]) if rows else 0
    if not rows or not cols:
        return False
    t = g.capture(n, lambda: torch.tensor(n.rows, dtype=torch.bool, device=g.device), "layout")
    g.e.note("layout: a host table of key blocks per query block")
    return _lookup(g, t, rows, cols, env.P, env, env.extra.p_lo, env.extra.p_hi, sized=False)


def _per_head(g: _Gen, key, shape: tuple, make, hint: str, env: Env, *index) -> str:
    """``t[b, h, *index]`` of a captured ``(Bx, Hx, ...)`` table built by ``make()`` (an axis
    of size 1 is dropped when captured, so it costs no index)."""
    Bx, Hx = shape[:2]
    t = g.capture(key, lambda: make().reshape(((Bx,) if Bx > 1 else ()) +
                                              ((Hx,) if Hx > 1 else ()) + tuple(shape[2:])),
                  hint)
    idx = ([f"b.clamp(0, {Bx - 1})"] if Bx > 1 else []) + ([env.h] if Hx > 1 else [])
    idx += list(index)
    return g.e.let(f"{t}[{', '.join(idx)}]", f"{hint}_at") if idx else t


def _listed(x: torch.Tensor, width: int) -> torch.Tensor:
    """Bool ``(..., width)`` (host side): whether each value ``0..width-1`` is listed in the
    last axis of ``x`` (entries ``< 0`` are padding; duplicates are allowed)."""
    flat = x.reshape(-1, x.shape[-1]).to(torch.int64)
    out = torch.zeros((flat.shape[0], width + 1), dtype=torch.bool, device=x.device)
    out.scatter_(1, torch.where((flat < 0) | (flat >= width), width, flat), True)
    return out[:, :width].reshape(*x.shape[:-1], width)


def _select(g: _Gen, n: ir.Select, env: Env):
    e, st, x = g.e, env.extra, g.inputs[n.input]  # (Bx, Hx, NB, r); P, K are blocks here
    nb = x.shape[2]
    e.note(f"select({n.input}): the key blocks listed for this query block")
    row = _per_head(g, ("select", n.input), x.shape, lambda: x, n.input, env,
                    f"{env.P}.clamp(0, {g.scalar(nb - 1, 'nb_last')})")
    # NOTE: r comparisons and an any() over them: the host table stays O(NB * r), not O(NB^2)
    hit = e.let(f"({row} == {env.K}[..., None]).any(-1)", f"{n.input}_hit")
    return e.and_(hit, True if st.p_lo >= 0 else e.cmp(Op.GE, env.P, 0))


def _listed_at(g: _Gen, name: str, at, lo: int, hi: int, env: Env, hint: str):
    """Whether ``at`` (within ``lo..hi`` for indices in range) is listed in ``name[b, h]``:
    a host bitmap over ``0..Lk-1``, so one gather per element whatever the list's length."""
    e, x, L = g.e, g.inputs[name], env.extra.Lk_outer
    hit = _per_head(g, ("keys", name, L), x.shape[:2] + (L,), lambda: _listed(x, L),
                    f"{name}_listed", env, f"{at}.clamp(0, {g.scalar(L - 1, 'kv_last')})")
    return e.and_(hit, True if lo >= 0 else e.cmp(Op.GE, at, 0),
                  True if hi < L else e.cmp(Op.LT, at, g.scalar(L, "kv_len")))


def _keys(g: _Gen, n: ir.Keys, env: Env):
    g.e.note(f"keys({n.input}): the key positions listed")
    return _listed_at(g, n.input, env.K, 0, env.extra.k_hi, env, n.input)


def _diagonals(g: _Gen, n: ir.Diagonals, env: Env):
    e, st = g.e, env.extra
    e.note(f"diagonals({n.input}): the offsets p - k listed")
    d = e.let(e.sub(env.P, env.K), "diag")
    return _listed_at(g, n.input, d, st.p_lo - st.k_hi, st.p_hi, env, n.input)


LOWERINGS = {
    **_ARITH,
    ir.Select: _select,
    ir.Keys: _keys,
    ir.Diagonals: _diagonals,
    ir.Const: lambda g, n, env: n.keep,
    ir.Same: _same,
    ir.Within: _within,
    ir.Heads: _heads,
    ir.Blocks: _blocks,
    ir.TileBlocks: _tile_blocks,
    ir.Random: _random,
    ir.Layout: _layout,
}


def _bound(p: ir.Pred, pos: int) -> int:
    """An upper bound on ``|value|`` of a predicate expression (and of its operands)."""
    if isinstance(p, ir.PConst):
        return abs(int(p.value))
    if isinstance(p, (ir.PVar, ir.PAxis)):
        return pos
    if isinstance(p, (ir.PUn, ir.PCall)):
        return max(_bound(a, pos) for a in ir.children(p))
    a, b = _bound(p.left, pos), _bound(p.right, pos)
    return {Op.ADD: a + b, Op.SUB: a + b, Op.MUL: a * b, Op.FLOORDIV: a,
            Op.MOD: b}.get(p.op, max(a, b))


_I32 = 2 ** 31 - 1


def _needs_int64(mdef: ir.MaskDef, q_len: int, kv_len: int) -> bool:
    """Whether int32 indices could overflow: large lengths or parameters, or ``where``
    arithmetic (products of positions) beyond 32 bits; positions stay int32 otherwise."""
    pos = 2 * max(q_len, kv_len) + 2
    if 4 * pos > _I32:
        return True
    for n in ir.walk(mdef.body):
        if isinstance(n, ir.Pred):
            if _bound(n, pos) * 2 + pos > _I32:
                return True
            continue
        for f in fields(n):
            v = getattr(n, f.name)
            for x in (v if isinstance(v, tuple) else (v,)):
                if isinstance(x, int) and abs(x) * 2 + 4 * pos > _I32:
                    return True
    return False


def torch_inputs(mdef: ir.MaskDef, kv_len: int, inputs: dict, device=None) -> dict:
    """Check runtime inputs (as ``dense`` does) and return int64 tensors ``(B, kv_len)``.

    The tensors go to ``device``; by default to the device of a tensor given, else the CPU.
    """
    if device is None:
        device = next((x.device for x in inputs.values() if isinstance(x, torch.Tensor)),
                      torch.device("cpu"))
    return {name: torch.from_numpy(x.astype(np.int64)).to(device)
            for name, x in prepare_inputs(mdef, kv_len, inputs).items()}


def _normalize_inputs(mdef: ir.MaskDef, kv_len: int, inputs: dict, device,
                      heads: int) -> dict:
    out = {}
    kinds = input_kinds(mdef)
    chosen = {name: inputs[name] for name in mdef.inputs
              if kinds[name].kind != "ids" and name in inputs}
    if chosen:
        # NOTE: selections are checked on the host (entries against NB or Lk), as dense() does
        fixed = prepare_chosen(mdef, kv_len, chosen, heads)
    for name in mdef.inputs:
        if name not in inputs:
            raise MaskInputError(f"mask '{mdef.name}' needs the runtime input '{name}'",
                                 mdef.span)
        if name in chosen:
            out[name] = torch.from_numpy(fixed[name]).to(device)
            continue
        x = torch.as_tensor(inputs[name])
        if x.dim() == 1:
            x = x.unsqueeze(0)
        if x.dim() != 2 or x.shape[1] != kv_len or x.is_floating_point() or x.is_complex():
            raise MaskInputError(f"input '{name}' must hold integers of shape ({kv_len},) or "
                                 f"(B, {kv_len}), got {tuple(x.shape)} {x.dtype}", mdef.span)
        out[name] = x.to(device=device, dtype=torch.int64)
    check_batches(mdef, {name: x.shape[0] for name, x in out.items()})
    return out


def mask_mod_source(mdef: ir.MaskDef, q_len: int, kv_len: int, heads: int,
                    inputs: dict, device) -> tuple[str, list]:
    """``(source, captured tensors)`` of the mask_mod: ``make(*tensors)`` returns it."""
    g = _Gen(mdef, heads, inputs, device)
    env = _pair(g, q_len, kv_len, extra=_Static(p_lo=kv_len - q_len, p_hi=kv_len - 1,
                                                k_hi=kv_len - 1, Lk_outer=kv_len))
    expr = _tensor(g.mask(mdef.body, env), env)
    # NOTE: the lengths are arguments of make() (closure cells): equal source for every
    # length, so torch.compile sees one code object and compiles a kernel for any length
    # (only `where` predicates that read Lq/Lk, and the sign of kv_len - q_len, fold them in).
    return _module(g, "mask_mod", f"({heads} head(s)); make() takes the captured tables and "
                   "sizes.", f"maskc_{mdef.name}", "b, h, q_idx, kv_idx", expr)


def _pair(g: _Gen, q_len: int, kv_len: int, extra, literal_shift: bool = False) -> Env:
    """The environment of one (query, key) pair of a generated function: ``p`` bound from
    ``q_idx`` and the length shift (captured, or a literal), 64-bit where it must be."""
    e, mdef = g.e, g.mdef
    q, k = "q_idx", "kv_idx"
    if _needs_int64(mdef, q_len, kv_len):
        # NOTE: compiled kernels pass int32 indices; this mask's arithmetic needs 64 bits.
        q, k = e.let("q_idx.to(torch.int64)", "q"), e.let("kv_idx.to(torch.int64)", "k")
    shift = kv_len - q_len
    P = e.let(e.add(q, shift if literal_shift else g.scalar(shift, "shift")), "p")
    return Env(P=P, Q=q, K=k, h="h", Lq=q_len, Lk=kv_len, p_nonneg=shift >= 0, grid=mdef.grid,
               extra=extra)


def _sequence_pair(g: _Gen, info, kv_len: int) -> Env:
    """The environment of one pair of sequence ``b`` (docs/language.md section 13): its lengths
    and offsets read from the captured ``info`` (int64 ``(B, 4)``: q_len, kv_len, q_offset,
    kv_offset); the static bounds cover every sequence (``info`` on the host)."""
    e = g.e
    t = g.capture(("sequences",), lambda: info.to(g.device), "seqs")
    lq, lk, qo, ko = (e.let(f"{t}[b, {i}]", n) for i, n in
                      enumerate(("q_len_b", "kv_len_b", "q_offset_b", "kv_offset_b")))
    P = e.let(f"q_idx + {qo}", "p")
    K = e.let(f"kv_idx + {ko}", "k")
    lo, hi = info[:, 2], info[:, 2] + info[:, 0] - 1
    st = _Static(p_lo=int(lo.min()), p_hi=int(hi.max()),
                 k_hi=int((info[:, 3] + info[:, 1]).max()) - 1, Lk_outer=kv_len)
    return Env(P=P, Q="q_idx", K=K, h="h", Lq=lq, Lk=lk, p_nonneg=st.p_lo >= 0, grid=None,
               extra=st, k0=ko)


def sequence_supported(mdef: ir.MaskDef) -> str | None:
    """Why the per-sequence mask_mod cannot express ``mdef`` (``None``: it can): its static
    folds hold for every sequence except in what reads one sequence's key count as a size."""
    for n in ir.walk(mdef.body):
        if isinstance(n, (ir.Random, ir.Layout)):
            return f"{type(n).__name__.lower()}() blocks"
        if isinstance(n, ir.Blocks) and any(isinstance(x, ir.PVar) and x.name in ("Lq", "Lk")
                                            for x in ir.walk(n)):
            return "a 'where' inside blocks(...) that reads Lq or Lk"
    kinds = input_kinds(mdef)
    chosen = [n for n in mdef.inputs if kinds[n].kind != "ids"]
    if chosen:
        return f"input '{chosen[0]}' ({kinds[chosen[0]].kind})"
    return None


def make_sequence_mask_mod(mdef: ir.MaskDef, heads: int, seqs, kv_len: int, device,
                           inputs: dict | None = None):
    """The mask of a batch of sequences as one FlexAttention ``mask_mod``: sequence ``b``'s
    pair ``(q_idx, kv_idx)`` is the mask at its lengths with its query at ``q_idx +
    q_offset[b]`` and key at ``kv_idx + kv_offset[b]``, kept only for ``q_idx < q_lens[b]``,
    ``kv_idx < kv_lens[b]`` and ``kv_valid[b, kv_idx]``; runtime ids (``inputs``, as
    :func:`torch_inputs` returns them, ``(B, kv_len)``) are read at key rows, position less
    the sequence's ``kv_offset``; ``.source`` is the generated text."""
    info = torch.from_numpy(seqs.info()).long()
    g = _Gen(mdef, heads, inputs or {}, device)
    env = _sequence_pair(g, info, kv_len)
    e = g.e
    keep = e.and_(g.mask(mdef.body, env), e.and_(f"q_idx < {env.Lq}", f"kv_idx < {env.Lk}"))
    if seqs.kv_valid is not None:
        valid = g.capture(("kv_valid",), lambda: seqs.kv_valid.to(device), "kv_valid")
        keep = e.and_(keep, e.let(f"{valid}[b, kv_idx.clamp(0, {kv_len - 1})]", "valid"))
    expr = _tensor(keep, env)
    src, tensors = _module(g, "mask_mod", f"(a batch of sequences, {heads} head(s)); make() "
                           "takes the sequences' lengths and offsets.", f"maskc_{mdef.name}",
                           "b, h, q_idx, kv_idx", expr)
    # NOTE: captured as views marked static, as make_score_mod does (Inductor's CPU template
    # failed to compile a score_mod beside this mask_mod otherwise: 'cur_qSplitSize2')
    tensors = [t.view(t.shape) if isinstance(t, torch.Tensor) else t for t in tensors]
    for t in tensors:
        if isinstance(t, torch.Tensor):
            torch._dynamo.mark_static(t)
    mod = _maker(src, mdef.name)(*tensors)
    mod.source = src
    return mod


def _module(g: _Gen, what: str, about: str, fn: str, params: str, expr: str
            ) -> tuple[str, list]:
    """``(source, captured tensors)``: ``make(*captures)`` returning ``fn(params)``, whose
    body is the emitter's lines and which returns ``expr``."""
    mdef = g.mdef
    names = ", ".join(name for name, _ in g.captures)
    body = "".join(f"        {line}\n" for line in g.e.lines)
    spec = pretty(mdef).strip().replace("\n", "\n#   ")
    src = (f"# Generated by maskc: the FlexAttention {what} of mask `{mdef.name}`\n"
           f"# {about}\n#\n#   {spec}\n"
           f"import torch\n\n\n"
           f"def make({names}):\n"
           f"    def {fn}({params}):\n{body}"
           f"        return {expr}\n"
           f"    return {fn}\n")
    return src, [t for _, t in g.captures]


_MAKERS: dict[str, object] = {}


def _maker(src: str, name: str):
    """``make`` of a generated source, compiled once per text (one code object per text:
    torch.compile guards on the mask_mod's code)."""
    if src not in _MAKERS:
        digest = hashlib.sha256(src.encode()).hexdigest()[:16]
        filename = f"<maskc mask_mod {name} {digest}>"
        # NOTE: registered with linecache so tracebacks and inspect.getsource see the text
        linecache.cache[filename] = (len(src), None, src.splitlines(True), filename)
        scope = {"torch": torch}
        exec(compile(src, filename, "exec"), scope)  # noqa: S102 - our own generated source
        _MAKERS[src] = scope["make"]
    return _MAKERS[src]


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
    Its generated source is ``mask_mod.source`` (and ``inspect.getsource`` reads it).
    """
    q_len, kv_len = resolve_lengths(mdef, q_len, kv_len)
    if not isinstance(heads, (int, np.integer)) or heads < 1:
        raise MaskValueError(f"heads must be a positive integer, got {heads!r}", mdef.span)
    inputs = dict(inputs or {})
    if device is None:
        device = next((x.device for x in inputs.values() if isinstance(x, torch.Tensor)),
                      torch.device("cpu"))
    device = torch.device(device)
    xs = _normalize_inputs(mdef, kv_len, inputs, device, int(heads))
    src, tensors = mask_mod_source(mdef, q_len, kv_len, int(heads), xs, device)
    mask_mod = _maker(src, mdef.name)(*tensors)
    mask_mod.source = src
    return mask_mod


# ---------------------------------------------------------------- scores (`with`)

def score_mod_source(mdef: ir.MaskDef, q_len: int, kv_len: int, floats: dict,
                     literal_shift: bool = False, sequences=None) -> tuple[str, list]:
    """``(source, captured tensors)`` of the FlexAttention ``score_mod`` of a mask with a
    score: ``make(*tensors)`` returns it. The float inputs are captured as given (a tensor that
    requires grad gets its gradient through FlexAttention's captured-buffer support); their
    values never change the source, their sizes do. ``literal_shift``: ``kv_len - q_len`` is
    written into the source rather than captured."""
    from maskc.backends import scores as S
    g = _Gen(mdef, 1, {}, None if sequences is None else sequences.device)
    e = g.e
    e.ns.fresh("score")
    env = _pair(g, q_len, kv_len, extra=None, literal_shift=literal_shift) \
        if sequences is None else _sequence_pair(g, sequences, kv_len)

    def load(g, node: ir.SIndex, idx):
        x = floats[node.input]
        t = g.capture(("float", node.input), lambda: x, node.input)
        at = []
        for a, i in enumerate(idx):
            last = x.shape[a] - 1  # a literal (see make_score_mod)
            at.append(f"min(max({i}, 0), {last})" if isinstance(i, int) else
                      f"{w(i)}.clamp(0, {last})")
        return e.let(f"{t}[{', '.join(at)}]", f"{node.input}_v")

    expr = S.render(g, mdef.score, env, "score", S.TORCH_SCORES, load)
    return _module(g, "score_mod", "make() takes the captured float inputs and sizes.",
                   f"maskc_{mdef.name}_score", "score, b, h, q_idx, kv_idx", expr)


def make_score_mod(mdef: ir.MaskDef, q_len: int, kv_len: int, floats: dict, device="cpu",
                   sequences=None):
    """The mask's score as a FlexAttention ``score_mod(score, b, h, q_idx, kv_idx)``, reading
    ``floats`` (the score's float inputs, checked by ``sizes.split_score_inputs``); its
    generated source is ``score_mod.source``."""
    # NOTE: Inductor's CPU FlexAttention template (torch 2.13) generated C++ that does not
    # compile ('cur_qSplitSize8' was not declared) for a score_mod that captures symbolic
    # sizes under dynamic=True: a captured int beside a block mask, or a captured tensor
    # whose sizes are dynamic. So on the CPU the length shift is a literal (a compile per
    # distinct kv_len - q_len there; on CUDA it stays an argument), and each float input is
    # captured as a view marked static (it keeps autograd to the input and leaves the
    # caller's tensor unmarked).
    literal = torch.device(device).type == "cpu"
    if sequences is not None:  # info (B, 4) of the sequences, on the device
        sequences = torch.from_numpy(sequences.info()).long().to(device)
    src, tensors = score_mod_source(mdef, q_len, kv_len, floats, literal_shift=literal,
                                    sequences=sequences)
    for i, t in enumerate(tensors):
        if isinstance(t, torch.Tensor):
            tensors[i] = t.view(t.shape)
            torch._dynamo.mark_static(tensors[i])
    score_mod = _maker(src, f"{mdef.name}_score")(*tensors)
    score_mod.source = src
    return score_mod
