"""The Triton backend: generate a FlashAttention-2-style kernel for a mask, cache it, run it.

The generated module (see :mod:`backends.triton.template`) is written to a content-hashed
file in the cache directory (``$MASKC_CACHE_DIR`` or ``~/.cache/maskc``) so that Triton's
``@jit`` can read its source, and so a user can open it. The kernel is specialized on the
mask's structure only; lengths, block tables and runtime inputs are arguments.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import sys
import tempfile
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from maskc import ir
from maskc.errors import MaskError, MaskSizeError
from maskc.ir.pretty import pretty
from maskc.analysis.sizes import check_batch, resolve_lengths

from maskc.backends.triton.cache import load
from maskc.backends.triton.codegen import blocks_chain, generate

__all__ = ["forward", "attention", "available",
           "Launch", "Plan", "KernelConfig", "Tiles", "default_config", "block_alignment",
           "aligned"]

def available(device) -> bool:
    """Whether Triton can run on ``device`` here (a CUDA device, or the interpreter)."""
    return getattr(device, "type", str(device)) == "cuda" or \
        os.environ.get("TRITON_INTERPRET") == "1"


def _extra_tensors(mdef, extras, q_len, kv_len, xs, device):
    """Kernel arguments for runtime data, in the order of the generated signature."""
    import torch

    from maskc.analysis.rng import random_table

    from maskc.backends.reference import _runs
    chain = blocks_chain(mdef)
    args = []
    for a in extras:
        if a.kind in ("input", "starts", "lens"):
            x = xs[a.source]
            if a.kind != "input":
                start, length = _runs(x)
                x = start if a.kind == "starts" else length
            t = torch.as_tensor(np.ascontiguousarray(x, dtype=np.int32), device=device)
            args += [t, t.stride(0) if t.shape[0] > 1 else 0]
            continue
        size, in_within = chain[id(a.source)]
        nkb = -(-kv_len // size)
        first, last = (kv_len - q_len) // size, (kv_len - 1) // size
        if in_within:
            first = 0  # segment-relative blocks; rows before a segment keep nothing anyway
        if a.kind == "random":
            if a.source.r > nkb:
                raise MaskError(f"random({a.source.r}) needs at least {a.source.r} key blocks, "
                                f"but there are {nkb}", a.source.span)
            table = random_table(a.source.seed, np.arange(first, last + 1), nkb, a.source.r,
                                 a.source.span)
        else:
            first = 0
            rows = a.source.rows
            table = np.array(rows, dtype=bool).reshape(len(rows), -1) if rows and rows[0] \
                else np.zeros((0, 0), dtype=bool)
        shape = table.shape
        # NOTE: an empty table still needs one element to point at; its bounds stay 0.
        t = torch.as_tensor(np.ascontiguousarray(table if table.size else np.zeros((1, 1)),
                                                 dtype=np.int8), device=device)
        args += [t, first, shape[0], shape[1]]
    return args


def _pow2(n: int) -> int:
    return max(16, 1 << (n - 1).bit_length())


@dataclass(frozen=True)
class Tiles:
    """One kernel's tile (``block_q`` x ``block_k``) and launch options."""

    block_q: int
    block_k: int
    num_warps: int = 4
    num_stages: int = 3

    def __post_init__(self):
        w, st = self.num_warps, self.num_stages
        if isinstance(w, bool) or not isinstance(w, int) or w < 1 or w & (w - 1) or w > 32:
            raise MaskError(f"num_warps must be a power of two from 1 to 32, got {w!r}")
        if isinstance(st, bool) or not isinstance(st, int) or st < 1:
            raise MaskError(f"num_stages must be a positive integer, got {st!r}")

    def smaller(self) -> "Tiles | None":
        """A configuration that needs fewer resources (``None`` at the smallest)."""
        if self.num_stages > 1:
            return replace(self, num_stages=1)
        if max(self.block_q, self.block_k) > 16:
            big = "block_q" if self.block_q >= self.block_k else "block_k"
            return replace(self, **{big: getattr(self, big) // 2})
        return None


@dataclass(frozen=True)
class KernelConfig:
    """Tiles of the three generated kernels: forward, dq and dk/dv.

    Each kernel walks block tables built at its own tile size (the dk/dv kernel their
    transpose), so the three may differ, as they do in FlexAttention's defaults.
    """

    fwd: Tiles
    dq: Tiles
    dkdv: Tiles
    # token order of a grid mask: "auto" (tiled when that visits fewer tiles), "row-major",
    # or "tiled" (see maskc.passes.layout)
    layout: str = "auto"

    @classmethod
    def uniform(cls, block_q: int, block_k: int) -> "KernelConfig":
        t = Tiles(block_q, block_k)
        return cls(t, t, t)


def default_config(device_type: str, dtype, head_dim: int) -> KernelConfig:
    """Tiles by device, dtype and head dim (on Hopper close to FlexAttention's defaults).

    On the CPU (Triton's interpreter) the tiles are small and unequal, so that the tests
    walk several tiles and tables of different shapes for each kernel.
    """
    import torch
    if device_type != "cuda":
        return KernelConfig(Tiles(32, 16), Tiles(16, 32), Tiles(16, 32))
    if dtype not in (torch.float16, torch.bfloat16):  # float32: no tensor-core tiles
        if head_dim <= 64:
            return KernelConfig(Tiles(64, 32), Tiles(32, 32, 4, 1), Tiles(32, 32, 4, 1))
        return KernelConfig(Tiles(32, 32), Tiles(32, 16, 4, 1), Tiles(16, 32, 4, 1))
    if head_dim <= 32:
        return KernelConfig(Tiles(64, 64), Tiles(64, 64), Tiles(64, 64))
    if head_dim <= 64:
        return KernelConfig(Tiles(128, 128), Tiles(128, 64, 8), Tiles(64, 128, 8))
    if head_dim <= 128:
        return KernelConfig(Tiles(128, 64, 8), Tiles(128, 64, 8), Tiles(64, 128, 8))
    return KernelConfig(Tiles(64, 32), Tiles(64, 32, 4, 2), Tiles(32, 64, 4, 2))


def block_alignment(mdef: ir.MaskDef) -> int | None:
    """The tile size that lines up with the mask's blocks, if it is made of ``blocks(B, ...)``
    only (through ``& | - ~`` and ``heads``): the largest power of two dividing every ``B``
    (at least 16). Tiles no larger than that are each inside one block, so when
    ``kv_len - q_len`` is a multiple of it (queries are aligned to the end of the keys) every
    tile the kernels visit is full and none evaluates the mask (``None``: no such size)."""
    sizes = []

    def walk(n) -> bool:
        if isinstance(n, ir.Blocks):
            sizes.append(n.size)
            return True
        if isinstance(n, ir.Const):
            return True
        if isinstance(n, ir.Heads):
            return all(walk(arm.body) for arm in n.arms)
        if isinstance(n, (ir.And, ir.Or, ir.Not)):
            return all(walk(c) for c in ir.children(n))
        return False
    if not walk(mdef.body) or not sizes:
        return None
    g = math.gcd(*sizes)
    align = g & -g  # its largest power-of-two divisor
    return align if align >= 16 else None


def aligned(config: KernelConfig, align: int | None) -> KernelConfig:
    """``config`` with every tile at most ``align`` (see :func:`block_alignment`)."""
    if align is None:
        return config

    def cap(t: Tiles) -> Tiles:
        if max(t.block_q, t.block_k) <= align:
            return t
        return replace(t, block_q=min(t.block_q, align), block_k=min(t.block_k, align),
                       num_warps=4 if align <= 64 else t.num_warps)
    return replace(config, fwd=cap(config.fwd), dq=cap(config.dq), dkdv=cap(config.dkdv))


def _check_block(size, what, mdef, on_gpu):
    if isinstance(size, bool) or not isinstance(size, int) or size < 1 or size & (size - 1) or \
            (on_gpu and size < 16):
        raise MaskSizeError(f"{what} must be a power of two (>= 16 on a GPU), got {size!r}",
                            mdef.span)


def _digest(inputs: dict) -> tuple:
    """A key for runtime inputs by content (ids change per batch; tables follow them)."""
    out = []
    for name in sorted(inputs):
        x = inputs[name]
        if hasattr(x, "detach"):
            x = x.detach().cpu().numpy()
        x = np.ascontiguousarray(np.asarray(x))
        out.append((name, x.shape, x.dtype.str, hashlib.blake2b(x.tobytes(), digest_size=16)
                    .hexdigest()))
    return tuple(out)


class Plan:
    """What one mask needs at one size on one device: block tables per tile size (forward
    and transposed) and the runtime tables of the mask function. Cached on the ``Mask``, so
    a training loop that repeats a shape builds its tables once."""

    def __init__(self, mdef, Lq, Lk, Hq, device, inputs):
        from maskc.analysis.sizes import prepare_inputs
        self.mdef, self.Lq, self.Lk, self.Hq, self.device = mdef, Lq, Lk, Hq, device
        # NOTE: copies (prepare_inputs makes new arrays): tables built later, for the
        # backward, must see the inputs of the forward even if the caller reuses its buffer.
        self.inputs = prepare_inputs(mdef, Lk, inputs)
        self.batch = max([x.shape[0] for x in self.inputs.values()] or [1])
        # NOTE: the runtime arguments refer to this mask's IR nodes, so they come from this
        # generation, never from the cached module (equal masks share one module).
        src, extras = generate(mdef)
        self.module = load(src, mdef.name)
        self.extra = _extra_tensors(mdef, extras, Lq, Lk, self.inputs, device)
        self._tables: dict = {}
        self.layout = None     # a TokenLayout once chosen (grid masks only)
        self._decided = False

    # A tiled layout must visit at most this fraction of row-major's tiles: reordering q, k,
    # v and the output costs a few memory passes.
    LAYOUT_GAIN = 0.8

    def choose_layout(self, how: str, tiles: "Tiles"):
        """Decide the token order once per plan (``how``: see :class:`KernelConfig`)."""
        if self._decided or self.mdef.grid is None or how == "row-major":
            self._decided = True
            return self.layout
        from maskc.passes.layoutmap import tiled_layout, visited_tiles
        layout = tiled_layout(self.mdef, max(tiles.block_q, tiles.block_k))
        plain = self._row_major_visits(tiles)
        self.layout = layout
        self._decided = True
        tiled = visited_tiles(self.block_map(tiles.block_q, tiles.block_k))[0]
        if how != "tiled" and tiled >= self.LAYOUT_GAIN * plain:
            self.layout = None
        if self.layout is not None:  # int32: the kernels' argument and index_select's index
            self.perm, self.inv = self._t(layout.perm), self._t(layout.inv)
        return self.layout

    def _row_major_visits(self, tiles: "Tiles") -> float:
        """Tiles row-major order would visit, estimated on a sample of query tiles."""
        from maskc.analysis.blocktable import build

        from maskc.backends import reference
        nq = -(-self.Lq // tiles.block_q)
        sample = np.unique(np.linspace(0, nq - 1, min(nq, 64)).astype(np.int64))
        bm = build(self.mdef, None, None, self.Hq, tiles.block_q, tiles.block_k,
                   evaluate=reference.evaluate, q_tiles=sample, **self.inputs)
        return (bm.stats["full"] + bm.stats["partial"]) * nq / len(sample)

    def _t(self, a):
        import torch
        return torch.as_tensor(np.ascontiguousarray(a, dtype=np.int32), device=self.device)

    def block_map(self, block_q: int, block_k: int):
        from maskc.analysis.blocktable import build

        from maskc.backends import reference
        key = ("map", block_q, block_k, self.layout)
        if key not in self._tables:
            grid = self.mdef.grid
            if self.layout is not None:
                from maskc.passes.layoutmap import permuted_block_map
                self._tables[key] = permuted_block_map(
                    self.mdef, self.layout, block_q, self.Hq, reference.evaluate,
                    block_k=block_k, **self.inputs)
            else:
                self._tables[key] = build(self.mdef, None if grid else self.Lq,
                                          None if grid else self.Lk, self.Hq, block_q, block_k,
                                          evaluate=reference.evaluate, **self.inputs)
        return self._tables[key]

    def rows(self, block_q: int, block_k: int) -> tuple:
        """Forward tables (query tile -> key tiles) as kernel arguments."""
        key = ("rows", block_q, block_k)
        if key not in self._tables:
            bm = self.block_map(block_q, block_k)
            t = self._t
            TB, G, NQ = bm.kv_num_blocks.shape
            head_group = t(bm.head_group)
            self._tables[key] = (
                t(bm.full_kv_num_blocks), t(bm.full_kv_indices), t(bm.kv_num_blocks),
                t(bm.kv_indices), t(bm.live), head_group, self._perm(head_group),
                TB, G, NQ, bm.full_kv_indices.shape[-1], bm.kv_indices.shape[-1])
        return self._tables[key]

    def columns(self, block_q: int, block_k: int) -> tuple:
        """Transposed tables (key tile -> query tiles) as kernel arguments."""
        key = ("cols", block_q, block_k)
        if key not in self._tables:
            bm = self.block_map(block_q, block_k)
            pn, pi, fn, fi = bm.transposed()
            t = self._t
            TB, G, NK = pn.shape
            head_group = t(bm.head_group)
            self._tables[key] = (t(fn), t(fi), t(pn), t(pi), head_group,
                                 self._perm(head_group), TB, G, NK, fi.shape[-1], pi.shape[-1])
        return self._tables[key]

    def _perm(self, placeholder):
        """The kernels' ``perm`` argument (any int32 tensor when there is no layout)."""
        return self.perm if self.layout is not None else placeholder

    def to_layout(self, x):
        """``x`` (tokens on dim 2) in the kernels' token order."""
        return x if self.layout is None else x.index_select(2, self.perm)

    def from_layout(self, x):
        return x if self.layout is None else x.index_select(2, self.inv)


_PLANS_PER_MASK = 8
# (module file, kernel, dtype, head dims) -> tiles that ran, after a fallback for resources
_FITTED: dict = {}


def plan(mask, Lq, Lk, Hq, device, inputs, layout: str = "auto", tile: int = 0) -> Plan:
    """The cached :class:`Plan` of ``mask`` for this size, device and inputs (``layout`` and
    ``tile``, the largest forward tile side, decide its token layout)."""
    cache = mask.__dict__.setdefault("_triton_plans", OrderedDict())
    key = (Lq, Lk, Hq, str(device), layout, tile, _digest(inputs))
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    p = cache[key] = Plan(mask.ir, Lq, Lk, Hq, device, inputs)
    while len(cache) > _PLANS_PER_MASK:
        cache.popitem(last=False)
    return p


class Launch:
    """One attention call's kernels, tables and runtime arguments, shared by forward and backward."""

    def __init__(self, mask, q, k, v, scale=None, config: KernelConfig | None = None,
                 _device_checked: bool = False, module=None, **inputs):
        mdef = mask.ir
        B, Hq, Lq, D = q.shape
        Hkv, Lk, DV = k.shape[1], k.shape[2], v.shape[3]
        gpu = q.device.type == "cuda" or _device_checked
        if config is None:
            config = default_config("cuda" if gpu else q.device.type, q.dtype, max(D, DV))
            if gpu:
                config = aligned(config, block_alignment(mdef))
        for kind in ("fwd", "dq", "dkdv"):
            tiles = getattr(config, kind)
            for what in ("block_q", "block_k"):
                _check_block(getattr(tiles, what), what, mdef, gpu)
        if not _device_checked and not available(q.device):
            raise MaskError(f"the Triton backend needs a CUDA device (got {q.device}); set "
                            "TRITON_INTERPRET=1 to run it on the CPU through Triton's "
                            "interpreter")
        self.gpu = gpu
        self.name = mdef.name
        self.shape = (B, Hq, Hkv, Lq, Lk, D, DV)
        self.config = config
        resolve_lengths(mdef, Lq, Lk)  # a grid mask needs q_len == kv_len == its tokens
        if config.layout not in ("auto", "row-major", "tiled"):
            raise MaskError(f"config.layout must be 'auto', 'row-major' or 'tiled', got "
                            f"{config.layout!r}")
        self.plan = plan(mask, Lq, Lk, Hq, q.device, inputs, config.layout,
                         max(config.fwd.block_q, config.fwd.block_k) if mdef.grid else 0)
        check_batch(mdef, self.plan.batch, B)
        self.plan.choose_layout(config.layout, config.fwd)
        self.module = self.plan.module if module is None else module
        self.extra = self.plan.extra
        self.device = q.device
        self.scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
        self.dims = dict(BD=_pow2(D), BDV=_pow2(DV), PREC=_precision(q.dtype),
                         EVEN_D=_pow2(D) == D and _pow2(DV) == DV,
                         PERMUTED=self.plan.layout is not None)
        self.bm = self.plan.block_map(config.fwd.block_q, config.fwd.block_k)

    def _common(self):
        B, Hq, Hkv, Lq, Lk, D, DV = self.shape
        return (Lq, Lk, Hq, Hq // Hkv, D, DV, self.scale / math.log(2))

    def _run(self, kind: str, tiles: Tiles, dtype, launch):
        """Launch ``kind`` with ``tiles``, falling back to smaller ones when the GPU lacks the
        shared memory or registers (remembered per kernel, so the fallback is paid once)."""
        key = (id(self.module), kind, str(dtype), self.shape[5], self.shape[6], str(self.device))
        tiles = _FITTED.get((key, tiles), tiles)
        first = tiles
        while True:
            try:
                return launch(tiles)
            except Exception as err:  # triton.runtime.errors.OutOfResources, by name
                smaller = tiles.smaller() if type(err).__name__ == "OutOfResources" else None
                if smaller is None:
                    raise
                tiles = smaller
                _FITTED[(key, first)] = tiles

    def forward(self, q, k, v):
        """``(out, lse)``; lse in natural log, float32, ``-inf`` on rows that keep nothing."""
        import torch
        B, Hq, Hkv, Lq, Lk, D, DV = self.shape
        out = torch.empty((B, Hq, Lq, DV), dtype=q.dtype, device=q.device)
        lse = torch.empty((B, Hq, Lq), dtype=torch.float32, device=q.device)
        kernel = getattr(self.module, f"fwd_{self.name}")

        def launch(t: Tiles):
            rows = self.plan.rows(t.block_q, t.block_k)
            n_q_tiles = self.plan.block_map(t.block_q, t.block_k).n_q_tiles
            kernel[(n_q_tiles, B * Hq)](
                q, k, v, out, lse,
                q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1),
                out.stride(2), lse.stride(0), lse.stride(1), *rows, *self._common(),
                *self.extra, BM=t.block_q, BN=t.block_k, num_warps=t.num_warps,
                num_stages=t.num_stages, **self.dims)
        self._run("fwd", self.config.fwd, q.dtype, launch)
        return out, lse

    def backward(self, q, k, v, out, lse, dout, dlse=None):
        """``(dq, dk, dv)`` from the saved forward and the output (and lse) gradients."""
        import torch
        B, Hq, Hkv, Lq, Lk, D, DV = self.shape
        m = self.module
        dout = dout.contiguous()
        delta = torch.empty_like(lse)
        bq = 64 if self.gpu else 16
        getattr(m, f"bwd_delta_{self.name}")[(-(-Lq // bq), B * Hq)](
            out, dout, delta, out.stride(0), out.stride(1), out.stride(2), dout.stride(0),
            dout.stride(1), dout.stride(2), delta.stride(0), delta.stride(1), Lq, Hq, DV,
            BM=bq, BDV=self.dims["BDV"], EVEN_D=self.dims["EVEN_D"])
        if dlse is not None:
            delta -= dlse.float()  # d lse / d s = p: folds into the softmax gradient
        strides = (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                   v.stride(0), v.stride(1), v.stride(2), dout.stride(0), dout.stride(1),
                   dout.stride(2), lse.stride(0), lse.stride(1))
        common = self._common() + (self.scale,)
        dq = torch.empty_like(q)
        dk, dv = torch.empty_like(k), torch.empty_like(v)

        def launch_dq(t: Tiles):
            rows = self.plan.rows(t.block_q, t.block_k)
            n_q_tiles = self.plan.block_map(t.block_q, t.block_k).n_q_tiles
            getattr(m, f"bwd_dq_{self.name}")[(n_q_tiles, B * Hq)](
                q, k, v, dout, lse, delta, dq, *strides, *rows, *common, *self.extra,
                BM=t.block_q, BN=t.block_k, num_warps=t.num_warps, num_stages=t.num_stages,
                **self.dims)

        def launch_dkdv(t: Tiles):
            cols = self.plan.columns(t.block_q, t.block_k)
            n_k_tiles = self.plan.block_map(t.block_q, t.block_k).n_k_tiles
            getattr(m, f"bwd_dkdv_{self.name}")[(n_k_tiles, B * Hkv)](
                q, k, v, dout, lse, delta, dk, dv, *strides,
                dk.stride(0), dk.stride(1), dk.stride(2), dv.stride(0), dv.stride(1),
                dv.stride(2), *cols, *common, *self.extra, BM=t.block_q, BN=t.block_k,
                num_warps=t.num_warps, num_stages=t.num_stages, **self.dims)
        self._run("dq", self.config.dq, q.dtype, launch_dq)
        self._run("dkdv", self.config.dkdv, q.dtype, launch_dkdv)
        return dq, dk, dv


def _precision(dtype) -> str:
    """``tl.dot`` input precision: float32 inputs stay IEEE unless torch allows TF32 for
    matmuls (as ``scaled_dot_product_attention`` and FlexAttention do)."""
    import torch
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def _config(config, block_q, block_k):
    if config is not None and not isinstance(config, KernelConfig):
        raise MaskError(f"config must be a maskc.backends.triton.KernelConfig, got "
                        f"{type(config).__name__}")
    if block_q is None and block_k is None:
        return config
    if config is not None:
        raise MaskError("give either config or block_q/block_k, not both")
    block_q = 64 if block_q is None else block_q
    return KernelConfig.uniform(block_q, block_q if block_k is None else block_k)


def attention(mask, q, k, v, scale=None, return_lse=False, block_q=None, block_k=None,
              config: KernelConfig | None = None, module=None, **inputs):
    """Attention through the generated kernels, differentiable (``torch.autograd``).

    ``config`` (a :class:`KernelConfig`) or ``block_q``/``block_k`` (one tile size for all
    three kernels) override :func:`default_config`. ``module`` is the generated module whose
    kernels run (by default the cached one for ``mask``; a module written by ``maskc compile
    -o`` passes itself).
    """
    import torch
    mask._check_shapes(q, k, v)
    config = _config(config, block_q, block_k)

    class _Fn(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v):
            launch = Launch(mask, q, k, v, scale, config, module=module, **inputs)
            p = launch.plan  # a tiled token layout reorders the tokens around the kernels
            q, k, v = (p.to_layout(x).contiguous() for x in (q, k, v))
            out, lse = launch.forward(q, k, v)
            ctx.launch = launch
            ctx.save_for_backward(q, k, v, out, lse)
            return p.from_layout(out), p.from_layout(lse)

        @staticmethod
        def backward(ctx, dout, dlse):
            q, k, v, out, lse = ctx.saved_tensors
            p = ctx.launch.plan
            dout = torch.zeros_like(out) if dout is None else p.to_layout(dout)
            dlse = None if dlse is None else p.to_layout(dlse)
            return tuple(p.from_layout(g) for g in ctx.launch.backward(q, k, v, out, lse, dout,
                                                                        dlse))

    out, lse = _Fn.apply(q, k, v)
    return (out, lse) if return_lse else out


def forward(mask, q, k, v, scale=None, block_q: int | None = None, block_k: int | None = None,
            config: KernelConfig | None = None, **inputs):
    """Run the generated forward kernel once: ``(out, lse)``."""
    launch = Launch(mask, q, k, v, scale, _config(config, block_q, block_k), **inputs)
    p = launch.plan
    out, lse = launch.forward(*(p.to_layout(x).contiguous() for x in (q, k, v)))
    return p.from_layout(out), p.from_layout(lse)
