"""Each pass preserves the tiles (and so the dense mask) its input describes."""

import numpy as np
import pytest

import maskc
from maskc.passes.fusion import expand, fuse
from maskc.passes.heads import group_heads
from maskc.passes.tiles import choose_tiles

SPECS = [
    "causal & window(before = 40, after = 0) | sink(4)",
    "chunk(32) | global([0])",
    "heads { 0..4: window(8), 4..6: causal, _: window(8) }",
    "blocks(16, window(1) | random(2, seed = 1)) - window(3)",
    "where (p - k) % 7 == 0 | causal & window(before = 9, after = 0)",
]


@pytest.mark.parametrize("spec", SPECS)
def test_fusion_expands_to_the_same_tiles(spec):
    m = maskc.compile(f"mask m = {spec}")
    bm = m.block_map(200, heads=8, block_q=16)
    runs = fuse(bm)
    B, G, nq = bm.kv_num_blocks.shape
    for b in range(B):
        for g in range(G):
            for i in range(nq):
                ptiles, pvars, ftiles = expand(runs, runs.row_of[b, g, i])
                n, f = bm.kv_num_blocks[b, g, i], bm.full_kv_num_blocks[b, g, i]
                assert np.array_equal(ptiles, bm.kv_indices[b, g, i, :n])
                assert np.array_equal(pvars, bm.variant[b, g, i, :n])
                assert np.array_equal(ftiles, bm.full_kv_indices[b, g, i, :f])
    for row in runs.partial + runs.full:
        assert (row[:, 1] >= 1).all()


def test_fusion_makes_runs_and_shares_rows():
    m = maskc.compile("mask m = chunk(64)")
    runs = fuse(m.block_map(512, block_q=16))
    # 32 query tiles, 8 chunks of 4 tiles: every row is one full run of 4 tiles
    assert all(len(f) == 1 and f[0, 1] == 4 for f in runs.full)
    assert runs.n_rows == 8
    assert not any(len(p) for p in runs.partial)


def test_head_grouping_merges_identical_heads_and_is_gqa_aware():
    m = maskc.compile("mask m = heads { 0..2: window(8), 2..4: causal, 4..6: window(8), _: sink(3) }")
    bm = m.block_map(96, heads=8, block_q=16)
    merged, groups = group_heads(bm, kv_heads=2)
    assert groups.structure.tolist() == [0, 0, 1, 1, 0, 0, 2, 2]
    assert groups.predicate.tolist() == groups.structure.tolist()
    assert merged.kv_num_blocks.shape[1] == 3
    assert np.array_equal(merged.states(), bm.states())
    assert groups.kv_groups == ((0, (0, 1)), (0, (2, 3)), (1, (4, 5)), (1, (6, 7)))


def test_same_structure_different_predicate():
    # both heads visit the same tiles, but partial tiles need different predicates
    m = maskc.compile("mask m = heads { 0: causal, _: where k <= p + 0 * h }")
    merged, groups = group_heads(m.block_map(64, heads=2, block_q=16))
    assert groups.structure.tolist() == [0, 0]
    assert groups.predicate.tolist() == [0, 1]
    assert merged.kv_num_blocks.shape[1] == 2


def test_head_grouping_rejects_bad_gqa():
    m = maskc.compile("mask m = causal")
    with pytest.raises(ValueError):
        group_heads(m.block_map(32, heads=6, block_q=16), kv_heads=4)


def test_tile_choice_removes_partial_tiles_when_a_size_divides_the_pattern():
    m = maskc.compile("mask m = chunk(64)")
    bq, bk = choose_tiles(m.ir, 1024)
    bm = m.block_map(1024, block_q=bq, block_k=bk)
    assert bm.stats["partial"] == 0 and 64 % bq == 0 and 64 % bk == 0
    m = maskc.compile("mask m = blocks(64, window(1))")
    assert choose_tiles(m.ir, 4096) == (64, 64)
    assert m.block_map(4096, block_q=64).stats["partial"] == 0


def test_tile_choice_prefers_large_tiles_for_dense_masks():
    m = maskc.compile("mask m = all")
    assert choose_tiles(m.ir, 1024) == (128, 128)
