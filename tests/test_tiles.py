"""The tile engine (backend="tiles"): torch operations on the visited tiles, against the
float64 reference, forward and backward, for every spec family."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import maskc
from maskc.errors import MaskError

SPECS = {
    "sink window": "mask m = causal & (sink(4) | window(before = 40, after = 0))",
    "grid": "mask m over grid(y = 12, x = 12) = neighborhood(5)",
    "random blocks": "mask m = blocks(16, random(2, seed = 3)) | causal",
    "selection": ("mask m(input idx) = causal & (window(before = 15, after = 0) | "
                  "blocks(16, select(idx)))"),
    "documents alibi": "mask m(input doc, input slopes) = causal & same(doc) with alibi(slopes)",
    "per head softcap": ("mask m = causal & heads { 0..1: window(before = 30, after = 0), "
                         "_: sink(8) | window(before = 10, after = 0) } with softcap(5.0)"),
    "learned bias": "mask m(input rel) = window(before = 20, after = 20) with s + rel[h, p - k + 20]",
    "empty rows": "mask m = where(p >= 100) & causal",
}


def _inputs(m, n, rng):
    ids, floats = {}, {}
    if "idx" in m.inputs:
        nb = -(-n // 16)
        ids["idx"] = rng.integers(-1, nb, (2, 4, nb, 3))
    if "doc" in m.inputs:
        ids["doc"] = np.sort(rng.integers(0, 4, (2, n)), axis=1)
    if "slopes" in m.source.text:
        floats["slopes"] = maskc.alibi_slopes(4).double().requires_grad_()
    if "rel[" in m.source.text:
        floats["rel"] = torch.randn(4, 41, dtype=torch.float64, requires_grad=True)
    return ids, floats


@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize("lengths", [(150, 150), (90, 150), (150, 90)])
def test_tiles_equal_the_reference(name, lengths):
    m = maskc.compile(SPECS[name])
    lq, lk = (144, 144) if m.grid else lengths
    if m.grid and lengths != (150, 150):
        pytest.skip("a grid mask has the grid's length")
    rng = np.random.default_rng(0)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, lq, 8, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 2, lk, 8, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 2, lk, 8, generator=g, dtype=torch.float64, requires_grad=True)
    ids, floats = _inputs(m, lk, rng)
    ref = m.attention(q, k, v, backend="reference", **ids, **floats)
    out = m.attention(q, k, v, backend="tiles", **ids, **floats)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
    wrt = (q, k, v, *floats.values())
    go = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    want = torch.autograd.grad((ref * go).sum(), wrt)
    got = torch.autograd.grad((out * go).sum(), wrt)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-11, rtol=0)
    if name == "empty rows":
        assert (out[:, :, :100 - (lk - lq)] == 0).all() if lk >= lq else True


def test_float32_training_and_checkpointed_tiles(monkeypatch):
    """float32 (the CPU training dtype) within float32 error of the reference, also when
    every tile is checkpointed (large problems)."""
    from maskc.backends import tiles
    m = maskc.compile(SPECS["documents alibi"])
    rng = np.random.default_rng(1)
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 4, 300, 16, generator=g, requires_grad=True) for _ in range(3))
    ids, floats = _inputs(m, 300, rng)
    floats = {n: t.detach().float().requires_grad_() for n, t in floats.items()}
    ref = m.attention(q, k, v, backend="reference", **ids, **floats)
    want = torch.autograd.grad(ref.square().sum(), (q, k, v))
    for limit in (tiles._SAVE_LIMIT, 0):
        monkeypatch.setattr(tiles, "_SAVE_LIMIT", limit)
        out = m.attention(q, k, v, backend="tiles", **ids, **floats)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, ref, atol=2e-6, rtol=2e-5)
        for a, b in zip(torch.autograd.grad(out.square().sum(), (q, k, v)), want):
            torch.testing.assert_close(a, b, atol=2e-5, rtol=2e-4)


def test_auto_trains_on_the_tile_engine_on_the_cpu(monkeypatch):
    """Without the Triton interpreter, auto picks the tile engine for gradients on the CPU
    (float32), and FlexAttention when no gradient is needed."""
    from maskc.backends import tiles
    calls = []
    real = tiles.attention
    monkeypatch.setattr(tiles, "attention", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    m = maskc.compile(SPECS["sink window"])
    q = torch.randn(1, 2, 64, 8, requires_grad=True)
    m.attention(q, q, q).sum().backward()
    assert calls == [1] and q.grad is not None
    with pytest.raises(MaskError, match="log-sum-exp"):
        m.attention(q, q, q, backend="tiles", return_lse=True)


def test_bad_input_batch():
    m = maskc.compile("mask m(input doc) = causal & same(doc)")
    q = torch.randn(3, 1, 32, 8)
    with pytest.raises(MaskError):
        m.attention(q, q, q, backend="tiles", doc=np.zeros((2, 32), dtype=np.int64))
