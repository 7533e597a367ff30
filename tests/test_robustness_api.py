"""Bad arguments to the Python API give MaskErrors before any large allocation, and the
backends agree on what they accept (found by fuzzing and a user-journey audit)."""

import numpy as np
import pytest
import torch

import maskc
from maskc import MaskError, MaskInputError, MaskSizeError

CAUSAL = maskc.compile("mask m = causal")
PER_HEAD = maskc.compile("mask m = heads { 0: causal, _: all }")
DOCS = maskc.compile("mask m(input doc) = causal & same(doc)")


@pytest.mark.parametrize("call", [
    lambda: CAUSAL.block_map(10**6, block_q=16),            # 62,500² candidate tiles
    lambda: CAUSAL.flex_block_mask(2**20, block_size=16),
    lambda: CAUSAL.block_map(2**31 - 1, block_q=1),         # 2**31 query tiles
    lambda: maskc.compile("mask m = blocks(1, random(1))").mask_mod(2**29),
], ids=["candidates", "flex-block-mask", "tile-rows", "random-table"])
def test_sizes_over_the_limits_are_errors_before_allocating(call):
    with pytest.raises(MaskSizeError, match="limit"):
        call()


def test_dense_tile_states_are_limited(monkeypatch):
    monkeypatch.setattr(maskc.analysis.sizes, "_limit", 2**20)
    bm = maskc.compile("mask m = causal & window(before = 8, after = 0)").block_map(
        2**20, block_q=128)  # sparse tables: fine
    with pytest.raises(MaskSizeError, match="tile states would hold 67,108,864 elements"):
        bm.states()  # 8192 x 8192 dense


@pytest.mark.parametrize("heads", [0, -1, 1.5, True, None, "2", 2**31])
def test_heads_must_be_a_sensible_integer(heads):
    for call in (lambda: PER_HEAD.block_map(8, heads=heads),
                 lambda: PER_HEAD.dense(8, heads=heads),
                 lambda: PER_HEAD.mask_mod(8, heads=heads)):
        with pytest.raises(MaskSizeError, match="heads must be an integer") as err:
            call()
        assert "<string>:1:6" in str(err.value)


@pytest.mark.parametrize("block_size", [(4, 4, 4), 1.5, None, (0, 4), "8"])
def test_flex_block_size_is_checked(block_size):
    with pytest.raises(MaskSizeError, match="block"):
        CAUSAL.flex_block_mask(8, block_size=block_size)


@pytest.mark.parametrize("doc", [[[0] * 8, [0] * 7], torch.zeros(8, dtype=torch.int64,
                                                                  device="meta")])
def test_unreadable_inputs_are_input_errors(doc):
    with pytest.raises(MaskInputError, match="input 'doc'"):
        maskc.compile("mask m(input doc) = same(doc)").dense(8, doc=doc)


def _qkv(*shape, dtype=torch.float32):
    return [torch.randn(*shape, dtype=dtype) for _ in range(3)]


@pytest.mark.parametrize("backend", ["reference", "flex-eager", "triton"])
def test_attention_arguments_are_checked(backend):
    q, k, v = _qkv(1, 2, 8, 4)
    bad = [
        ((torch.randn(1, 2, 8, 0),) * 3, {}, MaskSizeError, "empty dimension"),
        ((q, k, v), {"scale": "x"}, MaskError, "scale must be"),
        ((q, k, v), {"scale": float("nan")}, MaskError, "scale must be"),
        ((q.numpy(), k, v), {}, MaskError, "must be a torch tensor"),
        ((q.int(), k.int(), v.int()), {}, MaskError, "floating-point"),
        ((q.half(), k, v), {}, MaskError, "one dtype"),
    ]
    for args, kw, err, text in bad:
        with pytest.raises(err, match=text):
            CAUSAL.attention(*args, backend=backend, **kw)
    assert CAUSAL.attention(q, k, v, backend="reference", scale=np.float32(0.5)).shape == q.shape


def test_batched_inputs_broadcast_or_are_refused_on_every_backend():
    q, k, v = _qkv(2, 1, 16, 16)
    one = np.array([[0] * 8 + [1] * 8])
    want = DOCS.attention(q, k, v, backend="reference", doc=np.tile(one, (2, 1)))
    for backend in ("reference", "flex-eager", "triton"):
        got = DOCS.attention(q, k, v, backend=backend, doc=one)  # batch 1 serves both rows
        torch.testing.assert_close(got, want.to(got.dtype), atol=2e-5, rtol=1e-4)
        with pytest.raises(MaskSizeError, match="batch 3 but q has 2"):
            DOCS.attention(q, k, v, backend=backend, doc=np.tile(one, (3, 1)))
    with pytest.raises(MaskSizeError, match="batch 3 but q has 2"):  # compiled flex too
        DOCS.attention(q, k, v, backend="flex", doc=np.tile(one, (3, 1)))


def test_auto_on_the_cpu_serves_gradients_and_lse():
    q, k, v = _qkv(1, 2, 32, 16)
    q.requires_grad_()
    out, lse = CAUSAL.attention(q, k, v, return_lse=True)  # "auto": flex cannot do these here
    ref_out, ref_lse = CAUSAL.attention(q, k, v, backend="reference", return_lse=True)
    torch.testing.assert_close(out, ref_out, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(lse.double(), ref_lse.double(), atol=2e-5, rtol=1e-4)
    out.sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()
    for backend, kw in (("flex-eager", {}), ("flex", {"return_lse": True})):
        with pytest.raises(MaskError, match="FlexAttention on the CPU does not support"):
            CAUSAL.attention(q, k, v, backend=backend, **kw)


def test_random_blocks_cost_grows_with_r_not_with_the_square():
    # the support lists each query block's r chosen key blocks: candidates ~ tiles x (r + 3)
    m = maskc.compile("mask m = blocks(64, window(1) | global([0]) | random(3, seed = 7))")
    bm = m.block_map(2**16, block_q=64)
    nq = 2**16 // 64
    assert bm.stats["candidates"] <= nq * (3 + 3 + 1) + nq  # + the global row
    assert bm.stats["full"] == int(np.count_nonzero(bm.states() == 2))
    assert bm.stats["partial"] == 0


def test_configuration_mistakes_are_mask_errors():
    from maskc.backends.triton import KernelConfig, Tiles
    for bad in (-5, 0, 1.5, True):
        with pytest.raises(MaskSizeError, match="dense limit must be a positive integer"):
            maskc.set_dense_limit(bad)
    assert maskc.dense_limit() == 2**28
    for kw in ({"num_warps": 0}, {"num_warps": 3}, {"num_stages": 0}):
        with pytest.raises(MaskError, match="num_"):
            Tiles(64, 64, **kw)
    q, k, v = _qkv(1, 1, 16, 16)
    # maskc.KernelConfig is maskc.backends.triton.KernelConfig (one class, one name first)
    with pytest.raises(MaskError, match="config must be a maskc.KernelConfig"):
        CAUSAL.attention(q, k, v, backend="triton", config={"fwd": (64, 64)})
    assert isinstance(KernelConfig.uniform(32, 32), KernelConfig)


def test_a_missing_mask_file_is_named():
    with pytest.raises(MaskError, match="no such file: examples/nonexistent.mask"):
        maskc.compile("examples/nonexistent.mask")


@pytest.mark.parametrize("spec", [
    "where " + "min(1, " * 60 + "k - q" + ")" * 60 + " < 3",
    "~(" * 95 + "causal" + ")" * 95,
])
def test_deep_nesting_works_on_flex_eager_and_triton(default_recursion_limit, spec):
    # within the language's 100 levels, under Python's default recursion limit (pinned: a
    # cold inductor compile raises it). The generated mask_mod is straight-line source, so
    # torch's tracer no longer recurses once per level (it did with nested closures).
    m = maskc.compile(f"mask m = {spec}")
    q, k, v = _qkv(1, 1, 64, 16)
    want = m.attention(q, k, v, backend="reference")
    for backend in ("flex-eager", "triton"):
        torch.testing.assert_close(m.attention(q, k, v, backend=backend), want, atol=2e-5,
                                   rtol=1e-4)


@pytest.mark.parametrize("body", ["random(1)", "~random(1)", "window(1) & ~random(1)"])
def test_random_zero_keeps_no_random_blocks(body):
    # random(0) built in the IR directly: the simplifier would otherwise fold it away
    import dataclasses

    from maskc.backends import reference
    from maskc import ir
    from maskc.analysis.blocktable import build
    from maskc.cli import tile_states
    from maskc.ir.rewrite import map_children

    def zero(n):
        n = map_children(n, zero)
        return dataclasses.replace(n, r=0) if isinstance(n, ir.Random) else n
    mdef = maskc.compile(f"mask m = blocks(4, {body})").ir
    mdef = dataclasses.replace(mdef, body=zero(mdef.body))
    assert any(isinstance(n, ir.Random) and n.r == 0 for n in ir.walk(mdef.body))
    got = build(mdef, 40, 40, 1, 8, 8, evaluate=reference.evaluate).states()[0]
    assert np.array_equal(got, tile_states(reference.dense(mdef, 40, 40, 1), 8, 8))
