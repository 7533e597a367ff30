"""Compile a mask's generated Triton kernels for a GPU architecture without a GPU.

Triton's PyPI wheel carries ``ptxas``, so the whole pipeline (Python AST -> TTIR -> TTGIR
-> LLVM IR -> PTX -> cubin) runs on any machine. :func:`compile_kernels` records the
arguments of one attention call (forward and backward) with CPU tensors standing in for
the GPU's, compiles every kernel with the tiles a GPU would use, and reports the resources
each needs, so code-generation errors and tiles that do not fit show up before a GPU run.
Needs Triton's compiler, not its interpreter (``TRITON_INTERPRET`` unset).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["KernelReport", "compile_kernels", "record_calls", "specializations", "SHARED_LIMIT"]

# bytes of shared memory one program may use (opt-in maximum), by compute capability
SHARED_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024,
                100: 227 * 1024, 120: 99 * 1024}


@dataclass(frozen=True)
class KernelReport:
    """One compiled kernel: its tiles and what it needs per program."""

    kernel: str
    block_q: int
    block_k: int
    num_warps: int
    num_stages: int
    shared: int            # bytes of shared memory
    registers: int | None  # per thread (from cuobjdump), None if unknown
    spills: int | None     # bytes of local memory per thread (register spills)
    seconds: float         # compile time
    specialization: str = ""  # what Triton's launcher keys its compiled variants on

    def fits(self, arch: int) -> bool:
        return self.shared <= SHARED_LIMIT.get(arch, 99 * 1024)


class _Recorder:
    """Stands in for a ``@triton.jit`` kernel: ``kernel[grid](*args, **kw)`` is recorded."""

    def __init__(self, fn, calls):
        self.fn, self.calls = fn, calls

    def __getitem__(self, grid):
        return lambda *args, **kw: self.calls.append((self.fn, args, kw))


class _Module:
    def __init__(self, module, calls):
        self._module, self._calls = module, calls

    def __getattr__(self, name):
        return _Recorder(getattr(self._module, name), self._calls)


_LAUNCH_OPTIONS = ("num_warps", "num_stages", "enable_fp_fusion")


def _resources(cubin: bytes) -> tuple[int | None, int | None]:
    """``(registers, spill bytes)`` per thread from ``cuobjdump -res-usage``."""
    import triton
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not tool.exists():
        return None, None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([str(tool), "-res-usage", f.name], capture_output=True,
                             text=True).stdout
    regs = re.search(r"REG:(\d+)", out)
    local = re.search(r"LOCAL:(\d+)", out)
    return (int(regs.group(1)) if regs else None, int(local.group(1)) if local else None)


def specialize(fn, args, kw, backend):
    """What Triton's launcher derives from one call of ``fn`` (a ``@triton.jit`` kernel),
    using its own binder: ``(signature, constexprs, attrs, options, key)``. Equal keys mean
    one compiled variant serves both calls; ``attrs`` carry the divisibility and alignment
    facts the real launch would give the compiler."""
    from triton.runtime.jit import create_function_from_signature
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    launch = {n: kw[n] for n in _LAUNCH_OPTIONS if n in kw}
    bound, spec, opts = binder(*args, **{n: v for n, v in kw.items() if n not in launch},
                               **launch)
    options, signature, constexprs, attrs = fn._pack_args(backend, launch, bound, spec, opts)
    return signature, constexprs, attrs, options.__dict__, str(spec) + str(sorted(launch.items()))


def record_calls(mask, dtype: str = "bfloat16", head_dim: int = 128, q_len: int | None = None,
                 kv_len: int | None = None, heads: int = 2, kv_heads: int | None = None,
                 config=None, **inputs) -> list:
    """The kernel launches of one attention call (forward and backward, and a decoding step
    with one query) as ``(kernel, args, kwargs)``, with CPU tensors standing in for the
    GPU's; nothing runs."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("compiling kernels needs Triton's compiler: unset TRITON_INTERPRET")
    import torch

    from maskc.testing import runtime_inputs

    from maskc.backends import triton as tb

    tdtype = getattr(torch, dtype)
    if mask.grid is not None:
        q_len = kv_len = int(torch.tensor(mask.grid).prod())
    q_len = q_len or 256
    kv_len = kv_len or q_len
    kv_heads = kv_heads or heads
    inputs = inputs or runtime_inputs(mask, kv_len)
    q = torch.zeros(1, heads, q_len, head_dim, dtype=tdtype)
    k = torch.zeros(1, kv_heads, kv_len, head_dim, dtype=tdtype)
    # NOTE: config None: the plan's tile rule for a CUDA device, as a real launch would get
    from maskc.analysis.sizes import split_score_inputs
    inputs, floats = split_score_inputs(mask.ir, inputs)
    launch = tb.Launch(mask, q, k, k, None, config, _device_checked=True, score_inputs=floats,
                       **inputs)
    calls: list = []
    launch.module = _Module(launch.module, calls)
    out, lse = launch.forward(q, k, k)
    launch.backward(q, k, k, out, lse, torch.zeros_like(out), wanted=tuple(floats))
    if mask.grid is None:  # a decoding step: one query per sequence, the whole cache
        qd = q[:, :, -1:].contiguous()
        step = tb.Launch(mask, qd, k, k, None, config, _device_checked=True,
                         score_inputs=floats, **inputs)
        if step.decodes(grad=False):
            step.module = _Module(step.module, calls)
            step.decode(qd, k, k)
    return calls


def specializations(mask, arch: int = 90, **kw) -> dict[str, str]:
    """Per kernel, the key Triton's launcher would compile it under for this call
    (:func:`record_calls` arguments): equal keys at two lengths mean no recompilation."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    backend = make_backend(GPUTarget("cuda", arch, 32))
    return {fn.__name__: specialize(fn, args, kwargs, backend)[4]
            for fn, args, kwargs in record_calls(mask, **kw)}


def compile_kernels(mask, arch: int = 90, dtype: str = "bfloat16", head_dim: int = 128,
                    q_len: int | None = None, kv_len: int | None = None, heads: int = 2,
                    kv_heads: int | None = None, config=None, **inputs) -> list[KernelReport]:
    """Compile the forward, delta, dq, dk/dv and decode kernels of ``mask`` for ``sm_<arch>``, each
    specialized as Triton's launcher would specialize that call.

    Lengths only shape the recorded call (kernels do not depend on them). ``config`` is a
    :class:`~maskc.backends.triton.KernelConfig`; by default the one a CUDA device gets.
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend

    calls = record_calls(mask, dtype, head_dim, q_len, kv_len, heads, kv_heads, config,
                         **inputs)
    reports = []
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    for fn, args, kw in calls:
        signature, constexprs, attrs, options, key = specialize(fn, args, kw, backend)
        start = time.perf_counter()
        compiled = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs,
                                            attrs=attrs), target=target, options=options)
        seconds = time.perf_counter() - start
        regs, spills = _resources(compiled.asm["cubin"])
        values = {**dict(zip(fn.arg_names, args)), **kw}
        reports.append(KernelReport(fn.__name__, values.get("BM", 0), values.get("BN", 0),
                                    compiled.metadata.num_warps, compiled.metadata.num_stages,
                                    compiled.metadata.shared, regs, spills, seconds, key))
    return reports
