"""The back half as one pipeline: plans lint, lose nothing, and are what the backends run."""

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import maskc
from maskc import pipeline
from maskc.backends import reference
from maskc.cli import main
from maskc.passes.tiles import KernelConfig, Tiles
from strategies import dense_kwargs, grid_mask_defs, mask_defs

PROPS = settings(max_examples=120, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
MOA32 = "mask moa = heads { 0..4: causal & window(before = 63, after = 0), _: causal }"
SMALL = [Tiles(16, 16), Tiles(16, 32), Tiles(32, 16), Tiles(8, 8)]


def _plan_or_error(mdef, kw, target, **opts):
    inputs = {k: v for k, v in kw.items() if k not in ("q_len", "kv_len", "heads")}
    try:
        return pipeline.plan(mdef, kw["q_len"], kw["kv_len"], kw["heads"], target=target,
                             evaluate=reference.evaluate, inputs=inputs, **opts)
    except maskc.MaskError:
        # the reference must refuse the same input (bind raises for every backend)
        with pytest.raises(maskc.MaskError):
            reference.dense(mdef, kw["q_len"], kw["kv_len"], kw["heads"], **inputs)
        return None


def _check(mdef, kw, plan):
    plan.lint()
    inputs = {k: v for k, v in kw.items() if k not in ("q_len", "kv_len", "heads")}
    want = reference.dense(mdef, kw["q_len"], kw["kv_len"], kw["heads"], **inputs)
    want = want if want.ndim == 4 else want[None]
    for kernel in plan.kernels:
        got = reference.dense_from_plan(plan, kernel)
        assert np.array_equal(got, np.broadcast_to(want, got.shape)), kernel
        bm = plan.block_map(kernel)
        # every head of a group reads one table row, equal to that head's own tables
        own = pipeline._analyse(plan.bound, plan.tiles[kernel], plan.layout,
                                reference.evaluate)  # ungrouped: one row per head
        for group in plan.groups:
            rows = {int(bm.head_group[h]) for h in group}
            assert len(rows) == 1 or kernel != "fwd"
            for h in group:
                r, o = bm.head_group[h], own.head_group[h]
                for a in ("kv_num_blocks", "kv_indices", "full_kv_num_blocks",
                          "full_kv_indices"):
                    mine, theirs = getattr(bm, a)[:, r], getattr(own, a)[:, o]
                    w = max(mine.shape[-1], theirs.shape[-1]) if mine.ndim == 3 else None
                    if w is not None:
                        pad = lambda x: np.pad(x, [(0, 0)] * (x.ndim - 1) +  # noqa: E731
                                               [(0, w - x.shape[-1])], constant_values=-1)
                        mine, theirs = pad(mine), pad(theirs)
                    assert np.array_equal(mine, theirs), (a, h)


@PROPS
@given(data=st.data(), mdef=mask_defs(), tiles=st.sampled_from(SMALL))
def test_random_plans_lint_and_equal_the_dense_mask(data, mdef, tiles):
    kw = data.draw(dense_kwargs(mdef, max_len=40, max_heads=3))
    config = KernelConfig(tiles, Tiles(tiles.block_k, tiles.block_q), tiles)
    for target, opts in (("triton", dict(device="cpu", dtype="float32", head_dim=16,
                                         config=config)),
                         ("flex", dict(block_size=(tiles.block_q, tiles.block_k)))):
        plan = _plan_or_error(mdef, kw, target, **opts)
        if plan is None:
            return
        _check(mdef, kw, plan)


@PROPS
@given(data=st.data(), mdef=grid_mask_defs(),
       layout=st.sampled_from(["tiled", "auto", "row-major"]))
def test_random_grid_plans_with_layouts_equal_the_dense_mask(data, mdef, layout):
    kw = data.draw(dense_kwargs(mdef, max_heads=3))
    config = KernelConfig(Tiles(8, 16), Tiles(16, 8), Tiles(8, 8), layout=layout)
    plan = _plan_or_error(mdef, kw, "triton", device="cpu", dtype="float32", head_dim=16,
                          config=config)
    if plan is None:
        return
    if layout == "tiled":
        assert plan.layout is not None
    if layout == "row-major":
        assert plan.layout is None
    _check(mdef, kw, plan)


def test_32_heads_of_two_patterns_are_two_groups_and_the_kernel_gets_two_rows(monkeypatch):
    m = maskc.compile(MOA32)
    plan = m.plan(256, heads=32, device="cpu", dtype="float32", head_dim=16).lint()
    assert plan.groups == (tuple(range(4)), tuple(range(4, 32)))
    for kernel in plan.kernels:
        assert plan.block_map(kernel).kv_num_blocks.shape[1] == 2
    # the Triton launch receives exactly those tables: 2 rows, every head mapped onto one
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    import torch

    from maskc.backends.triton import launch as tl
    seen = []
    real = tl._Tensors.tables

    def spy(self, plan, kernel, *args):
        out = real(self, plan, kernel, *args)
        g = 6 if kernel == "dkdv" else 5  # where head_group sits among the arguments
        seen.append((kernel, out[g + 3], out[g].tolist()))  # (..., TB, G, ...): G
        return out
    monkeypatch.setattr(tl._Tensors, "tables", spy)
    q = torch.randn(1, 32, 96, 16, requires_grad=True)
    m.attention(q, q, q, backend="triton").sum().backward()
    assert {k for k, _, _ in seen} == {"fwd", "dq", "dkdv"}
    for _, G, head_group in seen:
        assert G == 2 and head_group == [0] * 4 + [1] * 28


def test_gqa_groups_keep_the_query_heads_of_a_kv_head_together():
    m = maskc.compile("mask m = heads { 0..2: window(8), 2..4: causal, 4..6: window(8), "
                      "_: sink(3) }")
    plan = m.plan(96, heads=8, kv_heads=2, target="flex", block_size=16).lint()
    assert plan.groups == ((0, 1, 4, 5), (2, 3), (6, 7))
    assert plan.head_groups.kv_groups == ((0, (0, 1)), (0, (2, 3)), (1, (4, 5)), (1, (6, 7)))


def test_show_target_prints_the_plan(tmp_path, capsys):
    path = tmp_path / "moa.mask"
    path.write_text(MOA32 + "\n")
    m = maskc.compile(path)
    for target, args, opts in (
            ("triton", [], {}),
            ("triton", ["--dtype", "float16", "--head-dim", "64", "--kv-heads", "8"],
             dict(dtype="float16", head_dim=64)),
            ("flex", ["--block", "64"], dict(block_size=64)),
            ("reference", [], {})):
        assert main(["show", str(path), "--heads", "32", "--q-len", "1024", "--target", target,
                     *args]) == 0
        kv = 8 if "--kv-heads" in args else None
        want = str(m.plan(1024, None, 32, kv, target, **opts))
        assert capsys.readouterr().out == want + "\n"
    assert "head groups: 2 tables for 32 heads: [0..4], [4..32]" in want or target != "triton"


def test_show_prints_the_tiles_the_kernel_uses(tmp_path):
    path = tmp_path / "moa.mask"
    path.write_text(MOA32 + "\n")
    out = subprocess.run([sys.executable, "-m", "maskc.cli", "show", str(path), "--heads", "32",
                          "--target", "triton"], capture_output=True, text=True,
                         env={**os.environ, "TRITON_INTERPRET": "0"}, check=True).stdout
    # bfloat16, head dim 128 on a GPU: what Launch runs (checked against the tile rule)
    from maskc.passes.tiles import default_config
    config = default_config("cuda", "bfloat16", 128)
    for kernel in ("fwd", "dq", "dkdv"):
        assert f"tiles {kernel}: {getattr(config, kernel)}" in out
    assert "head groups: 2 tables for 32 heads" in out


def test_the_plan_is_the_one_launch_runs(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    import torch

    from maskc.backends import triton as tb
    m = maskc.compile("mask m over grid(32, 32) = neighborhood(9)")
    q = torch.randn(1, 2, 1024, 16)
    launch = tb.Launch(m, q, q, q)
    plan = m.plan(heads=2, kv_heads=2, device="cpu", dtype=torch.float32, head_dim=16)
    assert launch.plan is plan  # cached: same size, options and inputs
    assert launch.bm is plan.block_map("fwd")


def test_block_aligned_masks_get_aligned_tiles_with_no_partial_tile():
    m = maskc.compile("mask m = blocks(64, window(1) | global([0]) | random(3, seed = 7))")
    plan = m.plan(4096)  # a CUDA device: tiles capped at the blocks' 64
    assert all((t.block_q, t.block_k) == (64, 64) for kernel, t in plan.tiles.items()
               if kernel != "decode")
    assert plan.tiles["decode"].block_k == 64  # its query tile: the 16 queries it takes
    assert plan.block_map("fwd").stats["partial"] == 0
    m = maskc.compile("mask m = chunk(64)")
    assert m.plan(1024, target="flex", block_size=64).block_map().stats["partial"] == 0


def test_plan_options_are_checked():
    m = maskc.compile("mask m = causal")
    with pytest.raises(maskc.MaskError, match="unknown target 'cuda'"):
        m.plan(64, target="cuda")
    with pytest.raises(maskc.MaskInputError, match="no runtime input 'block_size'.*no option of target 'triton'"):
        m.plan(64, block_size=64)  # not a Triton option: taken as an input the mask lacks
    with pytest.raises(maskc.MaskError, match="dtype must be one of"):
        m.plan(64, dtype="int8")
    with pytest.raises(maskc.MaskError, match="power of two"):
        m.plan(64, config=KernelConfig.uniform(24, 32))
    with pytest.raises(maskc.MaskError, match="no kernel 'dq'"):
        m.plan(64, target="flex").block_map("dq")
    assert m.plan(64) is m.plan(64) and m.plan(64) is not m.plan(65)


def test_random_that_no_head_reaches_fails_nowhere():
    """Bind is the one place size errors come from: every backend agrees (issue: Triton
    raised for a random() in an arm that no head takes)."""
    m = maskc.compile("mask m = heads { 0: causal, _: blocks(4, random(3)) }")
    want = m.dense(4, heads=1)
    for target in pipeline.TARGETS:
        plan = m.plan(4, heads=1, target=target, **({"device": "cpu"} if target != "reference"
                                                    else {})).lint()
        assert target == "reference" or np.array_equal(reference.dense_from_plan(plan)[0], want)
    with pytest.raises(maskc.MaskValueError, match="random.3. needs at least 3 key blocks"):
        m.plan(4, heads=2)


def test_lint_finds_broken_plans():
    import dataclasses
    m = maskc.compile(MOA32)
    plan = m.plan(256, heads=8, target="flex", block_size=32)
    bm = plan.block_map()
    for broken, what in (
            (dataclasses.replace(plan, groups=((0, 1), (2,))), "do not partition"),
            (dataclasses.replace(plan, _maps={(32, 32): dataclasses.replace(
                bm, head_group=np.array([0, 1, 0, 0, 1, 1, 1, 1], np.int32))}),
             "read different rows"),
            (dataclasses.replace(plan, _maps={(32, 32): dataclasses.replace(
                bm, full_kv_indices=bm.full_kv_indices + 1)}), "padding is not -1"),
            (dataclasses.replace(plan, _maps={(32, 32): dataclasses.replace(
                bm, kv_indices=np.where(bm.kv_indices >= 0, bm.n_k_tiles, -1))}),
             "outside")):
        with pytest.raises(AssertionError, match=what):
            broken.lint()
    grid = maskc.compile("mask m over grid(16, 16) = neighborhood(5)")
    plan = grid.plan(config=KernelConfig(*[Tiles(16, 16)] * 3, layout="tiled"), device="cpu")
    assert plan.layout is not None and plan.lint() is plan
    swapped = plan.layout.perm.copy()
    swapped[[0, 1]] = swapped[[1, 0]]
    with pytest.raises(AssertionError, match="inverse"):
        dataclasses.replace(plan, layout=dataclasses.replace(plan.layout, perm=swapped)).lint()


@pytest.mark.parametrize("spec", [
    "heads { 0: causal, _: blocks(4, random(1)) }",
    "heads { 0: blocks(4, random(2, seed = 3)), 1: causal, _: blocks(4, layout([[1, 0], [1, 1]])) }",
])
def test_bind_builds_the_tables_of_every_arm_a_head_takes(spec, monkeypatch):
    """Found by the fuzzer: the last arm's random() got no table, so Triton read zeros."""
    m = maskc.compile(f"mask m = {spec}")
    plan = m.plan(12, heads=3, device="cpu")
    reached = [n for n in maskc.ir.walk(m.ir.body) if isinstance(n, (maskc.ir.Random,
                                                                       maskc.ir.Layout))]
    assert {id(n) for n in reached} == set(plan.bound.blocks)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    import torch
    q, k, v = (torch.randn(1, 3, 12, 16) for _ in range(3))
    torch.testing.assert_close(m.attention(q, k, v, backend="triton"),
                               m.attention(q, k, v, backend="reference"), atol=2e-5, rtol=1e-4)
