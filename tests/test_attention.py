"""``Mask.attention(..., backend="reference")`` against an independent torch implementation.

The oracle here is written from LANGUAGE.md section 3 alone: per batch ``b`` and query head
``h``, ``softmax(scale * q kᵀ + bias) v`` in float64 with ``bias = 0`` where the mask keeps
and ``-inf`` elsewhere, the mask indexed by the query head, query head ``h`` reading kv head
``h // (Hq // Hkv)``, and rows that keep no key giving zeros (log-sum-exp ``-inf``).
It loops over (b, h) and indexes kv heads explicitly, so it shares no code with the
backend (which uses ``repeat_interleave`` and a masked max-subtracted exp).
"""

from __future__ import annotations

import math
import os
import pathlib
import subprocess
import sys
import time
import tracemalloc

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import maskc  # noqa: E402

# --------------------------------------------------------------------------- the oracle


def oracle(mask, q, k, v, scale=None):
    """(out float64, lse float64) for a bool mask of shape (Hq, Lq, Lk) or (B, Hq, Lq, Lk)."""
    mask = torch.as_tensor(np.array(mask, dtype=bool))
    B, Hq, Lq, D = q.shape
    Hkv, Lk, Dv = k.shape[1], k.shape[2], v.shape[3]
    group = Hq // Hkv
    if mask.dim() == 3:
        mask = mask.unsqueeze(0).expand(B, -1, -1, -1)
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    out = torch.zeros(B, Hq, Lq, Dv, dtype=torch.float64)
    lse = torch.zeros(B, Hq, Lq, dtype=torch.float64)
    for b in range(B):
        for h in range(Hq):
            kv = h // group
            bias = torch.zeros(Lq, Lk, dtype=torch.float64).masked_fill(~mask[b, h], -math.inf)
            s = scale * (q[b, h].double() @ k[b, kv].double().T) + bias
            lse[b, h] = torch.logsumexp(s, dim=-1)          # -inf on rows that keep nothing
            p = torch.softmax(s, dim=-1)                     # NaN on those rows ...
            o = p @ v[b, kv].double()
            empty = ~mask[b, h].any(dim=-1)
            o[empty] = 0.0                                   # ... which the spec makes zeros
            out[b, h] = o
    return out, lse


def rand(*shape, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)


def qkv(B, Hq, Hkv, Lq, Lk, D, Dv=None, dtype=torch.float64, seed=0):
    Dv = D if Dv is None else Dv
    return (rand(B, Hq, Lq, D, dtype=dtype, seed=seed),
            rand(B, Hkv, Lk, D, dtype=dtype, seed=seed + 1),
            rand(B, Hkv, Lk, Dv, dtype=dtype, seed=seed + 2))


def check(m, q, k, v, scale=None, mask=None, atol=1e-10, **inputs):
    """Run the reference backend, compare out and lse with the oracle; return (out, lse)."""
    Hq, Lq, Lk = q.shape[1], q.shape[2], k.shape[2]
    if mask is None:
        if m.grid is None:
            mask = m.dense(Lq, Lk, heads=Hq, **inputs)
        else:
            mask = m.dense(heads=Hq, **inputs)
    out, lse = m.attention(q, k, v, scale=scale, backend="reference", return_lse=True, **inputs)
    want_out, want_lse = oracle(mask, q, k, v, scale)
    assert out.dtype == q.dtype
    assert out.shape == (q.shape[0], Hq, Lq, v.shape[3])
    assert lse.shape == (q.shape[0], Hq, Lq)
    assert not torch.isnan(out).any() and not torch.isnan(lse).any()
    torch.testing.assert_close(out.double(), want_out, atol=atol, rtol=atol)
    torch.testing.assert_close(lse.double(), want_lse, atol=atol, rtol=atol)
    # without return_lse only the output comes back, and it is the same
    plain = m.attention(q, k, v, scale=scale, backend="reference", **inputs)
    assert isinstance(plain, torch.Tensor)
    torch.testing.assert_close(plain, out, atol=0, rtol=0)
    return out, lse


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These tensors are tiny: intra-op threads only add waits (badly so on a busy machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def dense_limit():
    """Set a small dense limit for one test; always restore the default."""
    yield maskc.set_dense_limit
    maskc.set_dense_limit(None)


# --------------------------------------------------------------------------- masks

MASKS = {
    "causal_window": ("mask m = causal & window(3)", None),
    "global": ("mask m = window(2) | global([0, 7])", None),
    "heads": ("mask m = heads { 0..2: causal & window(before = 3, after = 0), "
              "2: window(1) | global([0]), _: causal }", None),
    "grid": ("mask m over grid(y = 4, x = 5) = neighborhood((3, 3))", 20),
    "bigbird": ("mask m = blocks(4, window(1) | global([0]) | random(1, seed = 3))", None),
    "strided": ("mask m = causal & (window(before = 3, after = 0) | strided(4))", None),
}


@pytest.mark.parametrize("name", sorted(MASKS))
@pytest.mark.parametrize("Hq,Hkv", [(4, 4), (4, 2), (4, 1)], ids=["MHA", "GQA", "MQA"])
def test_matches_oracle(name, Hq, Hkv):
    src, grid_len = MASKS[name]
    m = maskc.compile(src)
    L = grid_len or 19
    q, k, v = qkv(2, Hq, Hkv, L, L, 8, Dv=6, seed=len(name))
    check(m, q, k, v)


def test_per_head_mask_is_indexed_by_query_head():
    """Each query head gets its own mask; the GQA kv head is h // (Hq // Hkv)."""
    m = maskc.compile("mask m = heads { 0: none, 1: sink(1), 2: causal, _: all }")
    q, k, v = qkv(1, 4, 2, 6, 6, 4, seed=3)
    out, lse = check(m, q, k, v)
    assert torch.all(out[0, 0] == 0) and torch.all(torch.isinf(lse[0, 0]))
    # head 1 keeps only key 0 (of kv head 0): every row is v[0, 0, 0]
    torch.testing.assert_close(out[0, 1], v[0, 0, 0].expand(6, -1), atol=1e-12, rtol=0)
    # head 3 keeps everything and reads kv head 3 // 2 == 1
    full = torch.softmax(q[0, 3] @ k[0, 1].T / 2.0, -1) @ v[0, 1]
    torch.testing.assert_close(out[0, 3], full, atol=1e-12, rtol=0)
    # head 2 reads kv head 1 too (h // 2), which a modulo mapping (h % 2 == 0) would get wrong
    s = (q[0, 2] @ k[0, 1].T / 2.0).masked_fill(~torch.ones(6, 6, dtype=torch.bool).tril(),
                                                  -math.inf)
    torch.testing.assert_close(out[0, 2], torch.softmax(s, -1) @ v[0, 1], atol=1e-12, rtol=0)


def test_matches_sdpa_with_gqa():
    """A second oracle: torch's own scaled_dot_product_attention with a boolean mask."""
    F = torch.nn.functional
    m = maskc.compile("mask m = causal & (window(before = 4, after = 0) | sink(2))")
    q, k, v = qkv(2, 6, 2, 13, 13, 8, seed=11)
    out = m.attention(q, k, v, backend="reference")
    mask = torch.as_tensor(m.dense(13, heads=6).copy())
    want = F.scaled_dot_product_attention(q, k.repeat_interleave(3, 1), v.repeat_interleave(3, 1),
                                          attn_mask=mask)
    torch.testing.assert_close(out, want, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("Lq,Lk", [(5, 12), (1, 9), (12, 5)])
def test_q_len_differs_from_kv_len(Lq, Lk):
    """Bottom-right alignment: the mask sees p = q + (Lk - Lq); checked against numpy too."""
    m = maskc.compile("mask m = causal & window(before = 2, after = 0)")
    qi = np.arange(Lq)[:, None] + (Lk - Lq)
    ki = np.arange(Lk)[None, :]
    mask = ((ki <= qi) & (qi - ki <= 2))[None]
    np.testing.assert_array_equal(m.dense(Lq, Lk), mask)
    q, k, v = qkv(2, 2, 1, Lq, Lk, 4, seed=Lq)
    out, lse = check(m, q, k, v, mask=np.broadcast_to(mask, (2, Lq, Lk)))
    if Lq > Lk:  # the first Lq - Lk queries sit before every key
        assert torch.all(out[:, :, :Lq - Lk] == 0)
        assert torch.all(lse[:, :, :Lq - Lk] == -math.inf)
    # the last query is the last key's position: it always keeps the diagonal key
    assert torch.all(torch.isfinite(lse[:, :, -1]))


@pytest.mark.parametrize("scale", [0.3, 2.0, 1.0])
def test_custom_scale(scale):
    m = maskc.compile("mask m = window(2) | global([0])")
    q, k, v = qkv(1, 2, 2, 10, 10, 16, seed=5)
    out, _ = check(m, q, k, v, scale=scale)
    default = m.attention(q, k, v, backend="reference")
    if scale != 1 / math.sqrt(16):
        assert not torch.allclose(out, default)
    torch.testing.assert_close(m.attention(q, k, v, scale=0.25, backend="reference"), default,
                               atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtypes(dtype):
    m = maskc.compile("mask m = causal & window(3)")
    q, k, v = qkv(2, 2, 1, 11, 11, 8, dtype=dtype, seed=7)
    out, lse = check(m, q, k, v, atol=1e-6 if dtype == torch.float32 else 1e-10)
    assert out.dtype == dtype


# --------------------------------------------------------------------------- empty rows

EMPTY_ROWS = {
    "where": "mask m = where q > 3",
    "none_head": "mask m = heads { 1: none, _: causal }",
    "causal_where": "mask m = causal & where q % 3 != 0",
    "none": "mask m = none",
}


@pytest.mark.parametrize("name", sorted(EMPTY_ROWS))
def test_fully_masked_rows_are_zero(name):
    m = maskc.compile(EMPTY_ROWS[name])
    q, k, v = qkv(2, 2, 1, 9, 9, 4, seed=13)
    mask = m.dense(9, heads=2)
    empty = ~mask.any(axis=-1)                        # (H, Lq)
    assert empty.any(), "the mask must have some empty rows"
    out, lse = check(m, q, k, v, mask=mask)
    empty_t = torch.as_tensor(empty).expand(2, -1, -1)
    assert torch.all(out[empty_t] == 0)
    assert torch.all(lse[empty_t] == -math.inf)
    assert torch.all(torch.isfinite(lse[~empty_t]))
    # float32 too: zeros, not NaN
    out32, lse32 = m.attention(q.float(), k.float(), v.float(), backend="reference",
                               return_lse=True)
    assert out32.dtype == torch.float32
    assert not torch.isnan(out32).any() and not torch.isnan(lse32).any()
    assert torch.all(out32[empty_t] == 0)


def test_lse_matches_logsumexp():
    m = maskc.compile("mask m = causal & where q >= 2")
    q, k, v = qkv(1, 3, 3, 8, 8, 5, seed=17)
    _, lse = m.attention(q, k, v, scale=0.7, backend="reference", return_lse=True)
    keep = torch.as_tensor(m.dense(8, heads=3).copy())[None]
    s = 0.7 * q @ k.transpose(-1, -2)
    want = torch.logsumexp(s.masked_fill(~keep, -math.inf), dim=-1)
    rows = keep.any(-1)
    torch.testing.assert_close(lse[rows], want[rows], atol=1e-12, rtol=1e-12)
    assert torch.all(lse[~rows] == -math.inf)


# --------------------------------------------------------------------------- gradients


def test_gradcheck():
    m = maskc.compile("mask m = heads { 0: causal & window(1), _: window(1) | global([0]) }")
    q, k, v = qkv(1, 2, 1, 4, 5, 3, seed=19)
    for t in (q, k, v):
        t.requires_grad_(True)

    def f(q, k, v):
        out, lse = m.attention(q, k, v, backend="reference", return_lse=True)
        return out, lse

    assert torch.autograd.gradcheck(f, (q, k, v), eps=1e-6, atol=1e-6)
    assert torch.autograd.gradcheck(
        lambda q, k, v: m.attention(q, k, v, scale=0.5, backend="reference"), (q, k, v))


def test_gradcheck_with_empty_rows():
    m = maskc.compile("mask m = causal & where q != 1")
    q, k, v = qkv(1, 2, 2, 4, 4, 3, seed=23)
    for t in (q, k, v):
        t.requires_grad_(True)

    def f(q, k, v):
        out, lse = m.attention(q, k, v, backend="reference", return_lse=True)
        return out, torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))

    assert torch.autograd.gradcheck(f, (q, k, v), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("use_lse", [False, True])
def test_fully_masked_rows_have_zero_gradients(use_lse):
    m = maskc.compile("mask m = heads { 1: none, _: causal & where q > 2 }")
    q, k, v = qkv(2, 2, 1, 6, 6, 4, seed=29)
    for t in (q, k, v):
        t.requires_grad_(True)
    out, lse = m.attention(q, k, v, backend="reference", return_lse=True)
    w = rand(*out.shape, seed=31)
    loss = (out * w).sum()
    if use_lse:
        finite = torch.isfinite(lse)
        loss = loss + (lse[finite] * rand(int(finite.sum()), seed=37)).sum()
    loss.backward()
    for t in (q, k, v):
        assert not torch.isnan(t.grad).any() and torch.all(torch.isfinite(t.grad))
    empty = ~torch.as_tensor(m.dense(6, heads=2).copy()).any(-1)   # (H, Lq)
    assert torch.all(q.grad[:, empty] == 0)
    assert torch.any(q.grad[:, ~empty] != 0)
    # keys/values only reachable from empty rows get no gradient: with one kv head and
    # head 0 'causal & where q > 2', every key is kept by some row (q = 5 keeps 0..5)
    assert torch.any(v.grad != 0)


def test_gradients_match_oracle():
    m = maskc.compile("mask m = causal & window(before = 2, after = 0) | global([0])")
    q, k, v = qkv(1, 4, 2, 7, 7, 5, seed=41)
    for t in (q, k, v):
        t.requires_grad_(True)
    out = m.attention(q, k, v, backend="reference")
    gq, gk, gv = torch.autograd.grad(out.square().sum(), (q, k, v))
    q2, k2, v2 = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    want, _ = oracle(m.dense(7, heads=4), q2, k2, v2)
    wq, wk, wv = torch.autograd.grad(want.square().sum(), (q2, k2, v2))
    for a, b in ((gq, wq), (gk, wk), (gv, wv)):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


# --------------------------------------------------------------------------- runtime inputs


def test_runtime_input_same_doc():
    m = maskc.compile("mask packed(input doc) = causal & same(doc)")
    doc = maskc.document_ids([3, 5, 4])
    q, k, v = qkv(2, 2, 1, 12, 12, 4, seed=43)
    qi, ki = np.arange(12)[:, None], np.arange(12)[None, :]
    want = (ki <= qi) & (doc[:, None] == doc[None, :])
    out, lse = check(m, q, k, v, mask=np.broadcast_to(want, (2, 12, 12)), doc=doc)
    # a torch tensor input works the same
    out_t = m.attention(q, k, v, backend="reference", doc=torch.as_tensor(doc))
    torch.testing.assert_close(out_t, out, atol=0, rtol=0)
    # documents really are separated: the first query of document 1 sees only itself
    torch.testing.assert_close(out[:, :, 3], v[:, 0, 3].unsqueeze(1).expand(-1, 2, -1),
                               atol=1e-12, rtol=0)


def test_runtime_input_batched():
    m = maskc.compile("mask packed(input doc) = causal & same(doc)")
    doc = np.stack([maskc.document_ids([4, 6]), maskc.document_ids([1, 2, 7])])
    q, k, v = qkv(2, 2, 2, 10, 10, 4, seed=47)
    qi, ki = np.arange(10)[:, None], np.arange(10)[None, :]
    want = np.stack([(ki <= qi) & (d[:, None] == d[None, :]) for d in doc])[:, None]
    want = np.broadcast_to(want, (2, 2, 10, 10))
    check(m, q, k, v, mask=want, doc=doc)
    np.testing.assert_array_equal(m.dense(10, heads=2, doc=doc), want)
    # a batched input whose batch is not q's is an error
    with pytest.raises(maskc.MaskError):
        m.attention(q[:1], k[:1], v[:1], backend="reference", doc=doc)


def test_runtime_input_missing_or_unknown():
    m = maskc.compile("mask packed(input doc) = causal & same(doc)")
    q, k, v = qkv(1, 1, 1, 6, 6, 4)
    with pytest.raises(maskc.MaskInputError):
        m.attention(q, k, v, backend="reference")
    with pytest.raises(maskc.MaskInputError):
        m.attention(q, k, v, backend="reference", doc=np.zeros(6, dtype=np.int64),
                    other=np.zeros(6, dtype=np.int64))
    with pytest.raises(maskc.MaskInputError):
        m.attention(q, k, v, backend="reference", doc=np.zeros(5, dtype=np.int64))


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("shapes", [
    ((1, 3, 4, 8), (1, 2, 4, 8), (1, 2, 4, 8)),      # Hq % Hkv != 0
    ((1, 2, 4, 8), (1, 2, 4, 6), (1, 2, 4, 8)),      # q and k head_dim differ
    ((1, 2, 4, 8), (1, 2, 4, 8), (1, 2, 5, 8)),      # k and v lengths differ
    ((1, 2, 4, 8), (1, 2, 4, 8), (1, 1, 4, 8)),      # k and v heads differ
    ((2, 2, 4, 8), (1, 2, 4, 8), (1, 2, 4, 8)),      # batch differs
    ((2, 4, 8), (2, 4, 8), (2, 4, 8)),               # not 4-D
], ids=["heads", "head_dim", "kv_len", "kv_heads", "batch", "ndim"])
@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_shape_errors(shapes, backend):
    m = maskc.compile("mask m = causal")
    q, k, v = (torch.zeros(s, dtype=torch.float64) for s in shapes)
    with pytest.raises(maskc.MaskError):
        m.attention(q, k, v, backend=backend)


def test_grid_size_mismatch():
    m = maskc.compile("mask m over grid(4, 5) = neighborhood(3)")
    q, k, v = qkv(1, 1, 1, 16, 16, 4)
    with pytest.raises(maskc.MaskSizeError):
        m.attention(q, k, v, backend="reference")


def test_unknown_backend():
    m = maskc.compile("mask m = causal")
    q, k, v = qkv(1, 1, 1, 4, 4, 4)
    with pytest.raises(maskc.MaskError, match="backend"):
        m.attention(q, k, v, backend="no-such-backend")


def test_no_warnings():
    """Reference attention does not warn (torch warns once per process about non-writable
    numpy arrays, so this runs in a fresh interpreter)."""
    code = ("import warnings, torch, maskc\n"
            "warnings.simplefilter('error')\n"
            "m = maskc.compile('mask m = causal')\n"
            "q = torch.randn(1, 1, 8, 4)\n"
            "m.attention(q, q, q, backend='reference')\n")
    root = pathlib.Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = str(root)
    res = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "Warning" not in res.stderr, res.stderr


def test_dense_is_writable():
    """``dense()`` hands back a fresh array the caller owns."""
    for src in ("mask m = causal", "mask m = all", "mask m = heads { 0: causal, _: none }"):
        d = maskc.compile(src).dense(6, heads=2)
        assert d.flags.writeable and d.flags.c_contiguous
        d[0, 0, 0] = not d[0, 0, 0]


# --------------------------------------------------------------------------- size limits


def test_dense_limit_dense(dense_limit, monkeypatch):
    monkeypatch.delenv("MASKC_DENSE_LIMIT", raising=False)
    dense_limit(1000)
    assert maskc.dense_limit() == 1000
    m = maskc.compile("mask m = causal")
    assert m.dense(31).shape == (1, 31, 31)             # 961 elements: fine
    with pytest.raises(maskc.MaskSizeError):
        m.dense(32)                                     # 1024 elements
    with pytest.raises(maskc.MaskSizeError):
        m.dense(16, 16, heads=4)                        # heads count too
    with pytest.raises(maskc.MaskSizeError):
        m.dense(10, 101)
    # raised before allocating anything of that size
    tracemalloc.start()
    try:
        with pytest.raises(maskc.MaskSizeError):
            m.dense(20000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak
    dense_limit(None)
    assert maskc.dense_limit() == 1 << 28
    assert m.dense(32).shape == (1, 32, 32)


def test_dense_limit_attention(dense_limit, monkeypatch):
    monkeypatch.delenv("MASKC_DENSE_LIMIT", raising=False)
    m = maskc.compile("mask m = causal")
    q, k, v = qkv(2, 1, 1, 30, 30, 4)
    dense_limit(1000)
    try:
        # the dense mask alone (1 x 30 x 30 = 900) fits; the scores (2 x 1 x 30 x 30) do not
        with pytest.raises(maskc.MaskSizeError):
            m.attention(q, k, v, backend="reference")
        out = m.attention(q[:1], k[:1], v[:1], backend="reference")
        assert out.shape == (1, 1, 30, 4)
        q4, k4, v4 = qkv(1, 4, 1, 20, 20, 4)
        with pytest.raises(maskc.MaskSizeError):          # 4 heads x 20 x 20 = 1600
            m.attention(q4, k4, v4, backend="reference")
    finally:
        maskc.set_dense_limit(None)
    assert m.attention(q, k, v, backend="reference").shape == (2, 1, 30, 4)


def test_dense_huge_length_fails_fast(monkeypatch):
    monkeypatch.delenv("MASKC_DENSE_LIMIT", raising=False)
    maskc.set_dense_limit(None)
    m = maskc.compile("mask m = causal & window(before = 127, after = 0)")
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(maskc.MaskSizeError) as err:
            m.dense(q_len=10**6)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 1.0
    assert peak < 1 << 20, peak
    assert "limit" in str(err.value)
    assert err.value.line == 1                          # points at the mask


def test_bad_heads_argument():
    m = maskc.compile("mask m = causal")
    for bad in (0, -1):
        with pytest.raises(maskc.MaskSizeError):
            m.dense(4, heads=bad)
