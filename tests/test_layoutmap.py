"""Block maps under a token layout equal the tiles of the permuted dense mask."""

import numpy as np
import pytest

import maskc
from maskc.backends import reference
from maskc.cli import main, tile_states
from maskc.passes.layout import choose_tile_shape, make_layout, permuted_dense
from maskc.passes.layoutmap import choose_layout, permuted_block_map

SPECS = [
    ("over grid(32, 32) = neighborhood(7)", 64),
    ("over grid(20, 28) = neighborhood((5, 9), dilation = (2, 1), causal = (true, false))", 64),
    ("over grid(6, 10, 12) = neighborhood((3, 5, 5)) | tile(2, 5, 4)", 32),
    ("over grid(y = 12, x = 12) = neighborhood(5) & where q.y >= k.x", 16),
    ("over grid(9, 11) = heads { 0: neighborhood(3), _: tile(3, 4) }", 16),
]


@pytest.mark.parametrize("spec, block", SPECS)
def test_permuted_block_map_is_exact(spec, block):
    m = maskc.compile(f"mask m {spec}")
    layout = make_layout(m.grid, choose_tile_shape(m.grid, block))
    bm = permuted_block_map(m.ir, layout, block, heads=2, evaluate=reference.evaluate)
    want = np.stack([tile_states(d, block, block)
                     for d in permuted_dense(m.dense(heads=2), layout)[:, None]])
    assert np.array_equal(bm.states()[0], want[:, 0])


@pytest.mark.parametrize("spec, block", SPECS)
@pytest.mark.parametrize("shape", [(2, 1), (1, 2)])
def test_rectangular_permuted_block_map_is_exact(spec, block, shape):
    m = maskc.compile(f"mask m {spec}")
    bq, bk = block * shape[0] // 2 or block, block * shape[1] // 2 or block
    layout = make_layout(m.grid, choose_tile_shape(m.grid, max(bq, bk)))
    bm = permuted_block_map(m.ir, layout, bq, heads=2, evaluate=reference.evaluate, block_k=bk)
    want = np.stack([tile_states(d, bq, bk)
                     for d in permuted_dense(m.dense(heads=2), layout)[:, None]])
    assert np.array_equal(bm.states()[0], want[:, 0])
    assert (bm.live[bm.kv_indices >= 0] == -1).all()  # every term of the mask stays live


def test_layout_makes_a_large_2d_neighborhood_visit_fewer_tiles():
    m = maskc.compile("mask m over grid(128, 128) = neighborhood(13)")
    layout, bm = choose_layout(m.ir, 128, evaluate=reference.evaluate)
    plain = m.block_map(block_q=128).stats
    assert layout is not None
    assert bm.stats["full"] + bm.stats["partial"] < 0.7 * (plain["full"] + plain["partial"])


def test_row_major_is_kept_when_it_is_better():
    m = maskc.compile("mask m over grid(32, 32) = neighborhood(7)")
    layout, bm = choose_layout(m.ir, 64, evaluate=reference.evaluate)
    assert layout is None and bm is None  # the kernels then run on row-major tables


def test_show_reports_the_layout(capsys):
    src = "mask m over grid(64, 64) = neighborhood(13)\n"
    import tempfile, os
    with tempfile.NamedTemporaryFile("w", suffix=".mask", delete=False) as f:
        f.write(src)
    try:
        assert main(["show", f.name]) == 0
    finally:
        os.unlink(f.name)
    out = capsys.readouterr().out
    assert "layout: tiles 16 x 8 of the grid 64 x 64 made contiguous" in out
