"""Head grouping preserves the tiles (and so the dense mask) its input describes; the
whole pipeline is tested in test_pipeline.py."""

import numpy as np
import pytest

import maskc
from maskc.passes.heads import group_heads

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
