"""FlexAttention interop: block masks from the block IR equal create_block_mask's, row by row;
flex_attention with them (and the flex backends) equals the reference."""

import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

import maskc
from maskc import ir
from maskc.api import Mask
from maskc.errors import MaskError, Source
from maskc.ir.simplify import simplify

from strategies import dense_kwargs, mask_defs

SPECS = [
    "causal & window(before = 40, after = 0) | sink(4)",
    "heads { 0: causal, 1: window(9, dilation = 2), _: global([3]) | chunk(17) }",
    "same(doc) & causal", "within(doc, causal & window(before = 5, after = 0))",
    "blocks(16, window(1) | random(1, seed = 2))", "where (p - k) % 5 == 0 | prefix(10)",
    "~causal - strided(7)",
]


def rows(bm) -> list:
    """Per (batch, head, query tile): the sorted partial and full key tiles."""
    out = []
    kn, ki, fn, fi = (t.cpu() for t in (bm.kv_num_blocks, bm.kv_indices,
                                        bm.full_kv_num_blocks, bm.full_kv_indices))
    for b in range(kn.shape[0]):
        for h in range(kn.shape[1]):
            for i in range(kn.shape[2]):
                out.append((sorted(ki[b, h, i, :kn[b, h, i]].tolist()),
                            sorted(fi[b, h, i, :fn[b, h, i]].tolist())))
    return out


def theirs(m, q_len, kv_len, heads, block, **inputs):
    per_head = heads if any(c in m.pretty() for c in ("heads", "h ")) else None
    return create_block_mask(m.mask_mod(q_len, kv_len, heads, **inputs), None, per_head, q_len,
                             kv_len, device="cpu", BLOCK_SIZE=block)


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("q_len, kv_len, block", [(300, 300, 64), (130, 257, 32),
                                                  (257, 130, (32, 64)), (1, 90, 16)])
def test_block_mask_equals_create_block_mask(spec, q_len, kv_len, block):
    m = maskc.compile(f"mask m(input doc) = {spec}")
    doc = maskc.document_ids([kv_len // 3, kv_len // 3, kv_len - 2 * (kv_len // 3)])
    try:
        ours = m.flex_block_mask(q_len, kv_len, 3, block, doc=doc)
    except MaskError as err:  # random(1) needs a key block: same error from both sides
        assert "key blocks" in str(err)
        return
    assert rows(ours) == rows(theirs(m, q_len, kv_len, 3, block, doc=doc))
    assert ours.seq_lengths == (q_len, kv_len)


def block_states(bm) -> np.ndarray:
    """``(B, H, q tiles, k tiles)`` int8 of 0 empty / 1 partial / 2 full, from a ``BlockMask``."""
    kn, ki, fn, fi = (t.cpu().numpy() for t in (bm.kv_num_blocks, bm.kv_indices,
                                                bm.full_kv_num_blocks, bm.full_kv_indices))
    B, H, nq = kn.shape
    nk = -(-bm.seq_lengths[1] // bm.BLOCK_SIZE[1])
    out = np.zeros((B, H, nq, nk), dtype=np.int8)
    for num, idx, state in ((kn, ki, 1), (fn, fi, 2)):
        for b, h, i in np.ndindex(B, H, nq):
            out[b, h, i, idx[b, h, i, :num[b, h, i]]] = state
    return out


def assert_agrees_with_create_block_mask(m, ours, ref, heads, **inputs):
    """Ours equals ``create_block_mask``'s tables, except that a tile may be partial where
    ``where`` interval arithmetic cannot decide it (sound, as ``Mask.block_map`` promises):
    only tiles the block analysis reports as unproven, never a full or empty tile that is
    not, and never without a ``where`` in the mask."""
    got, want = block_states(ours)[:1], block_states(ref)  # create_block_mask(B=None): batch 0
    assert got.shape[1] in (1, want.shape[1])  # one shared head row, or one per head
    got = np.broadcast_to(got, want.shape)
    wrong = got != want
    assert (got[wrong] == 1).all(), "a tile called full or empty that is not"
    if wrong.any():
        assert any(isinstance(n, ir.Where) for n in ir.walk(m.ir.body))
        bm = m.block_map(ours.seq_lengths[0], ours.seq_lengths[1], heads, *ours.BLOCK_SIZE,
                         **inputs)
        shared = 1 if block_states(ours).shape[1] == 1 else want.shape[1]
        assert wrong[:, :shared].sum() <= bm.stats["unproven"]


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data(), mdef=mask_defs(), block=st.sampled_from([8, 16, (8, 16)]))
def test_random_masks_agree_with_create_block_mask(data, mdef, block):
    kw = data.draw(dense_kwargs(mdef))
    q_len, kv_len, heads = kw.pop("q_len"), kw.pop("kv_len"), kw.pop("heads")
    m = Mask(simplify(mdef), Source(""), {})
    try:
        ours = m.flex_block_mask(q_len, kv_len, heads, block, **kw)
    except MaskError:
        with pytest.raises(MaskError):
            m.dense(q_len, kv_len, heads, **kw)
        return
    ref = create_block_mask(m.mask_mod(q_len, kv_len, heads, **kw), None, heads, q_len, kv_len,
                            device="cpu", BLOCK_SIZE=block)
    assert_agrees_with_create_block_mask(m, ours, ref, heads, **kw)


@pytest.mark.parametrize("heads", [1, 2])
@pytest.mark.parametrize("spec, exact", [("where 0 < 1 and not (q < q)", 2),
                                         ("causal & where false or q < q", 0)])
def test_where_interval_arithmetic_is_sound_not_exact(spec, exact, heads):
    # found by hypothesis on a fresh database: `q < q` is never true, but interval
    # arithmetic sees two independent ranges, so the tile stays partial (create_block_mask
    # evaluates every element and calls it full / empty); flex_attention is still exact
    m = maskc.compile(f"mask m = {spec}")
    ours = m.flex_block_mask(8, 8, heads, 8)
    ref = create_block_mask(m.mask_mod(8, 8, heads), None, heads, 8, 8, device="cpu",
                            BLOCK_SIZE=8)
    assert block_states(ours).tolist() == [[[[1]]]]
    assert (block_states(ref) == exact).all()
    assert m.block_map(8, 8, heads, 8).stats["unproven"] == 1
    assert_agrees_with_create_block_mask(m, ours, ref, heads)
    q, k, v = (torch.randn(1, heads, 8, 4, dtype=torch.float64) for _ in range(3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = flex_attention(q, k, v, block_mask=ours)
    ref_out = m.attention(q, k, v, backend="reference")
    assert torch.allclose(out, ref_out, atol=1e-10)


@pytest.mark.parametrize("spec", SPECS)
def test_flex_attention_with_our_block_mask_equals_the_reference(spec):
    m = maskc.compile(f"mask m(input doc) = {spec}")
    doc = maskc.document_ids([50, 30, 48])
    q, k, v = (torch.randn(2, 3, 128, 16, dtype=torch.float64) for _ in range(3))
    try:
        bm = m.flex_block_mask(128, 128, 3, 32, doc=doc)
    except MaskError:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = flex_attention(q, k, v, block_mask=bm)
    ref = m.attention(q, k, v, backend="reference", doc=doc)
    assert torch.allclose(out, ref, atol=1e-10)


def test_flex_eager_backend_gqa_lse_and_empty_rows():
    m = maskc.compile("mask m = where q >= 20 & causal & window(before = 30, after = 0)")
    q = torch.randn(2, 4, 80, 16, dtype=torch.float64)
    k, v = torch.randn(2, 2, 96, 16, dtype=torch.float64), torch.randn(2, 2, 96, 16,
                                                                      dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out, lse = m.attention(q, k, v, backend="flex-eager", return_lse=True)
    ref, rlse = m.attention(q, k, v, backend="reference", return_lse=True)
    assert torch.allclose(out, ref, atol=1e-10)
    assert torch.equal(torch.isneginf(lse), torch.isneginf(rlse))
    fin = torch.isfinite(rlse)
    assert torch.allclose(lse[fin].double(), rlse[fin], atol=1e-6)
    assert not torch.isnan(out).any()


def test_flex_backend_compiled_is_auto_on_cpu():
    m = maskc.compile("mask m(input doc) = causal & same(doc)")
    doc = maskc.document_ids(cu_seqlens=torch.tensor([0, 40, 100, 128]))
    q, k, v = (torch.randn(1, 2, 128, 16) for _ in range(3))
    out = m.attention(q, k, v, doc=doc)  # auto: FlexAttention through torch.compile on the CPU
    ref = m.attention(q, k, v, backend="reference", doc=doc)
    assert torch.allclose(out, ref, atol=1e-5)


def test_flex_backend_compiles_for_any_length():
    # a static kernel, then one for any length: never dynamo's recompile limit, after which
    # torch silently runs FlexAttention unfused
    from torch._dynamo.utils import counters
    m = maskc.compile("mask m = causal & window(before = 31, after = 0)")
    before = counters["stats"]["unique_graphs"]
    for n in range(40, 400, 40):  # nine lengths, one more than the recompile limit
        q, k, v = (torch.randn(1, 2, n, 16) for _ in range(3))
        out = m.attention(q, k, v, backend="flex")
        assert torch.allclose(out, m.attention(q, k, v, backend="reference"), atol=1e-5)
    assert counters["stats"]["unique_graphs"] - before <= 2


def test_distinct_masks_do_not_share_one_recompile_budget():
    # one torch.compile(flex_attention) for every mask guarded on each mask_mod's code and
    # hit dynamo's recompile limit after a few masks, then ran FlexAttention unfused
    # (issue 11 item 14); each mask structure now has its own compiled function
    masks = [maskc.compile(f"mask budget{i} = causal & window(before = {60 + i}, after = 0)")
             for i in range(3)]
    gen = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, 1, 64, 16, generator=gen) for _ in range(3))
    # the limit is 8; 2 keeps CI fast. Hitting it raises instead of running unfused.
    with torch._dynamo.config.patch(recompile_limit=2, fail_on_recompile_limit_hit=True):
        for m in masks:
            out = m.attention(q, k, v, backend="flex")
            assert torch.allclose(out, m.attention(q, k, v, backend="reference"), atol=1e-5)


def test_compiler_errors_are_mask_errors_naming_other_backends(monkeypatch):
    import importlib
    from torch._inductor.exc import CppCompileError, InductorError
    bm_module = importlib.import_module("maskc.backends.flex.block_mask")
    m = maskc.compile("mask m = causal & window(before = 3, after = 0)")
    q, k, v = (torch.randn(1, 1, 32, 16) for _ in range(3))

    def failing(compiled=True, key=None):
        def fn(*args, **kwargs):
            raise InductorError(CppCompileError(["g++"], "error: 'cur_kvSplitSize1' was not "
                                                "declared in this scope"), None)
        return fn
    monkeypatch.setattr(bm_module, "flex_attention_fn", failing)
    with pytest.raises(MaskError, match="flex-eager") as info:
        m.attention(q, k, v, backend="flex")
    assert "cur_kvSplitSize1" in str(info.value) and "'m'" in str(info.value)

    def wrong_input(compiled=True, key=None):
        def fn(*args, **kwargs):
            raise ValueError("not from the compiler")
        return fn
    monkeypatch.setattr(bm_module, "flex_attention_fn", wrong_input)
    with pytest.raises(ValueError, match="not from the compiler"):
        m.attention(q, k, v, backend="flex")


def test_an_inductor_failure_is_a_mask_error():
    # torch 2.13's CPU FlexAttention template fails to compile here (g++: 'cur_qSplitSize0'
    # was not declared; 'cur_kvSplitSize1' in issue 11 item 14): a MaskError naming the
    # backends that work, never Inductor's CppCompileError. A torch that compiles it must
    # give the reference's numbers.
    m = maskc.compile("mask d(input doc) = causal & same(doc)")
    gen = torch.Generator().manual_seed(5)
    q = torch.randn(1, 2, 1, 32, generator=gen)
    k, v = (torch.randn(1, 2, 300, 32, generator=gen) for _ in range(2))
    doc = maskc.document_ids(cu_seqlens=[0, 100, 300])
    ref = m.attention(q, k, v, backend="reference", doc=doc)
    try:
        out = m.attention(q, k, v, backend="flex", doc=doc)
    except MaskError as err:
        assert "flex-eager" in str(err) and "error" in str(err)
    else:
        assert torch.allclose(out, ref, atol=1e-5)
    assert torch.allclose(m.attention(q, k, v, backend="flex-eager", doc=doc), ref, atol=1e-5)


def test_block_mask_needs_no_n_squared_work():
    m = maskc.compile("mask m = causal & window(before = 256, after = 0)")
    bm = m.flex_block_mask(1 << 17, block_size=128)  # create_block_mask needs ~30 s here
    assert bm.kv_num_blocks.shape == (1, 1, 1024)
    assert int(bm.full_kv_num_blocks.sum() + bm.kv_num_blocks.sum()) == 3069


def test_flex_eager_runs_without_torchs_unfused_warning():
    """backend='flex-eager' asks for the unfused path: torch's warning that flex_attention
    ran without torch.compile is not shown (any other warning still is)."""
    import warnings
    m = maskc.compile("mask m = causal & window(before = 7, after = 0)")
    q = torch.randn(1, 2, 64, 16)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        out = m.attention(q, q, q, backend="flex-eager")
    assert not [w for w in seen if "torch.compile" in str(w.message)], [str(w.message)
                                                                           for w in seen]
    ref = m.attention(q.double(), q.double(), q.double(), backend="reference")
    assert torch.allclose(out.double(), ref, atol=1e-5)
