"""The token layout pass (maskc/passes/layout.py): tile-major permutations of grid tokens.

Properties: the order is a permutation with every tile contiguous (also for grid sizes the
tile does not divide); permute/unpermute round-trip on NumPy arrays and torch tensors;
``permuted_dense`` is the mask evaluated on permuted indices; attention is exact under the
permutation (against ``Mask.attention(backend="reference")``); and a 2-D neighborhood gets
fewer non-empty and fewer partial 64x64 tiles once its tokens are laid out in 8x8 tiles.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, reject, settings, strategies as st

import maskc
from maskc.backends import reference
from maskc.errors import MaskError, MaskValueError
from maskc.passes.layout import (TokenLayout, choose_tile_shape, make_layout, permute,
                                 permuted_dense, unpermute)
from maskc.ir.pretty import pretty

import strategies as strat

_SETTINGS = settings(max_examples=60, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


@st.composite
def grid_and_tile(draw, max_axis: int = 9):
    """A 1-3 axis grid (sizes often not divisible by the tile) and a tile shape for it."""
    nd = draw(st.integers(1, 3))
    grid = tuple(draw(st.lists(st.integers(1, max_axis), min_size=nd, max_size=nd)))
    # NOTE: tiles up to one past the axis size, so "tile larger than the axis" is covered.
    tile = tuple(draw(st.integers(1, n + 1)) for n in grid)
    return grid, tile


def attention_with(mask_dense, q, k, v, **kw):
    """Reference attention with an explicit dense mask (no compiled Mask involved)."""
    return reference.attention(mask_dense, q, k, v, **kw)


def tile_counts(mask2d: np.ndarray, block: int) -> tuple[int, int]:
    """``(non-empty, partial)`` ``block x block`` tiles of a 2-D boolean mask."""
    n, m = mask2d.shape
    nb, mb = -(-n // block), -(-m // block)
    padded = np.zeros((nb * block, mb * block), dtype=bool)
    padded[:n, :m] = mask2d
    tiles = padded.reshape(nb, block, mb, block).sum(axis=(1, 3))
    # NOTE: a tile hanging over the edge is full when every real cell in it is kept.
    real = np.zeros_like(padded)
    real[:n, :m] = True
    area = real.reshape(nb, block, mb, block).sum(axis=(1, 3))
    nonempty = int((tiles > 0).sum())
    return nonempty, int(((tiles > 0) & (tiles < area)).sum())


# ---------------------------------------------------------------- make_layout

@_SETTINGS
@given(grid_and_tile())
def test_perm_is_a_permutation_with_contiguous_row_major_tiles(gt):
    grid, tile = gt
    lay = make_layout(grid, tile)
    N = math.prod(grid)
    assert lay.perm.dtype == np.int64 and lay.inv.dtype == np.int64
    assert np.array_equal(np.sort(lay.perm), np.arange(N))
    assert np.array_equal(lay.inv[lay.perm], np.arange(N))
    assert np.array_equal(lay.perm[lay.inv], np.arange(N))
    assert lay.numel == N and lay.grid_shape == grid
    t = lay.tile_shape
    assert all(1 <= ti <= min(n, tj) for ti, n, tj in zip(t, grid, tile))
    coords = np.stack(reference.coords(lay.perm, grid))  # (d, N), in the new order
    tid = [tuple(c) for c in (coords // np.array(t)[:, None]).T]
    # Tiles come in row-major order of tile coordinates, each as one contiguous run...
    runs = [key for key, _ in itertools.groupby(tid)]
    assert runs == sorted(set(tid))
    # ...of exactly the tile's (possibly ragged) size, row-major inside the tile.
    start = 0
    for key, group in itertools.groupby(tid):
        size = len(list(group))
        want = math.prod(min(ti, n - ki * ti) for ti, n, ki in zip(t, grid, key))
        assert size == want
        assert np.all(np.diff(lay.perm[start:start + size]) > 0)
        start += size


def test_layout_examples():
    lay = make_layout((5, 7), (2, 3))
    assert lay.perm[:12].tolist() == [0, 1, 2, 7, 8, 9, 3, 4, 5, 10, 11, 12]
    assert lay.perm[12:14].tolist() == [6, 13]  # the ragged 2x1 tile at the right edge
    assert lay.perm[-2:].tolist() == [33, 34]  # the ragged 1x1 corner tile
    assert np.array_equal(make_layout((4, 6), (1, 1)).perm, np.arange(24))
    assert np.array_equal(make_layout((4, 6), (4, 6)).perm, np.arange(24))
    assert make_layout((4, 6), (9, 9)).tile_shape == (4, 6)
    assert make_layout((4, 6), (2, 3)) == make_layout((4, 6), (2, 3))
    assert hash(make_layout((4, 6), (2, 3))) == hash(make_layout([4, 6], [2, 3]))
    assert isinstance(lay, TokenLayout)
    with pytest.raises(ValueError):
        lay.perm[0] = 1  # read-only


@pytest.mark.parametrize("grid, tile", [((5, 7), (2,)), ((0, 3), (1, 1)), ((4,), (0,)),
                                        ((4,), (1.5,)), ((), ())])
def test_make_layout_rejects_bad_shapes(grid, tile):
    with pytest.raises(MaskValueError):
        make_layout(grid, tile)


# ---------------------------------------------------------------- permute / unpermute

@_SETTINGS
@given(grid_and_tile(), st.integers(0, 2), st.integers(1, 3), st.booleans(), st.data())
def test_unpermute_inverts_permute_numpy_and_torch(gt, dim, extra, negative, data):
    grid, tile = gt
    lay = make_layout(grid, tile)
    shape = [extra + 1] * 3
    shape[dim] = lay.numel
    x = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1))).normal(size=shape)
    d = dim - 3 if negative else dim
    px = permute(x, lay, d)
    assert isinstance(px, np.ndarray) and px.shape == x.shape
    assert np.array_equal(np.take(px, lay.inv, axis=dim), x)
    assert np.array_equal(np.take(x, lay.perm, axis=dim), px)
    assert np.array_equal(unpermute(px, lay, d), x)
    assert np.array_equal(permute(unpermute(x, lay, d), lay, d), x)
    t = torch.from_numpy(x)
    pt = permute(t, lay, d)
    assert isinstance(pt, torch.Tensor) and pt.dtype == t.dtype
    assert np.array_equal(pt.numpy(), px)
    assert torch.equal(unpermute(pt, lay, d), t)


def test_permute_torch_keeps_dtype_and_gradients():
    lay = make_layout((6, 5), (4, 2))
    x = torch.randn(2, 30, 3, dtype=torch.float32, requires_grad=True)
    y = unpermute(permute(x, lay, 1) * 2.0, lay, 1)
    y.sum().backward()
    assert y.dtype == torch.float32 and torch.equal(y.detach(), x.detach() * 2.0)
    assert torch.equal(x.grad, torch.full_like(x, 2.0))
    ints = torch.arange(30)
    assert permute(ints, lay, 0).tolist() == lay.perm.tolist()


def test_permute_rejects_wrong_length_and_dim():
    lay = make_layout((4, 4), (2, 2))
    with pytest.raises(MaskValueError, match="15 tokens"):
        permute(np.zeros((15, 2)), lay, 0)
    with pytest.raises(MaskValueError, match="out of range"):
        unpermute(torch.zeros(16), lay, 1)


# ---------------------------------------------------------------- permuted masks

def _on_permuted_indices(mdef, lay: TokenLayout, heads: int) -> np.ndarray:
    """The mask evaluated directly at ``(perm[i], perm[j])``: an independent ``M'``."""
    N = lay.numel
    P = lay.perm.reshape(1, 1, N, 1)
    K = lay.perm.reshape(1, 1, 1, N)
    Hh = np.arange(heads, dtype=np.int64).reshape(1, heads, 1, 1)
    out = reference.evaluate(mdef.body, P, P, K, Hh, N, N, {}, mdef.grid)
    return np.broadcast_to(out, (1, heads, N, N))[0]


@_SETTINGS
@given(st.data())
def test_permuted_dense_is_the_mask_on_permuted_indices(data):
    mdef = data.draw(strat.mask_defs(depth=3, inputs=(), grid=True))
    heads = data.draw(st.integers(1, 3))
    tile = tuple(data.draw(st.integers(1, a.size)) for a in mdef.grid.axes)
    lay = make_layout(mdef.grid.shape, tile)
    try:
        M = reference.dense(mdef, heads=heads)
    except MaskError:
        reject()
    got = permuted_dense(M, lay)
    assert got.shape == M.shape and got.dtype == bool
    assert np.array_equal(got, _on_permuted_indices(mdef, lay, heads))
    assert np.array_equal(permuted_dense(torch.from_numpy(M), lay).numpy(), got)
    # Unpermuting both axes gives the original mask back.
    assert np.array_equal(unpermute(unpermute(got, lay, -1), lay, -2), M)


def _check_exact(src: str, tile, heads=(2, 1), dv=3, seed=0):
    """Attention on permuted q/k/v with the permuted mask, unpermuted, equals the original."""
    m = maskc.compile(src)
    lay = make_layout(m.grid, tile)
    Hq, Hkv = heads
    g = torch.Generator().manual_seed(seed)
    N = lay.numel
    q = torch.randn(2, Hq, N, 4, generator=g, dtype=torch.float64)
    k = torch.randn(2, Hkv, N, 4, generator=g, dtype=torch.float64)
    v = torch.randn(2, Hkv, N, dv, generator=g, dtype=torch.float64)
    want, want_lse = m.attention(q, k, v, backend="reference", return_lse=True)
    pm = permuted_dense(m.dense(heads=Hq), lay)
    got, got_lse = attention_with(pm, permute(q, lay, 2), permute(k, lay, 2),
                                  permute(v, lay, 2), return_lse=True)
    torch.testing.assert_close(unpermute(got, lay, 2), want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(unpermute(got_lse, lay, 2), want_lse, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("src, tile", [
    ("mask m over grid(y = 10, x = 13) = neighborhood(5)", (4, 4)),
    ("mask m over grid(y = 9, x = 11) = neighborhood((3, 5), dilation = (2, 1))", (2, 8)),
    ("mask m over grid(t = 5, y = 6, x = 7) = neighborhood((3, 3, 3), causal = (true, "
     "false, false))", (2, 4, 4)),
    ("mask m over grid(t = 4, y = 5, x = 6) = neighborhood(3, stride = 2) | tile(2, 5, 3)",
     (3, 2, 4)),
    ("mask m over grid(17) = causal & window(4)", (8,)),
    ("mask m over grid(y = 7, x = 7) = heads { 0: neighborhood(3), _: where q.x >= k.x }",
     (3, 3)),
])
def test_attention_is_exact_under_the_permutation(src, tile):
    _check_exact(src, tile)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(st.data())
def test_attention_is_exact_under_random_layouts(data):
    mdef = data.draw(strat.mask_defs(depth=2, inputs=(), grid=True))
    tile = tuple(data.draw(st.integers(1, a.size + 1)) for a in mdef.grid.axes)
    try:
        reference.dense(mdef, heads=2)
    except MaskError:
        reject()
    _check_exact(pretty(mdef), tile, heads=(2, data.draw(st.sampled_from((1, 2)))),
                 seed=data.draw(st.integers(0, 999)))


# ---------------------------------------------------------------- tile choice

@_SETTINGS
@given(st.lists(st.integers(1, 12), min_size=1, max_size=3), st.integers(1, 80),
       st.booleans(), st.data())
def test_choose_tile_shape_fits_and_fills(grid, T, with_kernel, data):
    kernel = (tuple(data.draw(st.integers(1, n)) for n in grid) if with_kernel else None)
    t = choose_tile_shape(grid, T, kernel)
    assert len(t) == len(grid)
    assert all(1 <= ti <= n for ti, n in zip(t, grid))
    assert math.prod(t) <= T
    best = max(math.prod(c) for c in itertools.product(*(range(1, n + 1) for n in grid))
               if math.prod(c) <= T)
    assert math.prod(t) == best  # the largest product that fits; == T whenever reachable
    assert choose_tile_shape(tuple(grid), T, kernel) == t  # deterministic


def test_choose_tile_shape_examples():
    assert choose_tile_shape((32, 32), 64) == (8, 8)
    assert choose_tile_shape((16, 16, 16), 64) == (4, 4, 4)
    assert choose_tile_shape((100,), 64) == (64,)
    assert choose_tile_shape((3, 3), 64) == (3, 3)  # the whole grid, below the budget
    assert choose_tile_shape((5, 100), 64) == (4, 16)
    assert choose_tile_shape((64, 64), 128) in ((8, 16), (16, 8))
    assert choose_tile_shape((64, 64), 64, kernel=(3, 15)) == (4, 16)  # kernel's aspect
    assert choose_tile_shape((64, 64), 64, kernel=(15, 3)) == (16, 4)
    assert choose_tile_shape((8, 64, 64), 128, kernel=(1, 7, 7)) == (2, 8, 8)
    with pytest.raises(MaskValueError):
        choose_tile_shape((8, 8), 0)
    with pytest.raises(MaskValueError):
        choose_tile_shape((8, 8), 64, kernel=(3,))


# ---------------------------------------------------------------- the point of it all

def _counts(n: int, K: int, tile) -> tuple[tuple[int, int], tuple[int, int]]:
    """``(non-empty, partial)`` 64x64 tiles of ``neighborhood(K)`` over an ``n x n`` grid,
    row-major and then in the ``tile`` layout; printed for the record."""
    m = maskc.compile(f"mask m over grid(y = {n}, x = {n}) = neighborhood({K})")
    M = m.dense()[0]
    before = tile_counts(M, 64)
    stats = m.block_map(block_q=64).stats  # the block analysis agrees on row-major tiles
    assert before == (stats["full"] + stats["partial"], stats["partial"])
    after = tile_counts(permuted_dense(M, make_layout(m.grid, tile)), 64)
    print(f"\nneighborhood({K}) over {n}x{n}, 64x64 tiles of {(n * n // 64) ** 2}: "
          f"row-major non-empty={before[0]} partial={before[1]}; {tile} layout "
          f"non-empty={after[0]} partial={after[1]}")
    return before, after


@pytest.mark.parametrize("n, K", [(32, 15), (32, 31), (64, 9), (64, 13)])
def test_neighborhood_is_block_denser_after_the_permutation(n, K):
    assert choose_tile_shape((n, n), 64) == (8, 8)
    before, after = _counts(n, K, (8, 8))
    assert after[0] <= before[0] and after[1] <= before[1]
    assert after[0] + after[1] < before[0] + before[1]


def test_small_neighborhood_on_a_narrow_grid_is_not_denser():
    """Measured, not hoped for: neighborhood(7) over 32x32 with 8x8 tiles.

    A row-major 64-token block is two whole rows of a 32-wide grid, so the x window never
    leaves it and its keys span ~8 rows (4-5 blocks); an 8x8 tile's 7x7 neighborhood reaches
    into all 3x3 surrounding tiles. Tiling pays once the kernel is large next to the tile
    (the cases above); here it costs 100 tiles against 76, all partial either way.
    """
    before, after = _counts(32, 7, (8, 8))
    assert before == (76, 76) and after == (100, 100)
