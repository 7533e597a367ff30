"""Concurrent calls: threads sharing masks and plans, processes sharing one kernel cache.

Triton's interpreter patches ``triton.language`` in place for each launch and keeps the
program id in one module-global builder, so two interpreted launches at once broke each
other ("Did you forget to add @triton.jit", issue 11 item 13); maskc serializes interpreted
launches (``launch._INTERPRETER_LOCK``) and imports each generated module once under a lock.
"""

import os
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

import maskc
from maskc.backends.triton import cache

from conftest import GPU_RUN

SPECS = [f"mask m{i} = causal & window(before = {i + 2}, after = 0)" for i in range(5)]


def _hammer(backend: str, calls: int = 20, threads: int = 4, grad: bool = False, lse=False):
    """``calls`` attention calls from ``threads`` threads (masks shared between threads),
    each against the reference: the list of failures."""
    masks = [maskc.compile(s) for s in SPECS]
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 64, 16, generator=gen) for _ in range(3))
    start = threading.Barrier(threads)

    def call(i):
        if i < threads:
            start.wait()  # the first calls start together
        m = masks[i % len(masks)]
        leaves = [x.clone().requires_grad_(grad) for x in (q, k, v)]
        try:
            got = m.attention(*leaves, backend=backend, return_lse=lse)
            out = got[0] if lse else got
            ref = m.attention(q, k, v, backend="reference").double()
            err = (out.detach().double() - ref).abs().max().item()
            if not err < 1e-4:
                return f"call {i}: max error {err:.3g}"
            if grad:
                out.sum().backward()
                if any(x.grad is None or not torch.isfinite(x.grad).all() for x in leaves):
                    return f"call {i}: bad gradients"
        except Exception as err:  # noqa: BLE001 - the test reports every failure
            return f"call {i}: {type(err).__name__}: {err}"
        return None

    with ThreadPoolExecutor(threads) as ex:
        return [r for r in ex.map(call, range(calls)) if r is not None]


@pytest.mark.skipif(GPU_RUN, reason="the interpreter's races (a GPU run compiles)")
def test_triton_from_threads_forward_and_backward():
    assert _hammer("triton", grad=True, lse=True) == []


@pytest.mark.parametrize("backend", ["reference", "flex-eager"])
def test_other_backends_from_threads(backend):
    assert _hammer(backend, grad=backend == "reference") == []


def test_compiled_flex_from_threads():
    # one mask, one shape: one compile (under dynamo's own lock), then concurrent runs
    m = maskc.compile("mask m = causal & window(before = 9, after = 0)")
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 64, 16, generator=gen) for _ in range(3))
    ref = m.attention(q, k, v, backend="reference").double()
    with ThreadPoolExecutor(4) as ex:
        outs = list(ex.map(lambda _: m.attention(q, k, v, backend="flex"), range(8)))
    assert all(torch.allclose(o.double(), ref, atol=1e-5) for o in outs)


def test_generated_module_is_imported_once_from_threads(tmp_path, monkeypatch):
    monkeypatch.setenv("MASKC_CACHE_DIR", str(tmp_path))
    src = "import triton\nX = object()\n"  # a fresh text: written and imported here
    with ThreadPoolExecutor(8) as ex:
        mods = list(ex.map(lambda _: cache.load(src, "threads"), range(16)))
    assert all(m is mods[0] for m in mods)
    assert [p.name for p in tmp_path.iterdir() if p.suffix != ""] == [
        Path(mods[0].__file__).name]  # one file, no temporary left over


_WORKER = textwrap.dedent("""
    import os, sys, time
    os.environ["TRITON_INTERPRET"] = "1"
    import torch, maskc
    m = maskc.compile("mask shared = causal & window(before = 7, after = 0)")
    src = m.kernel_source()
    while time.time() < float(sys.argv[1]):  # both processes write the module at once
        pass
    path = m.kernel_path()
    q, k, v = (torch.randn(1, 2, 48, 16, generator=torch.Generator().manual_seed(2))
               for _ in range(3))
    out = m.attention(q, k, v, backend="triton")
    ref = m.attention(q, k, v, backend="reference").double()
    assert path.read_text() == src
    assert torch.allclose(out.double(), ref, atol=1e-4), (out.double() - ref).abs().max()
    print("ok", path.name)
""")


@pytest.mark.skipif(GPU_RUN, reason="runs the interpreter in the workers")
def test_two_processes_share_one_empty_cache_dir(tmp_path):
    folder = tmp_path / "maskc-cache"  # empty and absent: both create it
    env = dict(os.environ, MASKC_CACHE_DIR=str(folder), TRITON_INTERPRET="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    # NOTE: the start time leaves both workers time to import torch first
    start = str(time.time() + 8)
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, start], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [p.communicate(timeout=240) for p in procs]
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err[-2000:]
        assert out.startswith("ok")
    assert len({out.split()[1] for out, _ in results}) == 1
    assert not [p for p in folder.iterdir() if p.suffix == ".tmp"]
