"""Tile-shaped blocks over a grid, ``blocks((b1, ..., bd), e)`` (LANGUAGE.md section 8).

A token's tile is the row-major index of its ``b1 x ... x bd`` tile among the grid's tiles
(the last tile of an axis may be cut); ``select(x)`` then lists, per query tile, the key tiles
it keeps (BiFormer's region routing, video sparse attention's top-k 3-D tiles). Dense masks
against a formula written here from that text, tiles against those dense masks, every backend
against the reference, and the checker's errors at their line and column.
"""

import itertools

import numpy as np
import pytest

import maskc
from tests.test_selection import tiles_are_sound


def tile_of(grid, tile):
    """Each token's tile, by the letter: coordinates row-major, tile coordinates c // b,
    tile index row-major over ceil(n / b) tiles per axis."""
    counts = [-(-n // b) for n, b in zip(grid, tile)]
    out = []
    for c in itertools.product(*(range(n) for n in grid)):
        t = 0
        for ci, b, nt in zip(c, tile, counts):
            t = t * nt + ci // b
        out.append(t)
    return np.array(out), int(np.prod(counts))


def brute(grid, tile, idx, H=1):
    t, _ = tile_of(grid, tile)
    idx = np.asarray(idx).reshape((1,) * (3 - np.ndim(idx)) + np.shape(idx))
    n = len(t)
    out = np.zeros((H, n, n), bool)
    for h in range(H):
        rows = idx[min(h, idx.shape[0] - 1)]
        for q in range(n):
            keep = {int(e) for e in rows[t[q]] if e >= 0}
            out[h, q] = [int(t[k]) in keep for k in range(n)]
    return out


def grid_src(grid):
    return "grid(" + ", ".join(map(str, grid)) + ")"


CASES = [((10, 12), (4, 5)), ((6, 7), (3, 3)), ((9,), (4,)), ((3, 4, 5), (2, 2, 3)),
         ((4, 6, 6), (1, 3, 2)), ((5, 5), (5, 5)), ((7, 3), (1, 1))]


@pytest.mark.parametrize("grid, tile", CASES)
@pytest.mark.parametrize("seed", range(3))
def test_dense_and_tiles_match_the_definition(grid, tile, seed):
    """Cut tiles, one-token tiles, a single tile, padding and repeats, per head."""
    rng = np.random.default_rng(seed)
    _, nt = tile_of(grid, tile)
    H = 2
    idx = rng.integers(-1, nt, (H, nt, 3))
    # one axis: blocks(b, e) itself (a token's tile is then its block)
    shape = str(tile[0]) if len(tile) == 1 else "(" + ", ".join(map(str, tile)) + ")"
    m = maskc.compile(f"mask m(input idx) over {grid_src(grid)} = blocks({shape}, select(idx))")
    want = brute(grid, tile, idx, H)
    assert np.array_equal(m.dense(heads=H, idx=idx), want)
    for bq, bk in [(16, 16), (8, 32), (5, 3)]:
        bm = m.block_map(heads=H, block_q=bq, block_k=bk, idx=idx)
        assert np.array_equal(bm.states()[0], exact_states(want, bq, bk))
        assert bm.stats["resolved"] == 0  # classified from tile pairs, nothing evaluated


def exact_states(want, bq, bk):
    """0 empty, 1 partial, 2 full per (head, query tile, key tile) of a dense mask."""
    H, Lq, Lk = want.shape
    nq, nk = -(-Lq // bq), -(-Lk // bk)
    out = np.zeros((H, nq, nk), np.int8)
    for i in range(nq):
        for j in range(nk):
            t = want[:, i * bq:(i + 1) * bq, j * bk:(j + 1) * bk]
            out[:, i, j] = np.where(t.all(axis=(1, 2)), 2, t.any(axis=(1, 2)).astype(np.int8))
    return out


@pytest.mark.parametrize("limits", [dict(MAX_RUNS=0, _CHUNK=1), dict(PAIR_TABLE=0),
                                    dict(MAX_PAIRS=0), dict(MAX_WIDTH=4)])
def test_every_analysis_path_is_exact(monkeypatch, limits):
    """Supports as hulls instead of runs, pairs classified one by one, map tiles left to
    evaluation, ranges too wide to enumerate: the same states, over a composed mask."""
    from maskc.analysis import tileblocks
    for k, v in limits.items():
        monkeypatch.setattr(tileblocks, k, v)
    grid, tile = (8, 9), (4, 3)
    _, nt = tile_of(grid, tile)
    idx = np.random.default_rng(7).integers(-1, nt, (2, nt, 2))
    m = maskc.compile(f"mask m(input idx) over {grid_src(grid)} = "
                      "blocks((4, 3), select(idx) | causal) & where(k < 60)")
    want = m.dense(heads=2, idx=idx)
    t, _ = tile_of(grid, tile)
    assert np.array_equal(want, (brute(grid, tile, idx, 2) | (t[None, :] <= t[:, None])) &
                          (np.arange(72)[None, :] < 60))
    for bq, bk in [(8, 8), (16, 4)]:
        bm = m.block_map(heads=2, block_q=bq, block_k=bk, idx=idx)
        assert np.array_equal(bm.states()[0], exact_states(want, bq, bk))


def test_composition_with_static_grid_structure():
    """BiFormer-style: a neighborhood, or the routed tiles, under a causal order."""
    grid, tile = (8, 9), (4, 3)
    _, nt = tile_of(grid, tile)
    idx = np.random.default_rng(5).integers(-1, nt, (nt, 2))
    m = maskc.compile(f"mask m(input idx) over {grid_src(grid)} = "
                      "causal & (neighborhood(3) | blocks((4, 3), select(idx)))")
    nb = maskc.compile(f"mask n over {grid_src(grid)} = causal & neighborhood(3)").dense()
    want = nb | (brute(grid, tile, idx) & np.tril(np.ones((72, 72), bool)))
    assert np.array_equal(m.dense(idx=idx), want)


def test_a_batched_selection():
    grid, tile = (4, 4), (2, 2)
    idx = np.random.default_rng(1).integers(-1, 4, (3, 1, 4, 2))
    m = maskc.compile("mask m(input idx) over grid(4, 4) = blocks((2, 2), select(idx))")
    got = m.dense(heads=2, idx=idx)
    assert got.shape == (3, 2, 16, 16)
    for b in range(3):
        assert np.array_equal(got[b], brute(grid, tile, idx[b, 0], 2))


@pytest.mark.parametrize("backend, layout", [("triton", "row-major"), ("triton", "tiled"),
                                             ("flex-eager", None)])
def test_kernels_agree_with_the_reference(backend, layout):
    """Forward and (Triton) backward on a 10 x 12 grid of 4 x 5 tiles, with a neighborhood,
    in row-major and tile-major token order."""
    import torch

    from maskc.testing import assert_attention_matches
    m = maskc.compile("mask m(input idx) over grid(y = 10, x = 12) = "
                      "neighborhood(3) | blocks((4, 5), select(idx))")
    idx = np.random.default_rng(2).integers(-1, 9, (2, 9, 2))
    config = None
    if backend == "triton":
        t = maskc.Tiles(16, 16)
        config = maskc.KernelConfig(t, t, t, layout=layout)
    with torch.set_grad_enabled(backend == "triton"):
        assert_attention_matches(
            lambda q, k, v, **xs: m.attention(q, k, v, backend=backend, return_lse=True,
                                              config=config, **xs),
            m, heads=2, head_dim=16, inputs=dict(idx=idx), grad=backend == "triton")


def test_flex_block_mask_is_sound():
    pytest.importorskip("torch")
    m = maskc.compile("mask m(input idx) over grid(6, 10) = blocks((3, 5), select(idx))")
    idx = np.array([[0, -1], [3, 1], [2, 2], [-1, -1]])
    want = brute((6, 10), (3, 5), idx)
    bm = m.flex_block_mask(idx=idx, block_size=16)
    dense = bm.to_dense()[0, 0].numpy().astype(bool)  # tiles visited
    nq, nk = dense.shape
    pad = np.zeros((nq * 16, nk * 16), bool)
    pad[:60, :60] = want[0]
    live = pad.reshape(nq, 16, nk, 16).any(axis=(1, 3))
    assert not (live & ~dense).any()


@pytest.mark.parametrize("spec, message, col", [
    ("mask m(input idx) = blocks((4, 5), select(idx))", "a tuple block size needs a grid", 28),
    ("mask m(input idx) over grid(8, 8) = blocks((4, 4, 4), select(idx))",
     "the tile shape has 3 entries but the grid has 2 axes", 44),
    ("mask m(input idx) over grid(8, 8) = blocks((4, 4), blocks(2, select(idx)))",
     "cannot be nested inside tile-shaped blocks", 52),
    ("mask m over grid(8, 8) = blocks((4, 4), random(2))", "random() is not supported", 41),
    ("mask m over grid(8, 8) = blocks((4, 0), causal)", "must be >= 1, got 0", 33),
])
def test_the_checker_locates_misuse(spec, message, col):
    with pytest.raises(maskc.MaskError, match=message.replace("(", r"\(").replace(")", r"\)")) \
            as err:
        maskc.compile(spec)
    assert (err.value.line, err.value.column) == (1, col)


@pytest.mark.parametrize("idx, message", [
    (np.zeros((5, 2), int), r"shape \(4, r\)"),     # 4 tiles of 2 x 2 on a 4 x 4 grid, not 5
    (np.array([[0], [1], [2], [4]]), "entry"),  # 4 is not a tile
    (np.zeros((4, 2)), "integer"),
])
def test_bad_tile_selections_are_mask_input_errors(idx, message):
    m = maskc.compile("mask m(input idx) over grid(4, 4) = blocks((2, 2), select(idx))")
    with pytest.raises(maskc.MaskInputError, match=message):
        m.dense(idx=idx)


def test_pretty_round_trips():
    src = "mask m(input idx) over grid(t = 4, y = 6, x = 6) = blocks((2, 3, 3), select(idx))"
    m = maskc.compile(src)
    assert maskc.compile(m.pretty()).pretty() == m.pretty()
    assert "blocks((2, 3, 3), select(idx))" in m.pretty()


def test_the_examples_routing_recipes_pick_the_best_tiles():
    """examples/biformer.mask and examples/video_tiles.mask: region-pooled scores through
    maskc.topk_blocks(scores=...) give the routed tiles, and the mask keeps exactly them."""
    import torch
    g = torch.Generator().manual_seed(0)
    B, H, D, S = 1, 2, 8, 2
    q, k = (torch.randn(B, H, (S * 8) ** 2, D, generator=g) for _ in range(2))
    qr = q.unflatten(2, (S, 8, S, 8)).mean((3, 5)).flatten(2, 3)      # as in the comment
    kr = k.unflatten(2, (S, 8, S, 8)).mean((3, 5)).flatten(2, 3)
    scores = qr @ kr.transpose(-1, -2)
    idx = maskc.topk_blocks(scores=scores, r=2)
    assert tuple(idx.shape) == (B, H, S * S, 2)
    # pooling by the letter: region (i, j) holds tokens (y, x) with y // 8 == i, x // 8 == j
    t, _ = tile_of((S * 8, S * 8), (8, 8))
    pooled = torch.stack([q[:, :, torch.as_tensor(t == r)].mean(2) for r in range(S * S)], 2)
    torch.testing.assert_close(pooled, qr)
    best = scores.topk(2, dim=-1).indices.sort(-1).values
    assert torch.equal(idx.sort(-1).values, best)
    m = maskc.compile("examples/biformer.mask", height=S * 8, width=S * 8)
    assert np.array_equal(m.dense(heads=H, idx=idx.numpy()[0]),
                          brute((S * 8, S * 8), (8, 8), idx.numpy()[0], H))
    T, Y, X = 4, 8, 4
    qv, kv = (torch.randn(B, H, T * Y * X, D, generator=g) for _ in range(2))
    qc = qv.unflatten(2, (T // 4, 4, Y // 4, 4, X // 4, 4)).mean((3, 5, 7)).flatten(2, 4)
    kc = kv.unflatten(2, (T // 4, 4, Y // 4, 4, X // 4, 4)).mean((3, 5, 7)).flatten(2, 4)
    t, nt = tile_of((T, Y, X), (4, 4, 4))
    torch.testing.assert_close(
        qc, torch.stack([qv[:, :, torch.as_tensor(t == c)].mean(2) for c in range(nt)], 2))
    idx = maskc.topk_blocks(scores=qc @ kc.transpose(-1, -2), r=1)
    m = maskc.compile("examples/video_tiles.mask", name="video_tiles", frames=T, height=Y,
                      width=X)
    assert np.array_equal(m.dense(heads=H, idx=idx.numpy()[0]),
                          brute((T, Y, X), (4, 4, 4), idx.numpy()[0], H))


@pytest.mark.parametrize("body", ["blocks((4, 3), select(idx))",
                                  "blocks((4, 3), select(idx)) | neighborhood(3)",
                                  "blocks((4, 3), select(idx) & causal) & ~tile(2, 9)"])
@pytest.mark.parametrize("layout_tile, bq, bk", [((4, 3), 12, 12), ((4, 6), 24, 12),
                                                 ((2, 3), 8, 16), ((3, 4), 12, 12)])
def test_tiled_layout_tiles_are_exact(body, layout_tile, bq, bk):
    """Under a tile-major token order (aligned with the routed tiles or not), every tile of
    the permuted block map equals the permuted dense mask's, per head."""
    from maskc.backends import reference
    from maskc.cli import tile_states
    from maskc.passes.layout import make_layout, permuted_dense
    from maskc.passes.layoutmap import permuted_block_map
    grid = (8, 9)
    _, nt = tile_of(grid, (4, 3))
    idx = np.random.default_rng(3).integers(-1, nt, (2, nt, 2))
    m = maskc.compile(f"mask m(input idx) over {grid_src(grid)} = {body}")
    layout = make_layout(grid, layout_tile)
    got = permuted_block_map(m.ir, layout, bq, 2, reference.evaluate, block_k=bk, idx=idx)
    want = permuted_dense(m.dense(heads=2, idx=idx), layout)
    for h in range(2):
        assert np.array_equal(got.states()[0, h], tile_states(want[h:h + 1], bq, bk)[0])
    if layout_tile == (4, 3) and "neighborhood" not in body:  # one routed tile per tile
        assert got.stats["resolved"] == 0


def test_kernels_run_routed_tiles_in_tile_order():
    """The Triton plan of a routed-tile mask takes the tile-major order shaped like the
    routed tiles: every visited tile is then full (VSA's block-sparse kernel)."""
    src = open("examples/video_tiles.mask").read()
    m = maskc.compile(src, name="video_tiles", frames=8, height=8, width=16)
    idx = np.stack([np.random.default_rng(i).permutation(16)[:3] for i in range(16)])
    plan = m.plan(target="triton", device="cpu", dtype="float32",
                  config=maskc.KernelConfig.uniform(64, 64), idx=idx)
    assert plan.layout is not None and plan.layout.tile_shape == (4, 4, 4)
    bm = plan.block_map("fwd")
    assert bm.stats["partial"] == 0 and bm.stats["full"] == 16 * 3


def test_one_selection_for_all_heads_is_analysed_once():
    """A selection with one row for every head (Hx = 1) gives every head one table (the
    fuzz found `maskc show video_tiles.mask --heads 64` analysing 64 equal heads: 10 s)."""
    grid, tile = (8, 9), (4, 3)
    _, nt = tile_of(grid, tile)
    idx = np.random.default_rng(9).integers(-1, nt, (nt, 2))
    m = maskc.compile(f"mask m(input idx) over {grid_src(grid)} = blocks((4, 3), select(idx))")
    bm = m.block_map(heads=8, block_q=8, idx=idx)
    assert bm.head_group.tolist() == [0] * 8
    assert np.array_equal(bm.states()[0, 5], exact_states(brute(grid, tile, idx), 8, 8)[0])
    per_head = m.block_map(heads=2, block_q=8, idx=np.stack([idx, idx[::-1]]))
    assert per_head.head_group.tolist() == [0, 1]
