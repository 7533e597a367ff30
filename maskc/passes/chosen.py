"""Chosen tiles: the kernels' tables for ``select``/``keys``/``diagonals``, merged on the device.

Requires: a verified mask whose chosen primitives (docs/language.md section 10) occur only
positively (never under ``~``), over no grid, for the Triton target, with the selections
given as torch tensors. Guarantees: a :class:`ChosenTiles` whose ``static`` bound is the
mask with every chosen primitive replaced by ``none`` (its tables are the plan's block
analysis: the tiles the static part keeps, full ones included), and whose :meth:`tables`
turn one call's tensors into a kernel's tables on their device with tensor operations only:
no ``.item()``, ``.cpu()``, ``.tolist()`` or synchronization, and nothing recompiles when a
selection changes.

Why it is exact: the mask is monotone in each chosen primitive, so every pair it keeps is
kept by the static part or lies in a tile some chosen entry touches. Those tiles are visited
as partial tiles (the kernel evaluates the whole mask there, so a tile the chosen entry only
grazes is still exact); a tile the static part alone makes full stays full, and a tile both
static and chosen is visited once.

Per query tile ``i`` (positions ``p`` in ``[i BM + Lk - Lq, ...]``) the candidates are:
``select`` with blocks of ``S`` tokens: the key tiles of the blocks listed in the rows of the
query blocks the tile touches; ``keys``: the key tile of each listed key; ``diagonals``: the
key tiles of ``p - d`` over the tile's positions. Entries are checked against their bound
(``NB`` or ``Lk``) once per tensor version (:meth:`ChosenTiles.check`): the first call with a
new tensor reads it back once; tensors the estimators return are known in range and are
never read back.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field, replace

import numpy as np

from maskc import ir
from maskc.errors import MaskInputError
from maskc.ir.inputs import input_kinds

__all__ = ["ChosenTiles", "Source", "mode", "sources", "static_mask", "chosen_inputs",
           "mark_checked", "check_shapes"]

_CHOSEN = (ir.Select, ir.Keys, ir.Diagonals)


@dataclass(frozen=True)
class Source:
    """One chosen primitive: ``kind`` is ``select``/``keys``/``diagonals``; ``block`` the
    tokens per block of a selection."""

    kind: str
    input: str
    block: int | None = None


def sources(mdef: ir.MaskDef) -> tuple[Source, ...] | None:
    """The chosen primitives of ``mdef`` in walk order, or ``None`` if one occurs under a
    negation (the mask is then not monotone in it: its tables come from the host)."""
    out: list[Source] = []

    def go(n: ir.Node, negated: bool, block: int) -> bool:
        if isinstance(n, _CHOSEN):
            if negated:
                return False
            kind = {ir.Select: "select", ir.Keys: "keys", ir.Diagonals: "diagonals"}[type(n)]
            src = Source(kind, n.input, block if kind == "select" else None)
            if src not in out:
                out.append(src)
            return True
        inner = block * n.size if isinstance(n, ir.Blocks) else block
        flip = negated ^ isinstance(n, ir.Not)
        return all(go(c, flip, inner) for c in ir.children(n))

    return tuple(out) if go(mdef.body, False, 1) else None


def chosen_inputs(mdef: ir.MaskDef) -> tuple[str, ...]:
    """The inputs of ``mdef`` that ``select``/``keys``/``diagonals`` read."""
    return tuple(n for n, k in input_kinds(mdef).items() if k.kind != "ids")


def mode(mdef: ir.MaskDef, target: str, inputs: dict) -> str | None:
    """``"device"`` when a plan for ``target`` merges the chosen tiles per call on the
    device, ``"host"`` when block analysis reads the selections (another target, a grid, a
    negated selection, or numpy inputs), ``None`` for a mask without chosen inputs."""
    names = chosen_inputs(mdef)
    if not names:
        return None
    tensors = all(type(inputs.get(n)).__module__.startswith("torch") and
                  hasattr(inputs.get(n), "detach") for n in names)
    if target == "triton" and mdef.grid is None and tensors and sources(mdef) is not None:
        return "device"
    return "host"


def static_mask(mdef: ir.MaskDef) -> ir.MaskDef:
    """``mdef`` with every chosen primitive ``none`` and without the inputs they read.
    Untouched subtrees are the same objects (the host tables of ``random``/``layout`` are
    keyed by node identity), and the top-level terms stay in place (live bits index them)."""

    def go(n: ir.Node) -> ir.Node:
        if isinstance(n, _CHOSEN):
            return ir.Const(False, span=n.span)
        kids = ir.children(n)
        new = tuple(go(c) for c in kids)
        if all(a is b for a, b in zip(kids, new)):
            return n
        from maskc.ir.rewrite import map_children
        it = iter(new)
        return map_children(n, lambda _: next(it))

    names = set(chosen_inputs(mdef))
    return replace(mdef, inputs=tuple(n for n in mdef.inputs if n not in names),
                   body=go(mdef.body))


def check_shapes(mdef: ir.MaskDef, kv_len: int, inputs: dict, heads: int) -> dict:
    """Shapes ``(Bx, Hx, ...)`` of the chosen tensors, checked as ``prepare_inputs`` checks
    them (without reading a value): a :class:`MaskInputError` otherwise."""
    kinds = input_kinds(mdef)
    out = {}
    for name in chosen_inputs(mdef):
        if name not in inputs:
            raise MaskInputError(f"mask '{mdef.name}' needs the runtime input '{name}'",
                                 mdef.span)
        x, kind = inputs[name], kinds[name]
        if x.is_floating_point() or x.is_complex() or str(x.dtype) == "torch.bool":
            raise MaskInputError(f"input '{name}' must hold integers, got dtype {x.dtype}",
                                 mdef.span)
        shape = tuple(x.shape)
        if kind.kind == "select":
            nb = kind.rows(kv_len, mdef.grid)
            ok, lead = 2 <= len(shape) <= 4 and shape[-2] == nb, 2
            want = f"({nb}, r), (Hx, {nb}, r) or (Bx, Hx, {nb}, r)"
        else:
            ok, lead, want = 1 <= len(shape) <= 3, 1, "(r,), (Hx, r) or (Bx, Hx, r)"
        if not ok or 0 in shape[:-1]:
            raise MaskInputError(f"input '{name}' must have shape {want}, got {shape}",
                                 mdef.span)
        full = (1,) * (lead + 2 - len(shape)) + shape
        if full[1] not in (1, heads):
            raise MaskInputError(f"input '{name}' lists {full[1]} heads, but there are "
                                 f"{heads} (give 1 row for every head, or one per head)",
                                 mdef.span)
        out[name] = full
    batch = max([s[0] for s in out.values()] or [1])
    for name, s in out.items():
        if s[0] not in (1, batch):
            raise MaskInputError(f"runtime inputs disagree on the batch size: input '{name}' "
                                 f"has {s[0]}, another {batch}", mdef.span)
    return out


# ---------------------------------------------------------------- checked once per version

_CHECKED: dict[int, tuple] = {}  # id(tensor) -> (weakref, version, largest entry bound)
_CHECKED_LOCK = threading.Lock()


def mark_checked(x, below: int) -> None:
    """Record that every entry of tensor ``x`` is below ``below`` (the estimators call this
    for what they return, so those tensors are never read back)."""
    with _CHECKED_LOCK:
        _CHECKED[id(x)] = (weakref.ref(x, lambda _, i=id(x): _CHECKED.pop(i, None)),
                           x._version, below)


def _known_below(x) -> int | None:
    with _CHECKED_LOCK:
        hit = _CHECKED.get(id(x))
    if hit is None or hit[0]() is not x or hit[1] != x._version:
        return None
    return hit[2]


# ---------------------------------------------------------------- the stage

@dataclass(eq=False)
class ChosenTiles:
    """The chosen part of a device-merged plan: see the module docstring.

    ``static``: the bound static mask (its block analysis gives the static tables);
    ``shapes``: each chosen input's shape ``(Bx, Hx, ...)``.
    """

    mdef: ir.MaskDef
    sources: tuple[Source, ...]
    static: object          # the Bound of static_mask(mdef)
    shapes: dict
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def q_len(self) -> int:
        return self.static.q_len

    @property
    def kv_len(self) -> int:
        return self.static.kv_len

    def limit(self, name: str) -> tuple[int, str]:
        kind = input_kinds(self.mdef)[name]
        if kind.kind == "select":
            nb = kind.rows(self.kv_len, self.mdef.grid)
            return nb, f"the number of key blocks ({nb} {kind.unit()})"
        return self.kv_len, f"kv_len ({self.kv_len})"

    def check(self, tensors: dict) -> None:
        """Every entry below its bound (:class:`MaskInputError` naming the first one that is
        not): read back once per tensor version, never for tensors :func:`mark_checked`."""
        for name in self.shapes:
            x = tensors[name]
            limit, what = self.limit(name)
            known = _known_below(x)
            if known is not None and known <= limit:
                continue
            flat = x.detach().reshape(-1)
            if flat.numel():
                # NOTE: the one read-back, for a tensor (version) not seen before
                bad = (flat >= limit).nonzero()
                if bad.numel():
                    at = int(bad[0, 0])
                    where = np.unravel_index(at, tuple(x.shape))
                    raise MaskInputError(
                        f"input '{name}' has entry {int(flat[at]):,} at "
                        f"{[int(i) for i in where]}, not below {what}", self.mdef.span)
            mark_checked(x, limit)

    def arguments(self, name: str, kind: str, tensors: dict, device):
        """A chosen input as the kernel's arguments: the tensor (int32, contiguous) and its
        batch/head strides (0 for one row) and row width; for ``listed``, a 0/1 map over
        ``0..Lk-1`` built with a scatter."""
        import torch
        shape = self.shapes[name]
        x = tensors[name].detach().to(device=device, dtype=torch.int32).reshape(shape)
        if kind == "listed":
            L = self.kv_len
            flat = x.reshape(-1, shape[-1]).to(torch.int64)
            out = torch.zeros((flat.shape[0], L + 1), dtype=torch.int8, device=device)
            out.scatter_(1, torch.where((flat < 0) | (flat >= L), L, flat),
                         torch.ones_like(flat, dtype=torch.int8))
            x = out[:, :L].reshape(shape[0], shape[1], L)
        x = x.contiguous()
        if x.numel() == 0:
            x = torch.zeros(1, dtype=x.dtype, device=device)
            return [x, 0, 0, shape[-1]]
        return [x, x.stride(0) if shape[0] > 1 else 0, x.stride(1) if shape[1] > 1 else 0,
                x.shape[-1]]

    # ------------------------------------------------------------ candidates
    def _spans(self, n_rows: int, rows: int, lo_shift: int, size: int, n_out: int,
               count: int):
        """Static helper: for ``n_rows`` tiles of ``rows`` positions starting at
        ``i * rows + lo_shift`` (cut at ``count`` positions), the first and last index of
        the ``size``-wide groups each touches, and the most groups a tile touches."""
        i = np.arange(n_rows, dtype=np.int64)
        lo = i * rows + lo_shift
        hi = np.minimum(i * rows + rows, count) - 1 + lo_shift
        first = np.maximum(lo, 0) // size
        last = np.minimum(hi // size, n_out - 1)
        width = int((last - first + 1).clip(min=0).max(initial=0))
        return first, last, max(width, 0)

    def candidates(self, tensors: dict, bq: int, bk: int, device):
        """``(R_b, R_h, NQ, C)`` int64 key tiles the chosen entries touch per query tile
        (``NK`` where there is none), with ``R_b``/``R_h`` 1 or the batch/heads."""
        import torch
        Lq, Lk = self.q_len, self.kv_len
        shift, nq, nk = Lk - Lq, -(-Lq // bq), -(-Lk // bk)
        parts = []
        for src in self.sources:
            Bx, Hx = self.shapes[src.input][:2]
            x = tensors[src.input].detach().to(device).reshape(self.shapes[src.input])
            x = x.to(torch.int64)
            if src.kind == "select":
                S = src.block
                nb = -(-Lk // S)
                first, last, U = self._spans(nq, bq, shift, S, nb, Lq)
                if U == 0 or x.shape[-1] == 0:
                    continue
                u = torch.arange(U, device=device)
                qb = torch.as_tensor(first, device=device)[:, None] + u          # (NQ, U)
                okq = qb <= torch.as_tensor(last, device=device)[:, None]
                rows = x[:, :, qb.clamp(0, nb - 1), :]                          # (Bx,Hx,NQ,U,r)
                ok = okq[..., None] & (rows >= 0)
                # key tiles of block j: j S // bk .. ((j + 1) S - 1) // bk, cut at Lk
                kfirst, _, V = self._spans(nb, S, 0, bk, nk, Lk)
                v = torch.arange(V, device=device)
                kt = (rows * S) // bk
                kt = kt[..., None] + v                                           # (...,r,V)
                kend = (torch.clamp((rows + 1) * S, max=Lk) - 1) // bk
                ok = ok[..., None] & (kt <= kend[..., None])
                parts.append(torch.where(ok, kt, nk).reshape(Bx, Hx, nq, -1))
            elif src.kind == "keys":
                if x.shape[-1] == 0:
                    continue
                kt = torch.where(x >= 0, x // bk, nk)                            # (Bx, Hx, r)
                parts.append(kt[:, :, None, :].expand(Bx, Hx, nq, x.shape[-1]))
            else:  # diagonals: keys p - d over the tile's positions
                if x.shape[-1] == 0:
                    continue
                i = torch.arange(nq, device=device)
                p_lo = i * bq + shift
                p_hi = torch.clamp(i * bq + bq, max=Lq) - 1 + shift
                W = -(-bq // bk) + 1
                k_lo = p_lo[:, None] - x[:, :, None, :]                          # (Bx,Hx,NQ,r)
                k_hi = p_hi[:, None] - x[:, :, None, :]
                ok = (x[:, :, None, :] >= 0) & (k_hi >= 0) & (k_lo <= Lk - 1)
                t0 = torch.clamp(k_lo, min=0) // bk
                t1 = torch.clamp(k_hi, max=Lk - 1) // bk
                w = torch.arange(W, device=device)
                kt = t0[..., None] + w
                ok = ok[..., None] & (kt <= t1[..., None])
                parts.append(torch.where(ok, kt, nk).reshape(Bx, Hx, nq, -1))
        if not parts:
            return torch.full((1, 1, nq, 0), nk, dtype=torch.int64, device=device)
        Rb = max(p.shape[0] for p in parts)
        Rh = max(p.shape[1] for p in parts)
        return torch.cat([p.expand(Rb, Rh, nq, p.shape[-1]) for p in parts], dim=-1)

    # ------------------------------------------------------------ tables
    def tables(self, static_map, tensors: dict, kernel: str, device):
        """A kernel's tables from the static ones (``static_map``, the plan's block
        analysis of the static part at the kernel's tiles) and the chosen tensors.

        ``fwd``/``dq``: ``(full_num, full_idx, part_num, part_idx, part_live, head_group,
        TB, G, NQ, FW, PW)``; ``dkdv`` (per key tile, the query tiles visiting it, as
        offsets into one list): ``(full_num, full_idx, full_off, part_num, part_idx,
        part_off, head_group, TB, G, NK)``.
        """
        import torch
        bm = static_map
        bq, bk = bm.block_q, bm.block_k
        H = bm.heads
        nq, nk = bm.n_q_tiles, bm.n_k_tiles
        cand = self.candidates(tensors, bq, bk, device)
        i64 = lambda a: torch.as_tensor(np.ascontiguousarray(a), device=device).to(torch.int64)  # noqa: E731
        hg = i64(bm.head_group)
        G = bm.kv_num_blocks.shape[1]
        Rb = max(bm.kv_num_blocks.shape[0], cand.shape[0])
        per_head = cand.shape[1] > 1 or G > 1
        Rh = H if per_head else 1

        def rows(a):  # static (B, G, NQ, w) -> (Rb, Rh, NQ, w), padding -> nk
            t = i64(a)
            t = torch.where(t < 0, nk, t)
            t = t[:, hg] if per_head else t
            return t.expand(Rb, Rh, nq, t.shape[-1])

        full = rows(bm.full_kv_indices)
        part = rows(bm.kv_indices)
        live = i64(bm.live if bm.live is not None else np.full(bm.kv_indices.shape, -1))
        live = (live[:, hg] if per_head else live).expand(Rb, Rh, nq, live.shape[-1])
        cand = cand.expand(Rb, Rh, nq, cand.shape[-1])
        # a chosen tile the static part makes full stays full (and is listed once)
        if full.shape[-1] and cand.shape[-1]:
            fs = full.contiguous()
            at = torch.searchsorted(fs, cand.contiguous()).clamp(max=fs.shape[-1] - 1)
            cand = torch.where(torch.gather(fs, -1, at) == cand, nk, cand)
        # partial: the static partial tiles and the chosen ones, sorted, each once; a chosen
        # tile evaluates every term (live -1)
        vals = torch.cat([part, cand], dim=-1)
        lv = torch.cat([live, torch.full_like(cand, -1)], dim=-1)
        key = vals * 2 + torch.cat([torch.ones_like(part), torch.zeros_like(cand)], dim=-1)
        key, order = key.sort(dim=-1)
        lv = torch.gather(lv, -1, order)
        v = key // 2
        dup = torch.zeros_like(v, dtype=torch.bool)
        dup[..., 1:] = v[..., 1:] == v[..., :-1]
        v = torch.where(dup | (v >= nk), nk, v)
        v, order = v.sort(dim=-1, stable=True)
        lv = torch.gather(lv, -1, order)
        part_num = (v < nk).sum(-1)
        full_num = (full < nk).sum(-1)
        hgroup = torch.arange(H, device=device) if per_head else torch.zeros(H, device=device,
                                                                             dtype=torch.int64)
        i32 = lambda t: t.to(torch.int32).contiguous()  # noqa: E731
        if kernel != "dkdv":
            pad = lambda t, n: torch.where(t >= nk, -1, t)  # noqa: E731
            return (i32(full_num), i32(pad(full, nk)), i32(part_num), i32(pad(v, nk)),
                    i32(torch.where(v >= nk, 0, lv)), i32(hgroup), Rb, Rh, nq,
                    max(full.shape[-1], 1), max(v.shape[-1], 1))
        fn, fi, fo = _transpose(full, nq, nk)
        pn, pi, po = _transpose(v, nq, nk)
        return (i32(fn), i32(fi), fo.contiguous(), i32(pn), i32(pi), po.contiguous(),
                i32(hgroup), Rb, Rh, nk)


def _transpose(t, nq: int, nk: int):
    """Forward rows ``(Rb, Rh, NQ, w)`` of key tiles (``nk``: none) as, per key tile, the
    query tiles visiting it: ``(num (Rb, Rh, NK), idx (flat), off (Rb, Rh, NK) int64)``,
    query tiles ascending; one sort of ``(key tile, query tile)`` pairs, no data-dependent
    shape."""
    import torch
    Rb, Rh, _, w = t.shape
    if w == 0:
        zeros = torch.zeros((Rb, Rh, nk), dtype=torch.int64, device=t.device)
        return zeros, torch.zeros(1, dtype=torch.int64, device=t.device), zeros
    qt = torch.arange(nq, device=t.device)[:, None].expand(nq, w)
    key = (t * nq + qt).reshape(Rb, Rh, nq * w).sort(dim=-1).values  # nk * nq: none
    starts = torch.searchsorted(key, (torch.arange(nk + 1, device=t.device) * nq)
                                .expand(Rb, Rh, nk + 1).contiguous())
    num = starts[..., 1:] - starts[..., :-1]
    base = (torch.arange(Rb * Rh, device=t.device) * (nq * w)).reshape(Rb, Rh, 1)
    idx = (key % nq).reshape(-1)
    return num, idx, starts[..., :-1] + base
