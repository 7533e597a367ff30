"""FlexAttention block masks built without torch's dense transpose (issue 15 item 3).

``to_block_mask`` builds the ``BlockMask`` itself: the forward tables from the block
analysis and the backward ``q_*`` tables by transposing them (sorting sparse tables,
scanning a bit matrix for dense ones). It must be the object ``BlockMask.from_kv_blocks``
builds from the same forward tables: every field, shape and dtype, and every entry up to
each row's count. Each case runs with the automatic choice and with each transpose
forced, in small chunks and with lazily mapped tables, so every path is covered at small
sizes.

FlexAttention's eager (math) path reads only the ``mask_mod``, not the tables, so the
attention checks below show the object is usable (forward, and backward through the
eager path with its CPU refusal lifted), not that the kernels read the tables right: the
field-by-field equality with torch's tables does that. On a GPU (``MASKC_GPU_TESTS=1``)
the compiled kernels, whose backward walks ``q_indices``, are compared too.
"""

import importlib
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.attention.flex_attention as fa
from torch.nn.attention.flex_attention import BlockMask, flex_attention

import maskc

FLEX = importlib.import_module("maskc.backends.flex.block_mask")
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

_RNG = np.random.default_rng(15)
_SELECT = _RNG.integers(-1, 8, size=(2, 2, 8, 3))  # (B, H, blocks, r) for 128 tokens


def _doc(n):
    return maskc.document_ids([n // 3, n // 5, n - n // 3 - n // 5])


# name: (mask, q_len, kv_len, heads, block size, inputs)
CASES = {
    "causal": (maskc.compile("mask m = causal"), 300, 300, 1, 64, {}),
    "causal-rect-tails": (maskc.compile("mask m = causal"), 257, 130, 1, (32, 64), {}),
    "window": (maskc.compile("mask m = causal & window(before = 40, after = 0)"),
               300, 300, 1, (32, 16), {}),
    "packed-docs": (maskc.compile("mask m(input doc) = causal & same(doc)"), 300, 300, 1, 32,
                    {"doc": _doc(300)}),
    "per-head": (maskc.compile("mask m = heads { 0: causal, 1: window(9, dilation = 2), "
                               "_: global([3]) | chunk(17) }"), 200, 200, 4, 32, {}),
    "natten2d": (maskc.compile(EXAMPLES / "natten.mask", name="natten2d", height=16, width=20,
                               kernel=5), None, None, 1, 32, {}),
    "select-batched": (maskc.compile("mask m(input idx) = blocks(16, select(idx))"),
                       128, 128, 2, 32, {"idx": _SELECT}),
    "empty-rows": (maskc.compile("mask m = where q >= 70 & causal"), 150, 150, 1, 32, {}),
}

PATHS = {
    "auto": {},
    "sort": {"_SPARSE": 0},  # every table transposed by sorting its entries
    "dense": {"_SPARSE": 1 << 62},  # every table through the bit matrix
    "chunked-lazy": {"_CHUNK": 7, "_LAZY_BYTES": 0},  # tiny chunks; every table mmap'd
}


def plan_and_ours(name, monkeypatch=None, path="auto"):
    m, q_len, kv_len, heads, block, inputs = CASES[name]
    cached = m.flex_block_mask(q_len, kv_len, heads, block, **inputs)
    bm = m.plan(q_len, kv_len, heads, target="flex", block_size=block,
                device="cpu", **inputs).block_map("fwd")
    if path == "auto":
        return bm, cached
    for attr, value in PATHS[path].items():
        monkeypatch.setattr(FLEX, attr, value)
    return bm, FLEX.to_block_mask(bm, cached.mask_mod)


def theirs(ours):
    return BlockMask.from_kv_blocks(ours.kv_num_blocks, ours.kv_indices,
                                    ours.full_kv_num_blocks, ours.full_kv_indices,
                                    BLOCK_SIZE=ours.BLOCK_SIZE, mask_mod=ours.mask_mod,
                                    seq_lengths=ours.seq_lengths)


def reference_kv_tables(bm):
    """The forward tables as ``to_block_mask`` built them before (row by row in Python):
    heads selected, full tail tiles demoted to partial, rows sorted."""
    B, G, nq = bm.kv_num_blocks.shape
    nk = bm.n_k_tiles
    rows = bm.head_group if G > 1 or bm.heads == 1 else np.zeros(1, dtype=np.int32)
    tail_q, tail_k = bm.q_len % bm.block_q != 0, bm.kv_len % bm.block_k != 0
    out = {}
    for b in range(B):
        for h, g in enumerate(rows):
            for i in range(nq):
                part = bm.kv_indices[b, g, i, :bm.kv_num_blocks[b, g, i]]
                full = bm.full_kv_indices[b, g, i, :bm.full_kv_num_blocks[b, g, i]]
                demote = np.ones(len(full), bool) if (tail_q and i == nq - 1) else \
                    (full == nk - 1) if tail_k else np.zeros(len(full), bool)
                out[b, h, i] = (np.sort(np.concatenate([part, full[demote]])).tolist(),
                                np.sort(full[~demote]).tolist())
    return out


def lists(num, idx):
    """Per leading index, the first ``num`` entries of ``idx`` (the defined part)."""
    num, idx = num.cpu().numpy(), idx.cpu().numpy()
    return {key: idx[key][:num[key]].tolist() for key in np.ndindex(num.shape)}


FIELDS = [("kv_num_blocks", "kv_indices"), ("full_kv_num_blocks", "full_kv_indices"),
          ("q_num_blocks", "q_indices"), ("full_q_num_blocks", "full_q_indices")]


def assert_same_block_mask(ours, want):
    for num, idx in FIELDS:
        a_num, b_num = getattr(ours, num), getattr(want, num)
        a_idx, b_idx = getattr(ours, idx), getattr(want, idx)
        for a, b in ((a_num, b_num), (a_idx, b_idx)):
            assert a.dtype == b.dtype == torch.int32, (num, a.dtype, b.dtype)
            assert a.shape == b.shape and a.device == b.device, (num, a.shape, b.shape)
            assert a.stride() == b.stride(), (num, a.stride(), b.stride())
        assert torch.equal(a_num, b_num), num
        assert lists(a_num, a_idx) == lists(b_num, b_idx), idx
    assert ours.seq_lengths == want.seq_lengths
    assert tuple(ours.BLOCK_SIZE) == tuple(want.BLOCK_SIZE)
    assert all(isinstance(x, int) for x in (*ours.seq_lengths, *ours.BLOCK_SIZE))
    assert ours.mask_mod is want.mask_mod
    for attr in ("dq_write_order", "dq_write_order_full", "dq_kv_order", "dq_kv_order_spt"):
        assert getattr(ours, attr) is None and getattr(want, attr) is None
    assert torch.equal(ours.to_dense(), want.to_dense())
    assert ours.shape == want.shape and ours.sparsity() == want.sparsity()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", CASES)
def test_block_mask_equals_from_kv_blocks(name, path, monkeypatch):
    bm, ours = plan_and_ours(name, monkeypatch, path)
    assert_same_block_mask(ours, theirs(ours))
    # the forward tables are what the row-by-row construction made
    ref = reference_kv_tables(bm)
    kv, full = (lists(ours.kv_num_blocks, ours.kv_indices),
                lists(ours.full_kv_num_blocks, ours.full_kv_indices))
    assert {key: (kv[key], full[key]) for key in kv} == ref


def test_blockmask_methods_work_on_ours():
    _, ours = plan_and_ours("per-head")
    want = theirs(ours)
    assert_same_block_mask(ours[0], want[0])
    assert_same_block_mask(ours[:, 1:3], want[:, 1:3])
    assert_same_block_mask(ours.to("cpu"), want.to("cpu"))
    small = ours._adjust(96, 96)
    assert_same_block_mask(small, want._adjust(96, 96))
    assert "BlockMask" in repr(ours)


@pytest.mark.parametrize("name", ["natten2d", "select-batched"])
def test_flex_attention_forward_same_with_either(name):
    m, q_len, kv_len, heads, block, inputs = CASES[name]
    _, ours = plan_and_ours(name)
    q_len, kv_len = ours.seq_lengths
    B = ours.kv_num_blocks.shape[0]
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(B, heads, q_len, 16, dtype=torch.float64, generator=gen)
    k, v = (torch.randn(B, heads, kv_len, 16, dtype=torch.float64, generator=gen)
            for _ in range(2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = flex_attention(q, k, v, block_mask=ours)
        want = flex_attention(q, k, v, block_mask=theirs(ours))
    assert torch.equal(out, want)
    ref = m.attention(q, k, v, backend="reference", **inputs)
    assert torch.allclose(out, ref, atol=1e-10)


@pytest.mark.parametrize("name", ["causal-rect-tails", "packed-docs", "per-head"])
def test_flex_attention_forward_and_backward_same_with_either(name, monkeypatch):
    # torch refuses FlexAttention's backward on the CPU up front; its eager backward (the
    # dense math path) runs once that check is lifted
    monkeypatch.setattr(fa, "_validate_device", lambda *args: None)
    m, q_len, kv_len, heads, block, inputs = CASES[name]
    _, ours = plan_and_ours(name)
    q_len, kv_len = ours.seq_lengths
    gen = torch.Generator().manual_seed(2)
    leaves = [torch.randn(1, heads, n, 8, dtype=torch.float64, generator=gen)
              for n in (q_len, kv_len, kv_len)]
    dout = torch.randn(1, heads, q_len, 8, dtype=torch.float64, generator=gen)
    grads = []
    for block_mask in (ours, theirs(ours)):
        q, k, v = (x.clone().requires_grad_() for x in leaves)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = flex_attention(q, k, v, block_mask=block_mask)
        out.backward(dout)
        grads.append((out.detach(), q.grad, k.grad, v.grad))
    for a, b in zip(*grads):
        assert torch.equal(a, b)
    q, k, v = (x.clone().requires_grad_() for x in leaves)
    ref = m.attention(q, k, v, backend="reference", **inputs)
    ref.backward(dout)
    for a, b in zip(grads[0], (ref, q.grad, k.grad, v.grad)):
        assert torch.allclose(a, b, atol=1e-10)


def test_a_million_token_window_is_sparse_work():
    # issue 15 item 3: 13-18 s in torch's dense transpose before; the tables are still
    # FlexAttention's dense (8192 x 8192) ones, but only their rows' starts are written
    m = maskc.compile("mask m = causal & window(before = 4096, after = 0)")
    ours = m.flex_block_mask(1 << 20, block_size=128)
    n = 8192
    assert ours.kv_indices.shape == ours.q_indices.shape == (1, 1, n, n)
    total = int(ours.kv_num_blocks.sum() + ours.full_kv_num_blocks.sum())
    assert total == int(ours.q_num_blocks.sum() + ours.full_q_num_blocks.sum())
    kv = lists(ours.full_kv_num_blocks, ours.full_kv_indices)
    q = lists(ours.full_q_num_blocks, ours.full_q_indices)
    part_q = lists(ours.q_num_blocks, ours.q_indices)
    for j in (0, 1, 4000, n - 1):  # key tile j: full for the query tiles j+1 .. j+31
        assert q[0, 0, j] == list(range(j + 1, min(j + 32, n)))
        assert part_q[0, 0, j] == [x for x in (j, j + 32) if x < n]
        assert kv[0, 0, j] == list(range(max(0, j - 31), j))


GPU_CASES = {
    "window": ("mask m = causal & window(before = 300, after = 0)", {}),
    "packed-docs": ("mask m(input doc) = causal & same(doc)", {"doc": _doc(1024)}),
    "per-head": ("mask m = heads { 0: causal, 1: window(200), _: global([3]) | chunk(170) }",
                 {}),
    "tails": ("mask m = causal", {}),
}


@pytest.mark.gpu
@pytest.mark.parametrize("name", GPU_CASES)
def test_compiled_flex_attention_on_gpu_same_with_either(name):
    # the kernels read the tables: the backward walks q_indices/full_q_indices
    spec, inputs = GPU_CASES[name]
    m = maskc.compile(spec)
    n = 1000 if name == "tails" else 1024
    ours = m.flex_block_mask(n, n, 4, 128, device="cuda", **inputs)
    gen = torch.Generator(device="cuda").manual_seed(3)
    leaves = [torch.randn(1, 4, n, 64, device="cuda", generator=gen) for _ in range(3)]
    fn = torch.compile(flex_attention)
    results = []
    for block_mask in (ours, theirs(ours)):
        q, k, v = (x.clone().requires_grad_() for x in leaves)
        out = fn(q, k, v, block_mask=block_mask)
        out.sum().backward()
        results.append((out.detach(), q.grad, k.grad, v.grad))
    assert_same_block_mask(ours, theirs(ours))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
