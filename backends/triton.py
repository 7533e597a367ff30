"""The Triton backend: generate a FlashAttention-2-style kernel for a mask, cache it, run it.

The generated module (see :mod:`backends.triton_template`) is written to a content-hashed
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
from pathlib import Path

import numpy as np

from maskc import ir
from maskc.errors import MaskError, MaskSizeError
from maskc.pretty import pretty

from .triton_render import Renderer
from .triton_template import BACKWARD, MODULE

__all__ = ["generate", "cache_dir", "load_module", "forward", "attention", "available",
           "Launch"]

_MODULES: dict[str, object] = {}


def generate(mdef: ir.MaskDef) -> tuple[str, list]:
    """``(source, extra_args)`` of the Triton module for ``mdef``. Byte-stable."""
    r = Renderer(mdef)
    expr = r.render()
    params = ""
    for a in r.args:
        params += f", {a.name}, " + (f"{a.name}_sb" if a.kind in ("input", "starts", "lens")
                                     else f"{a.name}_first, {a.name}_rows, {a.name}_cols")
    body = "\n".join(f"    {line}" for line in r.lines) or "    pass"
    name = mdef.name
    spec = pretty(mdef).strip().replace("\n", "\n#   ")
    args = "".join(f", {p}" for p in params.split(", ")[1:]) if params else ""
    src = (MODULE + BACKWARD).format(name=name, spec=spec, params=params, args=args, body=body,
                                     expr=expr, spec_src=pretty(mdef).strip())
    return src, r.args


def cache_dir() -> Path:
    return Path(os.environ.get("MASKC_CACHE_DIR") or Path.home() / ".cache" / "maskc")


def write_source(src: str, name: str) -> Path:
    """Write ``src`` to its content-hashed file (atomically: safe for concurrent writers)."""
    digest = hashlib.sha256(src.encode()).hexdigest()[:16]
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"maskc_{name}_{digest}.py"
    if not path.exists():
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(src)
        os.replace(tmp, path)
    return path


def load_module(mdef: ir.MaskDef):
    """The imported generated module for ``mdef`` (imported once per process)."""
    return _load(generate(mdef)[0], mdef.name)


def _load(src: str, name: str):
    path = write_source(src, name)
    key = str(path)
    if key not in _MODULES:
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module
        spec.loader.exec_module(module)
        _MODULES[key] = module
    return _MODULES[key]


def available(device) -> bool:
    """Whether Triton can run on ``device`` here (a CUDA device, or the interpreter)."""
    return getattr(device, "type", str(device)) == "cuda" or \
        os.environ.get("TRITON_INTERPRET") == "1"


def _blocks_chain(mdef):
    """For each Random/Layout node: the product of the block sizes above it, and whether it
    sits inside ``within`` (positions relative to a segment start, so never before 0)."""
    out = {}

    def go(n, size, in_within):
        if isinstance(n, (ir.Random, ir.Layout)):
            out[id(n)] = (size, in_within)
        for c in ir.children(n):
            go(c, size * n.size if isinstance(n, ir.Blocks) else size,
               in_within or isinstance(n, ir.Within))
    go(mdef.body, 1, False)
    return out


def _extra_tensors(mdef, extras, q_len, kv_len, xs, device):
    """Kernel arguments for runtime data, in the order of the generated signature."""
    import torch

    from maskc.rng import random_table

    from .reference import _runs
    chain = _blocks_chain(mdef)
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
            table = random_table(a.source.seed, np.arange(first, last + 1), nkb, a.source.r)
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


class Launch:
    """One attention call's kernels, tables and runtime arguments, shared by forward and backward."""

    def __init__(self, mask, q, k, v, scale=None, block_q: int = 64, block_k: int = 64,
                 **inputs):
        import torch

        from maskc.blocktable import build
        from maskc.sizes import prepare_inputs

        from . import reference
        mdef = mask.ir
        self._torch = torch
        for what, size in (("block_q", block_q), ("block_k", block_k)):
            if not isinstance(size, int) or size < 1 or size & (size - 1) or \
                    (q.device.type == "cuda" and size < 16):
                raise MaskSizeError(f"{what} must be a power of two (>= 16 on a GPU), got "
                                    f"{size!r}", mdef.span)
        if not available(q.device):
            raise MaskError(f"the Triton backend needs a CUDA device (got {q.device}); set "
                            "TRITON_INTERPRET=1 to run it on the CPU through Triton's "
                            "interpreter")
        self.name = mdef.name
        B, Hq, Lq, D = q.shape
        Hkv, Lk, DV = k.shape[1], k.shape[2], v.shape[3]
        self.shape = (B, Hq, Hkv, Lq, Lk, D, DV)
        self.bm = build(mdef, None if mdef.grid else Lq, None if mdef.grid else Lk, Hq, block_q,
                        block_k, evaluate=reference.evaluate, **inputs)
        # NOTE: the runtime arguments refer to this mask's IR nodes, so they come from this
        # generation, never from the cached module (equal masks share one module).
        src, extras = generate(mdef)
        self.module = _load(src, mdef.name)
        xs = prepare_inputs(mdef, Lk, inputs)
        self.extra = _extra_tensors(mdef, extras, Lq, Lk, xs, q.device)
        self.device = q.device
        self.scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
        self.blocks = dict(BM=block_q, BN=block_k, BD=_pow2(D), BDV=_pow2(DV))
        t = self._t
        bm = self.bm
        self.rows = (t(bm.full_kv_num_blocks), t(bm.full_kv_indices), t(bm.kv_num_blocks),
                     t(bm.kv_indices), t(bm.live), t(bm.head_group))
        TB, G, NQ = bm.kv_num_blocks.shape
        self.row_dims = (TB, G, NQ, bm.full_kv_indices.shape[-1], bm.kv_indices.shape[-1])

    def _t(self, a):
        return self._torch.as_tensor(np.ascontiguousarray(a, dtype=np.int32), device=self.device)

    def _common(self):
        B, Hq, Hkv, Lq, Lk, D, DV = self.shape
        return (Lq, Lk, Hq, Hq // Hkv, D, DV, self.scale / math.log(2))

    def forward(self, q, k, v):
        """``(out, lse)``; lse in natural log, float32, ``-inf`` on rows that keep nothing."""
        torch = self._torch
        B, Hq, Hkv, Lq, Lk, D, DV = self.shape
        out = torch.empty((B, Hq, Lq, DV), dtype=q.dtype, device=q.device)
        lse = torch.empty((B, Hq, Lq), dtype=torch.float32, device=q.device)
        kernel = getattr(self.module, f"fwd_{self.name}")
        kernel[(self.row_dims[2], B * Hq)](
            q, k, v, out, lse,
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
            lse.stride(0), lse.stride(1), *self.rows, *self.row_dims, *self._common(),
            *self.extra, **self.blocks)
        return out, lse

    def backward(self, q, k, v, out, lse, dout, dlse=None):
        """``(dq, dk, dv)`` from the saved forward and the output (and lse) gradients."""
        torch = self._torch
        B, Hq, Hkv, Lq, Lk, D, DV = self.shape
        dout = dout.contiguous()
        delta = (dout.float() * out.float()).sum(-1)
        if dlse is not None:
            delta = delta - dlse.float()  # d lse / d s = p: folds into the softmax gradient
        delta = delta.contiguous()
        dq = torch.empty_like(q)
        common = self._common() + (self.scale,)
        getattr(self.module, f"bwd_dq_{self.name}")[(self.row_dims[2], B * Hq)](
            q, k, v, dout, lse, delta, dq,
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), dout.stride(0), dout.stride(1),
            dout.stride(2), lse.stride(0), lse.stride(1),
            *self.rows, *self.row_dims, *common, *self.extra, **self.blocks)
        pn, pi, fn, fi = self.bm.transposed()
        t = self._t
        TB, G, NK = pn.shape
        dk = torch.empty((B, Hq, Lk, D), dtype=torch.float32, device=q.device)
        dv = torch.empty((B, Hq, Lk, DV), dtype=torch.float32, device=q.device)
        getattr(self.module, f"bwd_dkdv_{self.name}")[(NK, B * Hq)](
            q, k, v, dout, lse, delta, dk, dv,
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), dout.stride(0), dout.stride(1),
            dout.stride(2), lse.stride(0), lse.stride(1),
            dk.stride(0), dk.stride(1), dk.stride(2), dv.stride(0), dv.stride(1), dv.stride(2),
            t(fn), t(fi), t(pn), t(pi), self.rows[5], TB, G, NK, fi.shape[-1], pi.shape[-1],
            *common, *self.extra, **self.blocks)
        # GQA: the query heads of one kv head add their gradients
        rep = Hq // Hkv
        dk = dk.view(B, Hkv, rep, Lk, D).sum(2).to(k.dtype)
        dv = dv.view(B, Hkv, rep, Lk, DV).sum(2).to(v.dtype)
        return dq, dk, dv


def attention(mask, q, k, v, scale=None, return_lse=False, block_q=64, block_k=64, **inputs):
    """Attention through the generated kernels, differentiable (``torch.autograd``)."""
    import torch

    class _Fn(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v):
            launch = Launch(mask, q, k, v, scale, block_q, block_k, **inputs)
            q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
            out, lse = launch.forward(q, k, v)
            ctx.launch = launch
            ctx.save_for_backward(q, k, v, out, lse)
            return out, lse

        @staticmethod
        def backward(ctx, dout, dlse):
            q, k, v, out, lse = ctx.saved_tensors
            if dout is None:
                dout = torch.zeros_like(out)
            return ctx.launch.backward(q, k, v, out, lse, dout, dlse)

    out, lse = _Fn.apply(q, k, v)
    return (out, lse) if return_lse else out


def forward(mask, q, k, v, scale=None, block_q: int = 64, block_k: int = 64, **inputs):
    """Run the generated forward kernel once: ``(out, lse)``."""
    launch = Launch(mask, q, k, v, scale, block_q, block_k, **inputs)
    return launch.forward(q.contiguous(), k.contiguous(), v.contiguous())
