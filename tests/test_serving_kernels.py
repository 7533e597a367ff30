"""Per-sequence lengths, offsets, key validity and paged caches on the kernels: the Triton
prefill kernels (forward and backward) and decode kernel through the interpreter, against
per-sequence float64 attention written in the tests (``test_sequences.expected``) and the
decode kernel against the prefill kernel; FlexAttention (eager and compiled) against the
reference; the per-sequence tables, GQA packing and splits."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import maskc
from maskc.passes.sequences import sequence_map, tiles_of_valid
from maskc.passes.tiles import decode_packing, decode_splits

from test_sequences import SPECS, draw_sequences, expected, qkv

pytestmark = pytest.mark.usefixtures("interpret")

F32 = dict(atol=2e-5, rtol=2e-5)


@pytest.fixture
def interpret(monkeypatch):
    import os
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("the Triton kernels run on the CPU through TRITON_INTERPRET=1")


def _f32(*xs):
    return tuple(x.float() for x in xs)


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(spec=st.sampled_from(sorted(SPECS)), data=st.data(),
       heads=st.sampled_from([(2, 2), (4, 2), (3, 1)]), offsets=st.booleans(),
       padded=st.booleans())
def test_decode_kernel_matches_per_sequence_attention(spec, data, heads, offsets, padded):
    B, Lq, Lk, lq, lk, qo, ko, valid = draw_sequences(data, 16, 70, offsets, padded, 40, 0.7)
    q, k, v = qkv(B, heads[0], heads[1], Lq, Lk, D=16, seed=Lq)
    kw = dict(q_lens=torch.tensor(lq), kv_lens=torch.tensor(lk), kv_valid=valid)
    if offsets:
        kw.update(q_offset=torch.tensor(qo), kv_offset=torch.tensor(ko))
    out, lse = maskc.compile(spec).attention(*_f32(q, k, v), return_lse=True, backend="triton",
                                             **kw)
    w_out, w_lse = expected(SPECS[spec], q, [k[b, :, :lk[b]] for b in range(B)],
                            [v[b, :, :lk[b]] for b in range(B)], lq, lk, qo, ko, valid)
    torch.testing.assert_close(out.double(), w_out, **F32)
    torch.testing.assert_close(lse.double(), w_lse, **F32)


@pytest.mark.parametrize("spec", ["mask m = causal & chunk(8)",
                                  "mask m = causal & (window(before = 6, after = 0) | sink(3))",
                                  "mask m = prefix(5) | causal"])
def test_prefill_kernels_forward_and_backward_per_sequence(spec):
    m = maskc.compile(spec)
    B, Lq, Lk = 3, 40, 50
    q, k, v = qkv(B, 4, 2, Lq, Lk, D=16, seed=3)
    lq, lk, ko = [40, 17, 0], [50, 20, 9], [0, 30, 5]
    qo = [ko[b] + lk[b] - lq[b] for b in range(B)]
    valid = torch.tensor(np.random.default_rng(0).random((B, Lk)) < 0.8)
    valid[1, :16] = False   # left padding: the sequence's first key tile has no valid key
    kw = dict(q_lens=torch.tensor(lq), kv_lens=torch.tensor(lk), q_offset=torch.tensor(qo),
              kv_offset=torch.tensor(ko), kv_valid=valid)
    ts = [x.float().requires_grad_() for x in (q, k, v)]
    out, lse = m.attention(*ts, backend="triton", return_lse=True, **kw)
    rs = [x.clone().requires_grad_() for x in (q, k, v)]
    w_out, w_lse = m.attention(*rs, backend="reference", return_lse=True, **kw)
    torch.testing.assert_close(out.double(), w_out, **F32)
    torch.testing.assert_close(lse.double(), w_lse, **F32)
    assert torch.all(out[1, :, 17:] == 0) and torch.all(out[2] == 0)
    g = torch.randn_like(w_out)
    (out * g.float()).sum().backward()
    (w_out * g).sum().backward()
    for t, r in zip(ts, rs):
        torch.testing.assert_close(t.grad.double(), torch.nan_to_num(r.grad), atol=1e-4,
                                   rtol=1e-4)
    assert torch.all(ts[1].grad[1, :, 20:] == 0)   # keys past the sequence get no gradient


def test_decode_kernel_equals_prefill_kernel():
    """The same call through the decode kernel (no gradient) and the prefill kernel
    (``maskc.backends.triton.forward``): GQA 4/1, splits over a long cache."""
    from maskc.backends import triton as tb
    from maskc.analysis.sequences import bind_sequences
    m = maskc.compile("mask m = heads { 0..2: causal & window(before = 20, after = 0), "
                      "_: causal }")
    q, k, v = _f32(*qkv(2, 4, 1, 3, 200, D=16, seed=5))
    kw = dict(q_lens=torch.tensor([3, 2]), kv_lens=torch.tensor([200, 77]))
    dec, dlse = m.attention(q, k, v, backend="triton", return_lse=True, **kw)
    seqs = bind_sequences(m.ir, q, k, **kw)
    launch = tb.Launch(m, q, k, v, sequences=seqs)
    assert launch.decodes(grad=False) and not launch.decodes(grad=True)
    pre, plse = launch.forward(q, k, v)
    torch.testing.assert_close(dec, pre, **F32)
    torch.testing.assert_close(dlse, plse, **F32)


@pytest.mark.parametrize("layout", ["pages, heads, rows", "pages, rows, heads"])
@pytest.mark.parametrize("queries", [3, 20])   # the decode kernel, the prefill kernel
def test_paged_caches_on_the_kernels(layout, queries):
    m = maskc.compile("mask m = causal & window(before = 9, after = 0) | sink(2)")
    B, Hq, Hkv, ps, D, npages = 3, 4, 2, 16, 16, 11
    g = torch.Generator().manual_seed(1)
    shape = (npages, Hkv, ps, D) if layout == "pages, heads, rows" else (npages, ps, Hkv, D)
    kc, vc = (torch.randn(*shape, generator=g) for _ in range(2))
    if layout != "pages, heads, rows":   # a (num_pages, page_size, Hkv, D) cache as a view
        kc, vc = kc.transpose(1, 2), vc.transpose(1, 2)
    table = torch.tensor(np.random.default_rng(3).permutation(npages)[:B * 3].reshape(B, 3))
    lq = [min(queries, 3), 1, 0] if queries <= 16 else [20, 7, 0]
    lk = [40, 16, 33]
    q = torch.randn(B, Hq, queries, D, generator=g)
    kw = dict(q_lens=torch.tensor(lq), kv_lens=torch.tensor(lk), page_table=table)
    out, lse = m.attention(q, kc, vc, backend="triton", return_lse=True, **kw)
    w_out, w_lse = m.attention(q.double(), kc.double(), vc.double(), backend="reference",
                               return_lse=True, **kw)
    torch.testing.assert_close(out.double(), w_out, **F32)
    torch.testing.assert_close(lse.double(), w_lse, **F32)


def test_a_paged_cache_takes_no_gradient():
    m = maskc.compile("mask m = causal")
    kc = torch.randn(4, 1, 16, 8)
    q = torch.randn(1, 1, 20, 8, requires_grad=True)
    with pytest.raises(maskc.MaskError, match="gradients through a paged cache"):
        m.attention(q, kc, kc, kv_lens=torch.tensor([30]), page_table=torch.tensor([[0, 1]]),
                    backend="triton")
    with pytest.raises(maskc.MaskError, match="FlexAttention on the CPU does not support "
                                              "gradients"):
        m.attention(q, kc, kc, kv_lens=torch.tensor([30]), page_table=torch.tensor([[0, 1]]),
                    backend="flex-eager")


def test_runtime_ids_are_read_per_sequence_on_the_kernels():
    m = maskc.compile("mask m(input doc) = causal & same(doc)")
    q, k, v = _f32(*qkv(2, 2, 2, 20, 20, D=16))
    doc = torch.tensor([[0] * 7 + [1] * 9 + [2] * 4, [0] * 3 + [1] * 17])
    lens = torch.tensor([20, 11])
    out = m.attention(q, k, v, q_lens=lens, kv_lens=lens, doc=doc, backend="triton")
    want = m.attention(q.double(), k.double(), v.double(), q_lens=lens, kv_lens=lens, doc=doc,
                       backend="reference")
    torch.testing.assert_close(out.double(), want, **F32)


def test_sequence_tables_are_each_sequences_and_skip_invalid_tiles():
    """Row b of the stacked tables is sequence b's analysis alone; a tile with no valid key
    is not visited; each (lengths, offsets) is analysed once per plan."""
    m = maskc.compile("mask m = causal & chunk(16)")
    plan = m.plan(64, 64, 1, target="triton", device="cpu", dtype="float32", head_dim=16)
    from maskc.analysis.sequences import bind_sequences
    q = torch.zeros(2, 1, 64, 8)
    valid = torch.ones(2, 64, dtype=torch.bool)
    valid[1, :32] = False    # left padding: two whole key tiles of 16
    seqs = bind_sequences(m.ir, q, q, q_lens=torch.tensor([64, 40]),
                          kv_lens=torch.tensor([64, 64]), kv_valid=valid)
    bm = sequence_map(plan, seqs, 64, 64, 16, 16)
    st = bm.states()
    assert (st[0, 0] == np.diag([1] * 4)).all()   # causal & chunk(16): diagonal tiles, masked
    # sequence 1: 40 queries at p = q + 24; chunk 1 (keys 16..31) is padding, so dropped
    assert st[1, 0].tolist() == [[0, 0, 1, 0], [0, 0, 1, 1], [0, 0, 0, 1], [0, 0, 0, 0]]
    keep = tiles_of_valid(valid, [64, 64], 16, 4)
    assert keep.tolist() == [[True] * 4, [False, False, True, True]]
    cache = plan.cache["sequences"]
    assert len(cache) == 1          # one vectorized analysis for the whole batch, cached
    assert sequence_map(plan, seqs, 64, 64, 16, 16).kv_indices.tolist() == \
        bm.kv_indices.tolist() and len(cache) == 1
    # a mask with runtime ids: one analysis per sequence, cached per (lengths, offsets, row)
    d = maskc.compile("mask d(input doc) = causal & same(doc)")
    doc = torch.zeros(2, 64, dtype=torch.long)
    plan = d.plan(64, 64, 1, target="triton", device="cpu", dtype="float32", head_dim=16,
                  doc=doc)
    seqs = bind_sequences(d.ir, q, q, q_lens=torch.tensor([64, 40]),
                          kv_lens=torch.tensor([64, 64]))
    sequence_map(plan, seqs, 64, 64, 16, 16)
    sequence_map(plan, seqs, 64, 64, 16, 16)
    assert len(plan.cache["sequences"]) == 2


SEQ_SPECS = ["mask m = causal & chunk(8)", "mask m = causal & (window(5) | sink(3))",
             "mask m = prefix(6) | causal", "mask m = causal & global([0, 9, 17])",
             "mask m = window(before = 4, after = 2)", "mask m = causal & where(k % 3 != 0)",
             "mask m = causal & ~window(3)", "mask m = where k + Lq >= p + 3 and k < Lk - 2",
             "mask m = heads { 0: causal, _: causal & window(4) }",
             "mask m = blocks(8, window(1) | where k < Lk - 1)"]


@pytest.mark.parametrize("spec", SEQ_SPECS)
def test_one_analysis_of_many_sequences_equals_one_per_sequence(spec):
    from maskc.analysis.blocktable import build, build_sequences
    from maskc.backends import reference
    md = maskc.compile(spec).ir
    rng = np.random.default_rng(len(spec))
    for _ in range(8):
        B, bq, bk = int(rng.integers(1, 5)), int(rng.choice([4, 16])), int(rng.choice([4, 8]))
        rows = []
        for b in range(B):
            lq, lk = int(rng.integers(0, 30)), int(rng.integers(0, 50))
            shifted = rng.random() < 0.5
            rows.append((lq, lk, int(rng.integers(-5, 50)) if shifted else lk - lq,
                         int(rng.integers(-5, 30)) if shifted else 0))
        NQ = max(-(-r[0] // bq) for r in rows) or 1
        bm = build_sequences(md, rows, 2, bq, bk, evaluate=reference.evaluate, n_q_tiles=NQ)
        st = bm.states()
        for b, (lq, lk, qo, ko) in enumerate(rows):
            if lq == 0 or lk == 0:
                assert not st[b].any()
                continue
            one = build(md, lq, lk, 2, bq, bk, evaluate=reference.evaluate, offsets=(qo, ko))
            s1 = one.states()[0]
            nq, nk = s1.shape[1:]
            assert (st[b, :, :nq, :nk] == s1).all(), (rows[b], bq, bk)
            assert not st[b, :, nq:].any() and not st[b, :, :, nk:].any()
            for g in range(one.kv_num_blocks.shape[1]):   # the live terms of each tile too
                for i in range(nq):
                    n = one.kv_num_blocks[0, g, i]
                    assert bm.kv_num_blocks[b, g, i] == n
                    assert (bm.live[b, g, i, :n] == one.live[0, g, i, :n]).all()


def test_decode_packs_heads_that_share_a_kv_head_and_a_table():
    # 8 query heads on 2 kv heads; heads 0-3 one pattern, 4-7 another: packed by 4
    assert decode_packing([0, 0, 0, 0, 1, 1, 1, 1], 2, 1) == 4
    # patterns that change within a kv head's heads: packed by what still agrees
    assert decode_packing([0, 0, 1, 1, 0, 0, 1, 1], 2, 1) == 2
    assert decode_packing([0, 1, 2, 3, 4, 5, 6, 7], 2, 1) == 1
    # at most 128 tile rows: 16 queries of 16 heads do not fit in one program
    assert decode_packing([0] * 16, 1, 16) == 8


def test_decode_splits_cover_every_tile():
    for visited in (0, 1, 5, 64, 1000):
        for programs in (1, 8, 512):
            for gpu in (True, False):
                n, per = decode_splits(visited, programs, gpu)
                assert n >= 1 and per >= 1 and n * per >= visited and (n - 1) * per < \
                    max(visited, 1)
    assert decode_splits(1000, 1, True)[0] > 100    # one sequence: the keys across the GPU
    assert decode_splits(1000, 512, True)[0] == 1   # a big batch fills it already


@pytest.mark.parametrize("spec", ["mask m = causal & chunk(8)",
                                  "mask m = causal & (window(before = 5, after = 0) | sink(3))",
                                  "mask m = heads { 0: causal, _: causal & window(4) }",
                                  "mask m(input slopes) = causal with alibi(slopes)"])
def test_flex_runs_sequences_with_one_mask_mod(spec):
    """FlexAttention (eager): per-sequence block tables and one mask_mod reading each
    sequence's lengths, offsets and valid keys; rows past a sequence's queries are zeros."""
    m = maskc.compile(spec)
    q, k, v = qkv(3, 2, 1, 20, 40, D=16, seed=4)
    valid = torch.tensor(np.random.default_rng(0).random((3, 40)) > 0.2)
    kw = dict(q_lens=torch.tensor([20, 7, 0]), kv_lens=torch.tensor([40, 13, 5]),
              kv_offset=torch.tensor([0, 9, 3]), q_offset=torch.tensor([20, 20, 8]),
              kv_valid=valid)
    fl = {"slopes": maskc.alibi_slopes(2)} if "slopes" in spec else {}
    out, lse = m.attention(*_f32(q, k, v), backend="flex-eager", return_lse=True, **kw, **fl)
    want, wlse = m.attention(q, k, v, backend="reference", return_lse=True, **kw,
                             **{n: x.double() for n, x in fl.items()})
    torch.testing.assert_close(out.double(), want, **F32)
    torch.testing.assert_close(lse.double(), wlse, **F32)
    assert torch.all(out[1, :, 7:] == 0) and torch.all(out[2] == 0)


def test_compiled_flex_decodes_from_a_paged_cache():
    m = maskc.compile("mask m = causal & (window(before = 20, after = 0) | sink(2))")
    g = torch.Generator().manual_seed(2)
    kc, vc = (torch.randn(6, 8, 2, 16, generator=g).transpose(1, 2) for _ in range(2))
    q = torch.randn(2, 4, 1, 16, generator=g)
    kw = dict(q_lens=torch.tensor([1, 1]), kv_lens=torch.tensor([30, 17]),
              page_table=torch.tensor([[5, 0, 3, 1], [2, 4, 0, 0]]))
    out = m.attention(q, kc, vc, backend="flex", **kw)
    want = m.attention(q.double(), kc.double(), vc.double(), backend="reference", **kw)
    torch.testing.assert_close(out.double(), want, **F32)


@pytest.mark.parametrize("spec", ["mask m(input doc) = causal & same(doc)",
                                  "mask m(input doc) = within(doc, causal & window(before = 4, "
                                  "after = 0) | sink(2))",
                                  "mask m(input doc) = same(doc) & heads { 0: causal, _: all }",
                                  # a document's Lk inside within stops at the sequence's keys
                                  "mask m(input doc) = within(doc, where k >= Lk - 2)"])
def test_flex_reads_runtime_ids_of_sequences_at_key_rows(spec):
    """FlexAttention and the Triton kernels with per-sequence lengths and offsets read ids at
    key rows (position less the sequence's kv_offset, nothing outside its keys), and a
    document that runs past a sequence's keys ends there, as the reference's masks do."""
    m = maskc.compile(spec)
    q, k, v = qkv(3, 2, 1, 20, 40, D=16, seed=5)
    rng = np.random.default_rng(1)
    doc = torch.tensor(np.sort(rng.integers(0, 5, (3, 40)), axis=1))
    kw = dict(q_lens=torch.tensor([20, 7, 3]), kv_lens=torch.tensor([40, 13, 25]),
              kv_offset=torch.tensor([0, 9, 3]), q_offset=torch.tensor([20, 20, 25]),
              kv_valid=torch.tensor(rng.random((3, 40)) > 0.1))
    want, wlse = m.attention(q, k, v, backend="reference", return_lse=True, doc=doc, **kw)
    for backend in ("flex-eager", "triton"):
        out, lse = m.attention(*_f32(q, k, v), backend=backend, return_lse=True, doc=doc, **kw)
        torch.testing.assert_close(out.double(), want, **F32)
        torch.testing.assert_close(lse.double(), wlse, **F32)
    from maskc.backends.flex.mask_mod import make_sequence_mask_mod, torch_inputs
    from maskc.analysis.sequences import bind_sequences
    seqs = bind_sequences(m.ir, q, k, **kw)
    mod = make_sequence_mask_mod(m.ir, 2, seqs, 40, "cpu", torch_inputs(m.ir, 40, {"doc": doc}))
    assert "kv_offset_b" in mod.source and "row_q" in mod.source  # read at key rows


def test_compiled_flex_reads_runtime_ids_of_sequences():
    m = maskc.compile("mask m(input doc) = causal & same(doc)")
    q, k, v = qkv(2, 2, 1, 12, 30, D=16, seed=6)
    doc = torch.tensor([[0] * 10 + [1] * 20, [2] * 5 + [3] * 25])
    kw = dict(q_lens=torch.tensor([12, 4]), kv_lens=torch.tensor([30, 9]),
              kv_offset=torch.tensor([0, 4]), q_offset=torch.tensor([18, 10]))
    with torch.no_grad():
        out = m.attention(*_f32(q, k, v), backend="flex", doc=doc, **kw)
    want = m.attention(q, k, v, backend="reference", doc=doc, **kw)
    torch.testing.assert_close(out.double(), want, **F32)


def test_flex_refuses_selections_with_sequences():
    m = maskc.compile("mask m(input idx) = causal & blocks(4, select(idx))")
    q = torch.randn(1, 1, 8, 16)
    with pytest.raises(maskc.MaskError, match="per-sequence"):
        m.attention(q, q, q, q_lens=torch.tensor([5]), backend="flex-eager",
                    idx=torch.zeros(2, 1, dtype=torch.long))


@pytest.mark.parametrize("page_size", [1, 5, 48])
def test_any_page_size_is_read_key_by_key(page_size):
    """The kernels gather each key through its page (``page_table[b, t // page_size]``), so
    one-token pages and sizes that are no multiple of the tile work as well."""
    m = maskc.compile("mask m = causal & (window(before = 9, after = 0) | sink(2))")
    pages = -(-90 // page_size)
    g = torch.Generator().manual_seed(page_size)
    kc, vc = (torch.randn(pages + 2, 2, page_size, 16, generator=g) for _ in range(2))
    table = torch.stack([torch.randperm(pages + 2, generator=g)[:pages] for _ in range(2)])
    q = torch.randn(2, 4, 2, 16, generator=g)
    kw = dict(q_lens=torch.tensor([2, 1]), kv_lens=torch.tensor([90, 31]), page_table=table)
    out = m.attention(q, kc, vc, backend="triton", **kw)
    want = m.attention(q.double(), kc.double(), vc.double(), backend="reference", **kw)
    torch.testing.assert_close(out.double(), want, **F32)


def test_compiled_flex_runs_a_score_with_sequences():
    """Found by a new user: Inductor's CPU template failed to compile ('cur_qSplitSize2')
    maskc's score_mod beside its per-sequence mask_mod at some shapes, until the captured
    sequence tensors were marked static."""
    m = maskc.compile("mask m(input slopes) = causal with alibi(slopes)")
    q, k, v = _f32(*qkv(3, 8, 2, 20, 200, D=16, seed=6))
    kw = dict(kv_lens=torch.tensor([200, 150, 7]), slopes=maskc.alibi_slopes(8))
    out = m.attention(q, k, v, backend="flex", **kw)
    want = m.attention(q.double(), k.double(), v.double(), backend="reference",
                       **{**kw, "slopes": kw["slopes"].double()})
    torch.testing.assert_close(out.double(), want, **F32)


def test_page_table_padding_is_never_read_and_lists_are_tables():
    """Found by a new user: flex gathered every page-table entry (padding past kv_lens that
    points outside the cache raised IndexError), and a page table given as a list was
    refused with an error about k."""
    m = maskc.compile("mask m = causal")
    g = torch.Generator().manual_seed(0)
    kc, vc = (torch.randn(4, 2, 16, 16, generator=g) for _ in range(2))
    q = torch.randn(1, 2, 1, 16, generator=g)
    want = m.attention(q.double(), kc.double(), vc.double(), kv_lens=torch.tensor([10]),
                       page_table=torch.tensor([[2, 99]]), backend="reference")
    for backend in ("flex-eager", "triton"):
        out = m.attention(q, kc, vc, kv_lens=torch.tensor([10]), page_table=[[2, 99]],
                          backend=backend)
        torch.testing.assert_close(out.double(), want, **F32)
    with pytest.raises(maskc.MaskInputError, match=r"page_table must be an integer tensor"):
        m.attention(q, kc, vc, kv_lens=torch.tensor([10]), page_table=torch.tensor([2, 3]))
    with pytest.raises(maskc.MaskInputError, match="does not fit in 32 bits"):
        m.attention(q, kc, vc, kv_lens=torch.tensor([10]), page_table=torch.tensor([[2, 3]]),
                    q_offset=1 << 63, backend="reference")


def test_decode_after_prefill_with_equal_tiles():
    """With one tile size for every kernel (block_q = block_k = 16) the decode kernel's
    tables sit at the forward kernel's tiles: each kernel still gets its own arguments."""
    m = maskc.compile("mask m = causal & window(before = 5, after = 0)")
    q, k, v = _f32(*qkv(1, 2, 2, 8, 40, D=16, seed=7))
    want = m.attention(q.double(), k.double(), v.double(), backend="reference")
    prefill = m.attention(q.clone().requires_grad_(), k, v, backend="triton", block_q=16,
                          block_k=16)
    decode = m.attention(q, k, v, backend="triton", block_q=16, block_k=16)
    torch.testing.assert_close(prefill.detach().double(), want, **F32)
    torch.testing.assert_close(decode.double(), want, **F32)
