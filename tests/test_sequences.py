"""Per-sequence lengths, offsets, key validity and paged caches (LANGUAGE.md section 10) on
the reference backend, against per-sequence float64 attention written here: each sequence's
mask from the primitives' definitions at absolute positions ``p = q + q_offset`` and
``k + kv_offset``. The Triton and FlexAttention backends are tested in
test_serving_kernels.py."""

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import maskc

from formulas import attention64 as attend

# spec -> keep(p, k, Lq, Lk) at absolute positions (p: query, k: key), from LANGUAGE.md
SPECS = {
    "mask m = causal": lambda p, k, lq, lk: k <= p,
    "mask m = causal & window(before = 3, after = 0)": lambda p, k, lq, lk: (k <= p) & (p - k <= 3),
    "mask m = causal & chunk(4)": lambda p, k, lq, lk: (k <= p) & (p // 4 == k // 4),
    "mask m = causal & (window(before = 2, after = 0) | sink(2))":
        lambda p, k, lq, lk: (k <= p) & ((p - k <= 2) | (k < 2)),
    "mask m = prefix(5) | causal": lambda p, k, lq, lk: ((p < 5) & (k < 5)) | (k <= p),
    "mask m = global([0, 6]) | window(1)":
        lambda p, k, lq, lk: (p == 0) | (p == 6) | (k == 0) | (k == 6) | ((p - k).abs() <= 1),
    "mask m = where k + 2 >= p and k <= p": lambda p, k, lq, lk: (k + 2 >= p) & (k <= p),
}


def expected(keep_fn, q, ks, vs, lq, lk, qo, ko, valid=None, Hkv=None):
    """Per-sequence attention: ``ks[b]``/``vs[b]`` are sequence b's keys ``(Hkv, lk, D)``."""
    B, Hq, Lq, D = q.shape
    out = torch.zeros(B, Hq, Lq, vs[0].shape[-1], dtype=torch.float64)
    lse = torch.full((B, Hq, Lq), -math.inf, dtype=torch.float64)
    for b in range(B):
        if lq[b] == 0 or lk[b] == 0:
            continue
        p = torch.arange(lq[b]).view(-1, 1) + qo[b]
        kk = torch.arange(lk[b]).view(1, -1) + ko[b]
        keep = keep_fn(p, kk, lq[b], lk[b])
        if valid is not None:
            keep = keep & valid[b, :lk[b]].view(1, -1)
        rep = Hq // ks[b].shape[0]
        o, l_ = attend(q[b, :, :lq[b]], ks[b].repeat_interleave(rep, 0),
                       vs[b].repeat_interleave(rep, 0), keep.unsqueeze(0))
        out[b, :, :lq[b]], lse[b, :, :lq[b]] = o, l_
    return out, lse


def qkv(B, Hq, Hkv, Lq, Lk, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, Hq, Lq, D, generator=g, dtype=torch.float64),
            torch.randn(B, Hkv, Lk, D, generator=g, dtype=torch.float64),
            torch.randn(B, Hkv, Lk, D, generator=g, dtype=torch.float64))


def draw_sequences(data, max_q: int, max_k: int, offsets: bool, padded: bool,
                   max_offset: int, valid_share: float):
    """A drawn batch: ``(B, Lq, Lk, lq, lk, qo, ko, valid)``, the tensors' lengths and each
    sequence's lengths and offsets; with ``offsets`` a rolling or chunked cache that dropped
    its oldest keys (up to ``max_offset``), with ``padded`` random valid keys."""
    B = data.draw(st.integers(1, 3))
    Lq, Lk = data.draw(st.integers(1, max_q)), data.draw(st.integers(1, max_k))
    lq = [data.draw(st.integers(0, Lq)) for _ in range(B)]
    lk = [data.draw(st.integers(0, Lk)) for _ in range(B)]
    if offsets:
        ko = [data.draw(st.integers(0, max_offset)) for _ in range(B)]
        qo = [ko[b] + lk[b] - lq[b] + data.draw(st.integers(-2, 2)) for b in range(B)]
    else:
        ko, qo = [0] * B, [lk[b] - lq[b] for b in range(B)]
    valid = torch.tensor(np.random.default_rng(B * Lk).random((B, Lk)) < valid_share) \
        if padded else None
    return B, Lq, Lk, lq, lk, qo, ko, valid


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(spec=st.sampled_from(sorted(SPECS)), data=st.data(), heads=st.sampled_from(
    [(2, 2), (4, 2), (3, 1)]), offsets=st.booleans(), padded=st.booleans())
def test_lengths_offsets_and_valid_keys_match_per_sequence_attention(spec, data, heads,
                                                                     offsets, padded):
    B, Lq, Lk, lq, lk, qo, ko, valid = draw_sequences(data, 9, 14, offsets, padded, 20, 0.8)
    q, k, v = qkv(B, heads[0], heads[1], Lq, Lk, seed=Lq)
    m = maskc.compile(spec)
    kw = dict(q_lens=torch.tensor(lq), kv_lens=torch.tensor(lk), kv_valid=valid)
    if offsets:
        kw.update(q_offset=torch.tensor(qo), kv_offset=torch.tensor(ko))
    out, lse = m.attention(q, k, v, return_lse=True, **kw)
    w_out, w_lse = expected(SPECS[spec], q, [k[b, :, :lk[b]] for b in range(B)],
                            [v[b, :, :lk[b]] for b in range(B)], lq, lk, qo, ko, valid)
    torch.testing.assert_close(out, w_out, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(lse, w_lse, atol=1e-12, rtol=1e-12)


def test_default_lengths_are_the_usual_alignment():
    m = maskc.compile("mask m = causal & window(before = 2, after = 0)")
    q, k, v = qkv(2, 2, 2, 5, 9)
    full = m.attention(q, k, v, backend="reference")
    torch.testing.assert_close(m.attention(q, k, v, q_lens=torch.tensor([5, 5]),
                                           kv_lens=torch.tensor([9, 9])), full)
    # offsets given as ints: every sequence the same
    torch.testing.assert_close(m.attention(q, k, v, q_offset=4, kv_offset=0), full)


def test_decode_step_reads_the_last_query_at_the_end_of_its_cache():
    m = maskc.compile("mask m = causal & chunk(4)")   # Llama 4's chunked attention
    q, k, v = qkv(2, 2, 2, 1, 12)
    lk = [7, 12]
    out = m.attention(q, k, v, q_lens=torch.tensor([1, 1]), kv_lens=torch.tensor(lk))
    for b in range(2):
        p = lk[b] - 1   # the new token
        keep = torch.tensor([(t <= p) and (t // 4 == p // 4) for t in range(lk[b])])
        o, _ = attend(q[b], k[b, :, :lk[b]], v[b, :, :lk[b]], keep.view(1, 1, -1))
        torch.testing.assert_close(out[b], o)


@pytest.mark.parametrize("layout", ["pages, heads, rows", "pages, rows, heads"])
def test_paged_caches_read_keys_through_the_page_table(layout):
    m = maskc.compile("mask m = causal & window(before = 5, after = 0) | sink(1)")
    B, Hq, Hkv, ps, D, npages = 3, 4, 2, 4, 8, 9
    g = torch.Generator().manual_seed(1)
    if layout == "pages, heads, rows":
        kc = torch.randn(npages, Hkv, ps, D, generator=g, dtype=torch.float64)
        vc = torch.randn(npages, Hkv, ps, D, generator=g, dtype=torch.float64)
    else:   # (num_pages, page_size, Hkv, D) storage passed as a view: no copy
        kc = torch.randn(npages, ps, Hkv, D, generator=g, dtype=torch.float64).transpose(1, 2)
        vc = torch.randn(npages, ps, Hkv, D, generator=g, dtype=torch.float64).transpose(1, 2)
    table = torch.tensor(np.random.default_rng(3).permutation(npages)[:B * 3].reshape(B, 3))
    lq, lk = [3, 1, 0], [10, 5, 12]
    q = torch.randn(B, Hq, 3, D, generator=g, dtype=torch.float64)
    out, lse = m.attention(q, kc, vc, q_lens=torch.tensor(lq), kv_lens=torch.tensor(lk),
                           page_table=table, return_lse=True)

    def seq(x, b):  # key t of sequence b: row t % ps of page table[b, t // ps]
        return torch.stack([x[table[b, t // ps], :, t % ps] for t in range(lk[b])], dim=1)
    w_out, w_lse = expected(lambda p, k, a, c: (k <= p) & ((p - k <= 5) | (k < 1)), q,
                            [seq(kc, b) for b in range(B)], [seq(vc, b) for b in range(B)],
                            lq, lk, [lk[b] - lq[b] for b in range(B)], [0] * B)
    torch.testing.assert_close(out, w_out)
    torch.testing.assert_close(lse, w_lse)


def test_runtime_inputs_are_read_per_sequence_by_key_row():
    m = maskc.compile("mask m(input doc) = causal & same(doc)")
    q, k, v = qkv(2, 2, 2, 6, 6)
    doc = torch.tensor([[0, 0, 1, 1, 1, 2], [0, 1, 1, 1, 1, 1]])
    lens = torch.tensor([6, 4])
    out = m.attention(q, k, v, q_lens=lens, kv_lens=lens, doc=doc)
    for b in range(2):
        n = int(lens[b])
        want = m.attention(q[b:b + 1, :, :n], k[b:b + 1, :, :n], v[b:b + 1, :, :n],
                           backend="reference", doc=doc[b:b + 1, :n])
        torch.testing.assert_close(out[b:b + 1, :, :n], want)
        assert torch.all(out[b, :, n:] == 0)


def test_scores_see_absolute_positions():
    m = maskc.compile("mask m(input slopes) = causal with alibi(slopes)")
    q, k, v = qkv(2, 2, 2, 2, 6)
    slopes = torch.tensor([0.5, 0.25], dtype=torch.float64, requires_grad=True)
    lq, lk, ko = [2, 1], [6, 3], [10, 40]
    qo = [ko[b] + lk[b] - lq[b] for b in range(2)]
    out = m.attention(q, k, v, q_lens=torch.tensor(lq), kv_lens=torch.tensor(lk),
                      q_offset=torch.tensor(qo), kv_offset=torch.tensor(ko), slopes=slopes)
    # ALiBi depends on p - k only: the same as the default alignment
    ref = m.attention(q, k, v, q_lens=torch.tensor(lq), kv_lens=torch.tensor(lk),
                      slopes=slopes)
    torch.testing.assert_close(out, ref)
    out.sum().backward()
    assert slopes.grad is not None and slopes.grad.abs().sum() > 0


@pytest.mark.parametrize("kw, message", [
    (dict(q_lens=torch.tensor([4, 9])), r"q_lens\[1\] = 9: a sequence has 0 to 5 queries"),
    (dict(kv_lens=torch.tensor([-1, 2])), r"kv_lens\[0\] = -1"),
    (dict(kv_lens=torch.tensor([1, 2, 3])), r"kv_lens must have shape \(2,\)"),
    (dict(kv_lens=torch.tensor([1.0, 2.0])), "kv_lens must hold integers"),
    (dict(q_lens=3), r"q_lens must be an integer tensor of shape \(2,\)"),
    (dict(kv_valid=torch.ones(2, 7)), "kv_valid must be a bool tensor"),
    (dict(kv_valid=torch.ones(2, 6, dtype=torch.bool)), r"kv_valid must have shape \(B, Lk\)"),
    (dict(q_offset=torch.tensor([0])), r"q_offset must have shape \(2,\)"),
    (dict(kv_offset=-1), r"kv_offset\[0\] = -1: a key's absolute position is never negative"),
])
def test_bad_sequence_arguments_are_mask_input_errors(kw, message):
    m = maskc.compile("mask m = causal")
    q, k, v = qkv(2, 2, 2, 5, 7)
    with pytest.raises(maskc.MaskInputError, match=message):
        m.attention(q, k, v, **kw)


def test_bad_page_tables_are_mask_input_errors():
    m = maskc.compile("mask m = causal")
    q = torch.randn(1, 2, 1, 8)
    kc = torch.randn(4, 2, 16, 8)
    with pytest.raises(maskc.MaskInputError, match="a page_table needs kv_lens"):
        m.attention(q, kc, kc, page_table=torch.tensor([[0, 1]]))
    with pytest.raises(maskc.MaskInputError, match=r"page_table\[0, 1\] = 7 is outside"):
        m.attention(q, kc, kc, page_table=torch.tensor([[0, 7]]), kv_lens=torch.tensor([20]))
    # an entry no key reads is not checked (tables are padded that way)
    m.attention(q, kc, kc, page_table=torch.tensor([[0, 7]]), kv_lens=torch.tensor([16]))
    with pytest.raises(maskc.MaskInputError, match="kv_lens.*= 40"):
        m.attention(q, kc, kc, page_table=torch.tensor([[0, 1]]), kv_lens=torch.tensor([40]))


def test_grid_masks_refuse_per_sequence_lengths():
    m = maskc.compile("mask m over grid(4, 4) = neighborhood(3)")
    q = torch.randn(1, 1, 16, 8)
    with pytest.raises(maskc.MaskError, match="over a grid"):
        m.attention(q, q, q, q_lens=torch.tensor([3]))


def test_random_blocks_and_uncovered_heads_are_errors_with_sequences():
    q, k, v = qkv(1, 2, 2, 8, 8)
    m = maskc.compile("mask m = blocks(4, random(1, seed = 2))")
    with pytest.raises(maskc.MaskError, match="random.*per-sequence lengths"):
        m.attention(q, k, v, q_lens=torch.tensor([3]))
    # found by the fuzzer: every sequence empty, yet the mask misses head 1 (as the kernels'
    # plans say, whatever the lengths)
    m = maskc.compile("mask m = heads { 0: causal }")
    with pytest.raises(maskc.MaskValueError, match="head 1 is not covered"):
        m.attention(q, k, v, q_lens=torch.tensor([0]), kv_lens=torch.tensor([0]))


def _runs_of(ids):
    """Per row, the first row of its run of equal ids."""
    return [next(j for j in range(i, -1, -1) if j == 0 or ids[j - 1] != ids[i])
            for i in range(len(ids))]


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_runtime_ids_with_offsets_are_read_at_key_rows(backend, monkeypatch):
    """A cache that dropped its oldest keys: key row t sits at position t + kv_offset, and the
    query at position p reads row p - kv_offset of the ids (nothing outside 0..Lk-1)."""
    if backend == "triton":
        import os
        if os.environ.get("TRITON_INTERPRET") != "1":
            pytest.skip("the Triton kernels run on the CPU through TRITON_INTERPRET=1")
    doc = torch.tensor([[0] * 5 + [1] * 7, [2] * 3 + [3] * 9])
    lq, lk, ko = [4, 3], [12, 9], [10, 3]
    qo = [ko[0] + lk[0] - lq[0], ko[1] + lk[1] - lq[1] + 2]   # sequence 1: two rows past
    q, k, v = qkv(2, 2, 1, 4, 12, D=16, seed=2)
    kw = dict(q_lens=torch.tensor(lq), kv_lens=torch.tensor(lk), q_offset=torch.tensor(qo),
              kv_offset=torch.tensor(ko), doc=doc)
    cases = {
        "mask m(input doc) = causal & same(doc)":
            lambda b, rq, t: doc[b, rq] == doc[b, t] and t + ko[b] <= rq + ko[b],
        "mask m(input doc) = within(doc, causal & window(before = 2, after = 0))":
            lambda b, rq, t: doc[b, rq] == doc[b, t] and 0 <= (rq - _runs_of(
                doc[b].tolist())[rq]) - (t - _runs_of(doc[b].tolist())[t]) <= 2,
    }
    for spec, keep_fn in cases.items():
        m = maskc.compile(spec)
        x = (q, k, v) if backend == "reference" else tuple(t.float() for t in (q, k, v))
        out = m.attention(*x, backend=backend, **kw)
        for b in range(2):
            for i in range(lq[b]):
                rq = i + qo[b] - ko[b]
                keep = torch.tensor([0 <= rq < lk[b] and bool(keep_fn(b, rq, t))
                                     for t in range(lk[b])])
                if not keep.any():
                    assert torch.all(out[b, :, i] == 0)
                    continue
                o, _ = attend(q[b, :, i:i + 1], k[b, :, :lk[b]].expand(2, -1, -1),
                              v[b, :, :lk[b]].expand(2, -1, -1), keep.view(1, 1, -1))
                torch.testing.assert_close(out[b, :, i].double(), o[:, 0], atol=2e-5,
                                           rtol=2e-5)


def test_block_analysis_reads_ids_at_key_rows_with_offsets():
    from maskc.analysis.blocktable import build
    from maskc.backends import reference
    rng = np.random.default_rng(5)
    for spec in ("mask m(input doc) = causal & same(doc)",
                 "mask m(input doc) = within(doc, causal & window(before = 3, after = 0))",
                 "mask m(input doc) = same(doc) | sink(2)"):
        md = maskc.compile(spec).ir
        for _ in range(12):
            lq, lk = int(rng.integers(1, 30)), int(rng.integers(1, 40))
            ko = int(rng.integers(0, 20))
            qo = ko + lk - lq + int(rng.integers(-6, 6))
            doc = np.sort(rng.integers(0, 4, lk))
            bq, bk = int(rng.choice([4, 8])), int(rng.choice([4, 8]))
            dense = reference.dense_at(md, lq, lk, 1, qo, ko, {"doc": doc})[0]
            st = build(md, lq, lk, 1, bq, bk, evaluate=reference.evaluate, offsets=(qo, ko),
                       doc=doc).states()[0, 0]
            for i in range(st.shape[0]):
                for j in range(st.shape[1]):
                    blk = dense[i * bq:(i + 1) * bq, j * bk:(j + 1) * bk]
                    want = 0 if not blk.any() else 2 if blk.all() else 1
                    assert st[i, j] == want, (spec, lq, lk, qo, ko, i, j)
