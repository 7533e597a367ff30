"""Running a plan's Triton kernels: runtime tensors, launches, autograd.

:func:`attention` asks the mask for its ``"triton"`` plan (:meth:`maskc.Mask.plan`: tiles,
token layout, grouped tables, all decided there), turns the plan's host tables into int32
tensors on the inputs' device once per plan, and launches the generated kernels of
:mod:`.codegen` (forward; delta, dq and dk/dv in the backward). Nothing here chooses a tile
or a layout: a GPU that lacks the resources for the planned tiles gets the plan retiled
(:meth:`~maskc.pipeline.KernelPlan.retiled`), remembered per kernel.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from dataclasses import dataclass

import numpy as np

from maskc.errors import MaskError, MaskInputError, MaskSizeError
from maskc.analysis.sizes import check_batch, check_qkv, listed, split_score_inputs
from maskc.passes.tiles import (KernelConfig, Tiles, aligned, block_alignment,  # noqa: F401
                                decode_packing, decode_splits, default_config, use_decode)


from maskc.backends.triton.cache import load
from maskc.backends.triton.codegen import generate

__all__ = ["forward", "attention", "available", "Launch", "KernelConfig", "Tiles",
           "default_config", "block_alignment", "aligned"]

# (module file, kernel, dtype, head dims, device, planned tiles) -> tiles that ran, after a
# fallback for resources
_FITTED: dict = {}

# NOTE: Triton's interpreter is not thread-safe. Each launch patches the builtins of the
# module-global ``triton.language`` in place and restores them when it returns
# (``_patch_lang``/``_LangPatchScope.restore`` in triton/runtime/interpreter.py), and it keeps
# the program id in one module-global builder (``interpreter_builder.set_grid_idx``). Two
# launches at once see unpatched builtins ("Did you forget to add @triton.jit") or each
# other's program ids (wrong tiles, silently). So interpreted launches run one at a time,
# process-wide; compiled launches on a GPU are not serialized.
_INTERPRETER_LOCK = threading.RLock()

# NOTE: Triton 3.9 warns on every first launch whose options leave FP fusion unset (its default
# changes in 3.10). maskc asks for it explicitly: fused multiply-adds, the behaviour it was
# tested with, and no warning in the user's output.
FP = {"enable_fp_fusion": True}


def _interpreted(kernel) -> bool:
    """Whether ``kernel`` runs in Triton's interpreter (``TRITON_INTERPRET=1`` at import)."""
    return type(kernel).__name__ == "InterpretedFunction"


def _serialized(kernel):
    """The context a launch of ``kernel`` runs in: the interpreter's lock, or nothing."""
    return _INTERPRETER_LOCK if _interpreted(kernel) else contextlib.nullcontext()


def _compute_dtype(kernel, dtype):
    """The dtype the kernels compute in for inputs of ``dtype``.

    NOTE: the interpreter stores bfloat16 as uint16 bit patterns, and its ``tl.dot`` multiplies
    those integers (``create_dot`` converts only 8-bit floats): bfloat16 gives garbage with no
    error. Under the interpreter bfloat16 inputs therefore run in float32 (outputs and
    gradients are cast back); float16 and float32 run as given, and so does everything on a GPU.
    """
    import torch
    return torch.float32 if dtype == torch.bfloat16 and _interpreted(kernel) else dtype


def available(device) -> bool:
    """Whether Triton can run on ``device`` here (a CUDA device, or the interpreter)."""
    return getattr(device, "type", str(device)) == "cuda" or \
        os.environ.get("TRITON_INTERPRET") == "1"


def _pow2(n: int) -> int:
    return max(16, 1 << (n - 1).bit_length())


def _int32(a, device):
    import torch
    return torch.as_tensor(np.ascontiguousarray(a, dtype=np.int32), device=device)


@dataclass(frozen=True)
class _PerCall:
    """A runtime argument that comes from each call's tensors (a device-merged selection)."""

    input: str
    kind: str


class _Tensors:
    """A plan's tables as kernel arguments on one device (cached on the plan)."""

    def __init__(self, plan, device):
        self.plan, self.device = plan, device
        # NOTE: the runtime arguments refer to this plan's IR nodes, so they come from this
        # generation, never from the cached module (equal masks share one module).
        src, extras = generate(plan.mdef)
        self.module = load(src, plan.mdef.name)
        self.extra = self._extra(extras)
        layout = plan.layout
        self.perm = _int32(layout.perm, device) if layout is not None else None
        self.inv = _int32(layout.inv, device) if layout is not None else None
        self.placeholder = _int32(np.zeros(1), device)  # an argument a kernel never reads
        self._rows: dict = {}

    def _extra(self, extras) -> list:
        """Kernel arguments for runtime data, in the order of the generated signature."""
        import torch
        b = self.plan.bound
        args = []
        for a in extras:
            if a.kind in ("input", "starts", "lens"):
                x = b.inputs[a.source] if a.kind == "input" else \
                    b.segments[a.source][0 if a.kind == "starts" else 1]
                if a.kind == "input" and x.size and x.dtype.itemsize > 4 and \
                        (x.min() < -(1 << 31) or x.max() >= 1 << 31):
                    # ids are only compared: their ranks fit the kernel's int32
                    x = np.unique(x, return_inverse=True)[1].reshape(x.shape)
                t = _int32(x, self.device)
                args += [t, t.stride(0) if t.shape[0] > 1 else 0]
                continue
            if a.kind == "grad" or a.kind.startswith("float"):
                args.append(_PerCall(a.source, a.kind))  # the call's score inputs
                continue
            if a.kind in ("select", "listed") and self.plan.chosen is not None:
                args.append(_PerCall(a.source, a.kind))  # the call's tensor (arguments())
                continue
            if a.kind in ("select", "listed"):
                x = b.inputs[a.source]  # (Bx, Hx, NB, r) or (Bx, Hx, r), int32
                if a.kind == "listed":
                    x = listed(x, b.kv_len).astype(np.int8)
                # NOTE: a read-only array (a broadcast view, or one the caller froze) is
                # copied: torch warns on tensors that share memory it may not write
                t = torch.as_tensor(np.require(x if x.size else np.zeros(1, x.dtype),
                                               requirements=("C", "W")), device=self.device)
                args += [t, x.strides[0] // x.itemsize if x.shape[0] > 1 else 0,
                         x.strides[1] // x.itemsize if x.shape[1] > 1 else 0, x.shape[-1]]
                continue
            bt = b.blocks.get(id(a.source))
            # NOTE: an empty table, or one no head reaches, still needs one element to point
            # at; its bounds stay 0, so the kernel never reads it.
            table = bt.table if bt is not None else np.zeros((0, 0), dtype=bool)
            first = bt.first if bt is not None else 0
            t = torch.as_tensor(np.ascontiguousarray(
                table if table.size else np.zeros((1, 1)), dtype=np.int8), device=self.device)
            args += [t, first, table.shape[0], table.shape[1]]
        return args

    def arguments(self, chosen: dict | None, floats: dict, grads: dict | None = None) -> list:
        """The runtime arguments of one call: the plan's, with the call's chosen tensors and
        score inputs (float32, contiguous) and, in the backward, their gradient buffers."""
        out = []
        for a in self.extra:
            if not isinstance(a, _PerCall):
                out.append(a)
            elif a.kind.startswith("float"):
                out += [floats[a.input], *floats[a.input].shape]
            elif a.kind == "grad":
                g = (grads or {}).get(a.input)
                # NOTE: without a buffer the flag is 0 and the pointer is never written
                out += [floats[a.input] if g is None else g, int(g is not None)]
            else:
                out += self.plan.chosen.arguments(a.input, a.kind, chosen, self.device)
        return out

    def tables(self, plan, kernel: str, chosen: dict | None = None, memo: dict | None = None,
               sequences=None) -> tuple:
        """``kernel``'s tables as its arguments: forward ones (query tile -> key tiles) for
        ``fwd``/``dq``/``decode``, transposed ones (key tile -> query tiles) for ``dkdv``;
        with ``sequences`` (a :class:`~.SequenceArgs`), each sequence's own (memo: the
        call's)."""
        t = plan.tiles[kernel]
        # NOTE: fwd and dq read the same arguments; dk/dv its transpose, decode two more
        # (a plan whose decode tiles equal its forward ones once got the forward's rows)
        key = (kernel if kernel in ("dkdv", "decode") else "fwd", t.block_q, t.block_k)
        if sequences is not None:
            if key not in memo:
                bm = plan.sequence_map(kernel, sequences.seqs, sequences.q_len,
                                       sequences.kv_len)
                memo[key] = self._rows_of(kernel, bm, bm.transposed() if kernel == "dkdv"
                                          else None)
            return memo[key]
        if plan.chosen is not None:  # merged from this call's tensors (memo: the call's)
            if key not in memo:
                rows = list(plan.chosen.tables(plan.block_map(kernel), chosen, kernel,
                                               self.device))
                at = 6 if kernel == "dkdv" else 5  # head_group; perm follows it
                rows.insert(at + 1, self.perm if self.perm is not None else rows[at])
                memo[key] = tuple(rows)
            return memo[key]
        if key not in self._rows:
            self._rows[key] = self._rows_of(kernel, plan.block_map(kernel),
                                            plan.transposed(kernel) if kernel == "dkdv" else None)
        return self._rows[key]

    def _rows_of(self, kernel: str, bm, transposed) -> tuple:
        """One block map's tables as kernel arguments (``transposed`` for dk/dv)."""
        import torch
        i32 = lambda a: _int32(a, self.device)  # noqa: E731
        head_group = i32(bm.head_group)
        perm = self.perm if self.perm is not None else head_group  # any int32 tensor
        if kernel == "dkdv":
            pn, pi, fn, fi = transposed
            TB, G, NK = pn.shape
            off = lambda w: torch.arange(TB * G * NK, device=self.device,  # noqa: E731
                                         dtype=torch.int64).reshape(TB, G, NK) * w
            return (i32(fn), i32(fi), off(fi.shape[-1]), i32(pn), i32(pi), off(pi.shape[-1]),
                    head_group, perm, TB, G, NK)
        TB, G, NQ = bm.kv_num_blocks.shape
        rows = (i32(bm.full_kv_num_blocks), i32(bm.full_kv_indices), i32(bm.kv_num_blocks),
                i32(bm.kv_indices), i32(bm.live), head_group, perm,
                TB, G, NQ, bm.full_kv_indices.shape[-1], bm.kv_indices.shape[-1])
        if kernel == "decode":  # the most tiles a row visits: how the splits are sized
            visited = bm.full_kv_num_blocks.astype(np.int64) + bm.kv_num_blocks
            rows += (int(visited.max(initial=0)), bm.head_group)
        return rows

    def to_layout(self, x):
        """``x`` (tokens on dim 2) in the kernels' token order."""
        return x if self.perm is None else x.index_select(2, self.perm)

    def from_layout(self, x):
        return x if self.inv is None else x.index_select(2, self.inv)


class SequenceArgs:
    """One call's sequences (docs/language.md section 13) as kernel arguments: ``info`` (int32
    ``(B, 4)``: lengths and offsets), ``valid`` (int8 ``(B, Lk)``, the keys ``kv_valid``
    keeps) and ``pages`` (int32 ``(B, P)``, the page table), each with its batch stride;
    absent ones are a placeholder the kernels never read (their flag is off)."""

    def __init__(self, seqs, q_len: int, kv_len: int, device):
        import torch
        self.seqs, self.q_len, self.kv_len = seqs, q_len, kv_len
        self.info = _int32(seqs.info(), device)
        self.has_valid = seqs.kv_valid is not None
        self.paged = seqs.page_table is not None
        self.valid, self.svlb = self.info, 0
        if self.has_valid:
            # NOTE: a view of the caller's bools (one byte each), no copy when contiguous
            self.valid = seqs.kv_valid.to(device).contiguous().view(torch.int8)
            self.svlb = self.valid.stride(0)
        self.pages, self.spb, self.page_size = self.info, 0, 1
        if self.paged:
            self.pages = _int32(seqs.page_table, device)
            self.spb, self.page_size = self.pages.stride(0), seqs.page_size

    def args(self) -> tuple:
        return self.info, self.valid, self.svlb, self.pages, self.spb

    @staticmethod
    def none(device_tensor) -> tuple:
        """The arguments of a call without sequences (``device_tensor``: any int32 tensor)."""
        return device_tensor, device_tensor, 0, device_tensor, 0


def _tensors(plan, device) -> _Tensors:
    key = ("triton tensors", str(device))
    if key not in plan.cache:
        plan.cache[key] = _Tensors(plan, device)
    return plan.cache[key]


class Launch:
    """One attention call's plan, kernels and runtime arguments, shared by forward and backward."""

    def __init__(self, mask, q, k, v, scale=None, config: KernelConfig | None = None,
                 _device_checked: bool = False, module=None, score_inputs=None, sequences=None,
                 **inputs):
        B, Hq, Lq, D = q.shape
        Hkv, Lk, DV = k.shape[1], k.shape[2], v.shape[3]
        if sequences is not None and sequences.page_table is not None:
            Lk = sequences.page_table.shape[1] * sequences.page_size  # the pages' keys
        gpu = q.device.type == "cuda" or _device_checked
        try:
            import triton  # noqa: F401
        except ImportError:
            raise MaskError("the Triton backend needs the triton package: pip install "
                            "'maskc[torch]' (or triton)") from None
        if not _device_checked and not available(q.device):
            raise MaskError(f"the Triton backend needs a CUDA device (got {q.device}); set "
                            "TRITON_INTERPRET=1 to run it on the CPU through Triton's "
                            "interpreter")
        grid = mask.grid is not None
        self.plan = mask.plan(None if grid else Lq, None if grid else Lk, Hq, Hkv,
                              target="triton", device="cuda" if gpu else q.device.type,
                              dtype=q.dtype, head_dim=max(D, DV), config=config, **inputs)
        check_batch(mask.ir, self.plan.batch, B)
        self.gpu = gpu
        self.name = mask.ir.name
        self.shape = (B, Hq, Hkv, Lq, Lk, D, DV)
        self.tensors = _tensors(self.plan, q.device)
        self.module = self.tensors.module if module is None else module
        self.chosen, self.memo = None, {}
        if self.plan.chosen is not None:
            # NOTE: the selections are this call's: checked (once per tensor version) before
            # any kernel runs; the tables are merged from them on the device
            self.chosen = {n: inputs[n] for n in self.plan.chosen.shapes}
            self.plan.chosen.check(self.chosen)
        self.floats = _score_inputs(mask.ir, score_inputs or {}, q.device)
        self.extra = self.tensors.arguments(self.chosen, self.floats)
        self.device = q.device
        self.dtype = q.dtype
        self.compute = _compute_dtype(getattr(self.module, f"fwd_{self.name}", None), q.dtype)
        self.scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
        self.dims = dict(BD=_pow2(D), BDV=_pow2(DV), PREC=_precision(self.compute),
                         EVEN_D=_pow2(D) == D and _pow2(DV) == DV,
                         PERMUTED=self.plan.layout is not None)
        self.bm = self.plan.block_map("fwd")
        self.seq = None if sequences is None else SequenceArgs(sequences, Lq, Lk, q.device)
        self.seq_args = SequenceArgs.none(self.tensors.placeholder) if self.seq is None else \
            self.seq.args()
        self.page_size = 1 if self.seq is None else self.seq.page_size
        self.flags = dict(SEQ=self.seq is not None,
                          VALID=self.seq is not None and self.seq.has_valid)
        self.paged = self.seq is not None and self.seq.paged

    def _common(self):
        B, Hq, Hkv, Lq, Lk, D, DV = self.shape
        return (Lq, Lk, Hq, Hq // Hkv, D, DV, self.scale / math.log(2))

    def _kv_strides(self, k, v) -> tuple:
        """``(skb, skh, skn, svb, svh, svn)`` and the page strides ``(skp, svp)``: a paged
        cache ``(num_pages, Hkv, page_size, D)`` has no batch stride, its pages one."""
        if self.paged:
            return (0, k.stride(1), k.stride(2), 0, v.stride(1), v.stride(2)), \
                (k.stride(0), v.stride(0))
        return (k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2)), \
            (0, 0)

    def _empty(self, shape, dtype, like, fill=None):
        """An output buffer: rows past a sequence's length are never written, so with
        sequences they start as zeros (``fill``: lse's -inf)."""
        import torch
        if self.seq is None:
            return torch.empty(shape, dtype=dtype, device=like.device)
        return torch.full(shape, 0.0 if fill is None else fill, dtype=dtype, device=like.device)

    def _run(self, kind: str, dtype, launch):
        """Launch ``kind`` at the plan's tiles, retiling the plan when the GPU lacks the shared
        memory or registers (remembered per kernel, so the fallback is paid once)."""
        planned = self.plan.tiles[kind]
        key = (id(self.module), kind, str(dtype), self.shape[5], self.shape[6], str(self.device),
               planned)
        tiles = _FITTED.get(key, planned)
        kernel = getattr(self.module, f"{'bwd_' if kind != 'fwd' else ''}{kind}_{self.name}", None)
        while True:
            try:
                with _serialized(kernel):
                    return launch(self.plan.retiled(kind, tiles), tiles)
            except Exception as err:  # triton.runtime.errors.OutOfResources, by name
                smaller = tiles.smaller() if type(err).__name__ == "OutOfResources" else None
                if smaller is None:
                    raise
                tiles = smaller
                _FITTED[key] = tiles

    def forward(self, q, k, v):
        """``(out, lse)``; lse in natural log, float32, ``-inf`` on rows that keep nothing."""
        import torch
        B, Hq, Hkv, Lq, Lk, D, DV = self.shape
        out = self._empty((B, Hq, Lq, DV), q.dtype, q)
        lse = self._empty((B, Hq, Lq), torch.float32, q, float("-inf"))
        kernel = getattr(self.module, f"fwd_{self.name}")
        kv, (skp, svp) = self._kv_strides(k, v)

        def launch(plan, t: Tiles):
            rows = self.tensors.tables(plan, "fwd", self.chosen, self.memo, self.seq)
            kernel[(-(-Lq // t.block_q), B * Hq)](
                q, k, v, out, lse, q.stride(0), q.stride(1), q.stride(2), *kv,
                out.stride(0), out.stride(1), out.stride(2), lse.stride(0), lse.stride(1),
                *rows, *self._common(), *self.seq_args, skp, svp, self.page_size,
                *self.extra, BM=t.block_q, BN=t.block_k, num_warps=t.num_warps,
                num_stages=t.num_stages, PAGED=self.paged, **self.flags, **self.dims, **FP)
        self._run("fwd", q.dtype, launch)
        return out, lse

    def decodes(self, grad: bool) -> bool:
        """Whether this call runs the decode kernel (the plan's rule, ``use_decode``)."""
        return use_decode(self.shape[3], grad, self.plan.layout is not None,
                          self.plan.chosen is not None)

    def decode(self, q, k, v):
        """``(out, lse)`` from the decode kernel (flash-decoding, GQA packing) and its
        log-sum-exp combine; forward only."""
        import torch
        B, Hq, Hkv, Lq, Lk, D, DV = self.shape
        out = self._empty((B, Hq, Lq, DV), q.dtype, q)
        lse = self._empty((B, Hq, Lq), torch.float32, q, float("-inf"))
        kernel = getattr(self.module, f"decode_{self.name}")
        combine = getattr(self.module, f"decode_combine_{self.name}")
        kv, (skp, svp) = self._kv_strides(k, v)
        sms = torch.cuda.get_device_properties(q.device).multi_processor_count \
            if q.device.type == "cuda" else 1
        dims = {n: x for n, x in self.dims.items() if n != "PERMUTED"}

        def launch(plan, t: Tiles):
            *rows, visited, head_rows = self.tensors.tables(plan, "decode", None, self.memo,
                                                            self.seq)
            gp = decode_packing(np.asarray(head_rows), Hkv, Lq)
            programs = B * (Hq // gp)
            splits, per = decode_splits(visited, programs, self.gpu, sms)
            po = torch.empty((B, Hq, splits, Lq, DV), dtype=torch.float32, device=q.device)
            pl = torch.empty((B, Hq, splits, Lq), dtype=torch.float32, device=q.device)
            kernel[(splits, programs)](
                q, k, v, po, pl, q.stride(0), q.stride(1), q.stride(2), *kv, *rows,
                *self._common(), *self.seq_args, skp, svp, self.page_size, gp, splits, per,
                *self.extra, BM=max(16, _pow2(gp * Lq)), BN=t.block_k, num_warps=t.num_warps,
                num_stages=t.num_stages, PAGED=self.paged, **self.flags, **dims, **FP)
            with _serialized(combine):
                combine[(B * Hq, Lq)](po, pl, out, lse, out.stride(0), out.stride(1),
                                      out.stride(2), lse.stride(0), lse.stride(1), Hq, Lq,
                                      splits, DV, BS=max(2, 1 << (splits - 1).bit_length()),
                                      BDV=self.dims["BDV"], **FP)
        self._run("decode", q.dtype, launch)
        return out, lse

    def backward(self, q, k, v, out, lse, dout, dlse=None, wanted=()):
        """``(dq, dk, dv, grads)`` from the saved forward and the output (and lse) gradients;
        ``grads`` of the score inputs named in ``wanted`` (float32)."""
        import torch
        B, Hq, Hkv, Lq, Lk, D, DV = self.shape
        m = self.module
        dout = dout.contiguous()
        delta = torch.empty_like(lse)
        bq = 64 if self.gpu else 16
        kernel = getattr(m, f"bwd_delta_{self.name}")
        with _serialized(kernel):
            kernel[(-(-Lq // bq), B * Hq)](
                out, dout, delta, out.stride(0), out.stride(1), out.stride(2), dout.stride(0),
                dout.stride(1), dout.stride(2), delta.stride(0), delta.stride(1), Lq, Hq, DV,
                BM=bq, BDV=self.dims["BDV"], EVEN_D=self.dims["EVEN_D"], **FP)
        if dlse is not None:
            delta -= dlse.float()  # d lse / d s = p: folds into the softmax gradient
        strides = (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                   v.stride(0), v.stride(1), v.stride(2), dout.stride(0), dout.stride(1),
                   dout.stride(2), lse.stride(0), lse.stride(1))
        common = self._common() + (self.scale,)
        dq = self._empty(q.shape, q.dtype, q)
        dk, dv = self._empty(k.shape, k.dtype, k), self._empty(v.shape, v.dtype, v)
        seq = self.seq_args[:3]  # the backward reads no paged cache
        grads = {n: torch.zeros_like(self.floats[n]) for n in wanted}
        extra = self.tensors.arguments(self.chosen, self.floats, grads) if grads else self.extra

        def launch_dq(plan, t: Tiles):
            for g in grads.values():  # a retiled launch starts again
                g.zero_()
            rows = self.tensors.tables(plan, "dq", self.chosen, self.memo, self.seq)
            getattr(m, f"bwd_dq_{self.name}")[(-(-Lq // t.block_q), B * Hq)](
                q, k, v, dout, lse, delta, dq, *strides, *rows, *common, *seq, *extra,
                BM=t.block_q, BN=t.block_k, num_warps=t.num_warps, num_stages=t.num_stages,
                **self.flags, **self.dims, **FP)

        def launch_dkdv(plan, t: Tiles):
            cols = self.tensors.tables(plan, "dkdv", self.chosen, self.memo, self.seq)
            getattr(m, f"bwd_dkdv_{self.name}")[(-(-Lk // t.block_k), B * Hkv)](
                q, k, v, dout, lse, delta, dk, dv, *strides,
                dk.stride(0), dk.stride(1), dk.stride(2), dv.stride(0), dv.stride(1),
                dv.stride(2), *cols, *common, *seq, *self.extra, BM=t.block_q, BN=t.block_k,
                num_warps=t.num_warps, num_stages=t.num_stages, **self.flags, **self.dims, **FP)
        self._run("dq", q.dtype, launch_dq)
        self._run("dkdv", q.dtype, launch_dkdv)
        return dq, dk, dv, grads


def _score_inputs(mdef, floats: dict, device) -> dict:
    """The score's float inputs as the kernels read them: float32, contiguous, on ``device``
    (checked by ``sizes.split_score_inputs``, then what the kernels add)."""
    import torch
    rest, floats = split_score_inputs(mdef, floats, device)
    if rest:
        raise MaskInputError(f"mask '{mdef.name}' reads no float input '{next(iter(rest))}' "
                             "in its score", mdef.span)
    out = {}
    for name, x in floats.items():
        if x.numel() >= 1 << 31:
            raise MaskSizeError(f"input '{name}' has {x.numel():,} entries; the Triton kernels "
                                "index float inputs with 32 bits", mdef.span)
        out[name] = x.detach().to(torch.float32).contiguous()
    return out


def _precision(dtype) -> str:
    """``tl.dot`` input precision: float32 inputs stay IEEE unless torch allows TF32 for
    matmuls (as ``scaled_dot_product_attention`` and FlexAttention do)."""
    import torch
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def _config(config, block_q, block_k):
    if config is not None and not isinstance(config, KernelConfig):
        raise MaskError(f"config must be a maskc.KernelConfig, got "
                        f"{type(config).__name__}")
    if block_q is None and block_k is None:
        return config
    if config is not None:
        raise MaskError("give either config or block_q/block_k, not both")
    block_q = 64 if block_q is None else block_q
    return KernelConfig.uniform(block_q, block_q if block_k is None else block_k)


def attention(mask, q, k, v, scale=None, return_lse=False, block_q=None, block_k=None,
              config: KernelConfig | None = None, module=None, sequences=None, **inputs):
    """Attention through the generated kernels, differentiable (``torch.autograd``).

    ``config`` (a :class:`KernelConfig`) or ``block_q``/``block_k`` (one tile size for all
    three kernels) override :func:`default_config`. ``module`` is the generated module whose
    kernels run (by default the cached one for ``mask``; a module written by ``maskc compile
    -o`` passes itself). ``sequences`` (:class:`maskc.analysis.sequences.Sequences`, checked
    by ``Mask.attention``) gives each sequence its lengths, offsets, valid keys and pages;
    ``k``/``v`` are then paged caches when it has a page table.
    """
    import torch
    if sequences is None or sequences.page_table is None:
        check_qkv(mask.ir, q, k, v)
    config = _config(config, block_q, block_k)
    inputs, floats = split_score_inputs(mask.ir, inputs, q.device)
    names = tuple(floats)
    if sequences is not None and sequences.page_table is not None and \
            torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        raise MaskError("gradients through a paged cache are not supported (the paged "
                        "kernels are forward only); pass the keys and values as "
                        "(B, Hkv, L, D) tensors to train", mask.ir.span)
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, *floats.values()))
    out, lse = _function().apply(q, k, v, (mask, scale, config, module, inputs, names,
                                           sequences, grad), *(floats[n] for n in names))
    return (out, lse) if return_lse else out


_FUNCTION: list = []


def _function():
    """The ``torch.autograd.Function`` of the kernels (one class, made on first use: torch
    is imported lazily)."""
    if _FUNCTION:
        return _FUNCTION[0]
    with _INTERPRETER_LOCK:  # NOTE: made once, even when the first calls come from threads
        if not _FUNCTION:
            _FUNCTION.append(_make_function())
    return _FUNCTION[0]


def _make_function():
    import torch

    class TritonAttention(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v, call, *floats):
            mask, scale, config, module, inputs, names, sequences, grad = call
            launch = Launch(mask, q, k, v, scale, config, module=module,
                            score_inputs=dict(zip(names, floats)), sequences=sequences,
                            **inputs)
            ctx.names = names
            ctx.float_dtypes = tuple(x.dtype for x in floats)
            t = launch.tensors  # a tiled token layout reorders the tokens around the kernels
            ctx.dtypes = tuple(x.dtype for x in (q, k, v))
            q = t.to_layout(q).to(launch.compute).contiguous()
            # NOTE: a paged cache is read through its strides (a (pages, page_size, Hkv, D)
            # view needs no copy); only its head dim must be contiguous
            k, v = (x.to(launch.compute) if launch.paged and x.stride(-1) == 1 else
                    t.to_layout(x).to(launch.compute).contiguous() for x in (k, v))
            if launch.decodes(grad):  # a few queries per sequence, no gradient
                out, lse = launch.decode(q, k, v)
                return out.to(launch.dtype), lse
            out, lse = launch.forward(q, k, v)
            ctx.launch = launch
            ctx.save_for_backward(q, k, v, out, lse)
            return t.from_layout(out).to(launch.dtype), t.from_layout(lse)

        @staticmethod
        def backward(ctx, dout, dlse):
            q, k, v, out, lse = ctx.saved_tensors
            t = ctx.launch.tensors
            dout = torch.zeros_like(out) if dout is None else t.to_layout(dout).to(out.dtype)
            dlse = None if dlse is None else t.to_layout(dlse)
            wanted = [n for n, need in zip(ctx.names, ctx.needs_input_grad[4:]) if need]
            *grads, dfloats = ctx.launch.backward(q, k, v, out, lse, dout, dlse, wanted)
            return (*(t.from_layout(g).to(d) for g, d in zip(grads, ctx.dtypes)), None,
                    *(dfloats[n].to(d) if n in dfloats else None
                      for n, d in zip(ctx.names, ctx.float_dtypes)))

    return TritonAttention


def forward(mask, q, k, v, scale=None, block_q: int | None = None, block_k: int | None = None,
            config: KernelConfig | None = None, **inputs):
    """Run the generated forward kernel once: ``(out, lse)``."""
    inputs, floats = split_score_inputs(mask.ir, inputs)
    launch = Launch(mask, q, k, v, scale, _config(config, block_q, block_k),
                    score_inputs=floats, **inputs)
    t = launch.tensors
    out, lse = launch.forward(*(t.to_layout(x).to(launch.compute).contiguous()
                                for x in (q, k, v)))
    return t.from_layout(out).to(launch.dtype), t.from_layout(lse)
