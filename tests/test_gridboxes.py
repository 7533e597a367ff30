"""Grid masks decided axis by axis on boxes (maskc.analysis.gridboxes) equal the dense mask's tiles,
in row-major order and under token layouts, for random NATTEN configurations and tiles."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import maskc
from maskc.backends import reference
from maskc.analysis import gridboxes
from maskc.cli import tile_states
from maskc.passes.layout import make_layout, permuted_dense
from maskc.passes.layoutmap import permuted_block_map
from test_natten import na_configs, na_source

FAST = settings(max_examples=40, deadline=None)


@st.composite
def grid_masks(draw):
    """A bare neighborhood or tile mask over a random grid of at most 400 tokens."""
    shape, K, d, s, c = draw(na_configs())
    if draw(st.booleans()):
        return maskc.compile(na_source(shape, K, d, s, c))
    sizes = ", ".join(str(draw(st.integers(1, n))) for n in shape)
    grid = ", ".join(map(str, shape))
    return maskc.compile(f"mask m over grid({grid}) = tile({sizes})")


def tiles(draw_sizes=st.integers(1, 48)):
    return st.tuples(draw_sizes, draw_sizes)


@pytest.mark.parametrize("limit", [gridboxes.AXIS_TABLE_LIMIT, 0])  # boxes; per-query counts
@FAST
@given(m=grid_masks(), blocks=tiles())
def test_row_major_tiles_are_exact(limit, m, blocks):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gridboxes, "AXIS_TABLE_LIMIT", limit)
        got = m.block_map(None, None, 1, *blocks)
    assert np.array_equal(got.states()[0], tile_states(m.dense(), *blocks))
    assert got.stats["unproven"] == 0


@FAST
@given(m=grid_masks(), blocks=tiles(), data=st.data())
def test_layout_tiles_are_exact(m, blocks, data):
    tile = tuple(data.draw(st.integers(1, n)) for n in m.grid)
    layout = make_layout(m.grid, tile)
    bq, bk = blocks
    got = permuted_block_map(m.ir, layout, bq, 1, reference.evaluate, block_k=bk)
    want = tile_states(permuted_dense(m.dense(), layout), bq, bk)[0]
    assert np.array_equal(got.states()[0, 0], want)


@FAST
@given(shape=st.lists(st.integers(1, 7), min_size=1, max_size=4), data=st.data())
def test_range_boxes_partition_the_range(shape, data):
    n = int(np.prod(shape))
    lo = data.draw(st.integers(0, n - 1))
    hi = data.draw(st.integers(lo, n - 1))
    b_lo, b_hi = gridboxes.range_boxes(np.array([lo]), np.array([hi]), shape)
    cover = np.zeros(shape, dtype=int)
    for a, b in zip(b_lo[0], b_hi[0]):
        if a[0] <= b[0]:
            cover[tuple(slice(x, y + 1) for x, y in zip(a, b))] += 1
    want = np.zeros(n, dtype=int)
    want[lo:hi + 1] = 1
    assert np.array_equal(cover.ravel(), want)  # every token once, nothing else


@FAST
@given(shape=st.lists(st.integers(1, 9), min_size=1, max_size=3), size=st.integers(1, 40),
       data=st.data())
def test_layout_boxes_are_the_layout_tiles(shape, size, data):
    tile = tuple(data.draw(st.integers(1, n)) for n in shape)
    layout = make_layout(shape, tile)
    b_lo, b_hi = gridboxes.layout_boxes(layout, size)
    n = layout.numel
    for t in range(-(-n // size)):
        cover = np.zeros(shape, dtype=int)
        for a, b in zip(b_lo[t], b_hi[t]):
            if a[0] <= b[0]:
                cover[tuple(slice(x, y + 1) for x, y in zip(a, b))] += 1
        want = np.zeros(n, dtype=int)
        want[layout.perm[t * size:(t + 1) * size]] = 1
        assert np.array_equal(cover.ravel(), want)
