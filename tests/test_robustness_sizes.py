"""Sizes and cost (issue 11): reproducers that must stay fixed.

Working memory: a stage that builds an array of ``n`` elements needs about that much memory,
not many times it in temporaries; sizes whose work is too large are a located
:class:`~maskc.MaskSizeError` before any large allocation. Slow paths cost what their size
implies, and every rejection comes in well under a second. Memory is measured in a
subprocess (``tracemalloc`` sees numpy's allocations) so one test's peak is its own.
"""

import json
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

import maskc

# ---------------------------------------------------------------- item 1: empty grid heads

_EMPTY_HEAD = "mask m over grid(4) = heads {{ 0: none, _: all }} & {prim}"


@pytest.mark.parametrize("prim", ["tile(2)", "neighborhood(3)"])
@pytest.mark.parametrize("heads", [1, 2, 3])
def test_grid_block_analysis_with_an_empty_head(prim, heads):
    """Head 0 keeps nothing: it has no candidate tile (was a ZeroDivisionError)."""
    m = maskc.compile(_EMPTY_HEAD.format(prim=prim))
    dense = m.dense(heads=heads)
    assert not dense[0].any()
    for block in (1, 2, 4):
        st = m.block_map(heads=heads, block_q=block).states()[0]
        assert (st[0] == 0).all()
        # every kept pair lies in a tile the map visits
        rows, cols = np.nonzero(dense.any(axis=0))
        assert (st[:, rows // block, cols // block] > 0).any(axis=0).all()
    bm = m.flex_block_mask(heads=heads, block_size=2)
    assert int(bm.kv_num_blocks[0, 0].sum() + bm.full_kv_num_blocks[0, 0].sum()) == 0


@pytest.mark.parametrize("prim", ["tile(2)", "neighborhood(3)"])
@pytest.mark.parametrize("backend", ["flex-eager", "triton"])
def test_grid_attention_with_an_empty_head(prim, backend):
    m = maskc.compile(_EMPTY_HEAD.format(prim=prim))
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 4, 8, generator=g) for _ in range(3))
    ref, ref_lse = m.attention(q, k, v, backend="reference", return_lse=True)
    out, lse = m.attention(q, k, v, backend=backend, return_lse=True)
    assert (out[:, 0] == 0).all() and torch.isinf(lse[:, 0]).all()
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse[:, 1].double(), ref_lse[:, 1].double(), atol=1e-5, rtol=1e-5)
