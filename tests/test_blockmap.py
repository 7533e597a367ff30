"""Block analysis equals the brute-force tile classification of the dense mask."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import maskc
import maskc.ir
from maskc.cli import tile_states

from strategies import dense_kwargs, mask_defs

ONE_D = [
    "causal", "window(5)", "causal & window(before = 9, after = 0)", "window(3, dilation = 2)",
    "window(before = 2, after = 7, dilation = 3)", "global([0, 7]) | window(2)",
    "global(3..9)", "sink(4) | causal & window(before = 6, after = 0)", "prefix(9) | causal",
    "chunk(7)", "causal & chunk(5)", "strided(5) & causal", "fixed(8, 2)", "fixed(5, 3) | causal",
    "same(doc) & causal", "within(doc, causal & window(before = 3, after = 0))",
    "within(doc, window(1) | sink(2))", "heads { 0: causal, 1..3: window(4), _: sink(2) }",
    "blocks(4, window(1) | global([0]) | random(2, seed = 3))",
    "blocks(8, layout([[1, 0, 1], [0, 1, 0], [1, 1, 1]]))", "blocks(3, causal) & window(4)",
    "window(6) - window(2)", "causal | window(before = 0, after = 20)", "~causal & ~sink(3)",
    "same(doc) - causal", "where h == 1 | causal", "all", "none", "~window(3) | sink(1)",
]
WHERE = [
    "where (p - k) % 3 == 0 and k < 20", "where abs(p - k) <= 4 or k == 0",
    "where min(p, k) >= 10 and max(q, k) < 30", "causal & where k * 2 >= p", "where Lk - k <= 5",
]
GRID = [
    "over grid(9, 11) = neighborhood((3, 4))",
    "over grid(y = 9, x = 11) = neighborhood((3, 4), dilation = (2, 2), causal = (false, true), "
    "stride = (1, 2))",
    "over grid(4, 5, 6) = neighborhood((3, 5, 2), causal = (true, false, false), "
    "stride = (1, 2, 2))",
    "over grid(12, 10) = tile(4, 3)", "over grid(12, 10) = neighborhood(5, stride = 5) | tile(6, 5)",
    "over grid(y = 8, x = 8) = neighborhood(3) & where q.y != k.x",
    "over grid(16, 16) = neighborhood(7) & causal", "over grid(30) = neighborhood(7, dilation = 3)",
    "over grid(3, 3, 3) = neighborhood(2, causal = true)",
]
SIZES = [(40, 40, 8, 8), (17, 53, 4, 8), (53, 17, 8, 4), (1, 30, 8, 8), (64, 64, 16, 16),
         (45, 45, 7, 5)]


def brute(m, q_len, kv_len, heads, bq, bk, **inputs):
    d = m.dense(q_len, kv_len, heads, **inputs)
    d = d[None] if d.ndim == 3 else d
    return np.stack([tile_states(x, bq, bk) for x in d])


def docs(kv_len, seed, monotone=True):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 4, kv_len)
    return np.sort(x) if monotone else x


def assert_sound(got, want):
    """Sound analysis: exact where it decides, 'partial' where it cannot."""
    assert ((got == want) | (got == 1)).all()


@pytest.mark.parametrize("body", ONE_D)
@pytest.mark.parametrize("size", SIZES)
def test_exact_for_named_primitives(body, size):
    m = maskc.compile(f"mask m(input doc) = {body}")
    q_len, kv_len, bq, bk = size
    for monotone in (True, False):
        doc = docs(kv_len, q_len, monotone)
        got = m.block_map(q_len, kv_len, 4, bq, bk, doc=doc)
        assert np.array_equal(got.states(), brute(m, q_len, kv_len, 4, bq, bk, doc=doc))
        assert got.stats["unproven"] == 0


@pytest.mark.parametrize("body", WHERE)
@pytest.mark.parametrize("size", SIZES)
def test_sound_for_where(body, size):
    m = maskc.compile(f"mask m = {body}")
    q_len, kv_len, bq, bk = size
    assert_sound(m.block_map(q_len, kv_len, 2, bq, bk).states(),
                 brute(m, q_len, kv_len, 2, bq, bk))


@pytest.mark.parametrize("spec", GRID)
@pytest.mark.parametrize("tiles", [(8, 8), (16, 4), (7, 5), (64, 64)])
def test_exact_for_grids(spec, tiles):
    m = maskc.compile(f"mask m {spec}")
    n = int(np.prod(m.grid))
    got = m.block_map(None, None, 1, *tiles).states()
    want = brute(m, n, n, 1, *tiles)
    if "where" in spec:
        assert_sound(got, want)
    else:
        assert np.array_equal(got, want)


@settings(max_examples=40, deadline=None)
@given(w=st.integers(0, 40), before=st.integers(0, 30), after=st.integers(0, 30),
       d=st.integers(1, 4), s=st.integers(1, 12), n=st.integers(1, 12), g=st.integers(0, 60),
       q_len=st.integers(1, 70), kv_len=st.integers(1, 70), bq=st.sampled_from([1, 3, 8, 16]),
       bk=st.sampled_from([1, 4, 8, 16]), op=st.sampled_from(["|", "&", "-"]))
def test_random_compositions(w, before, after, d, s, n, g, q_len, kv_len, bq, bk, op):
    prims = [f"window({w}, dilation = {d})", f"window(before = {before}, after = {after})",
             "causal", f"strided({s})", f"chunk({n})", f"global([{g}])", f"sink({n})",
             f"fixed({s}, {min(n, s)})", f"prefix({g})", "same(doc)"]
    rng = np.random.default_rng(w * 1000 + s)
    a, b, c = rng.choice(len(prims), 3)
    src = f"mask m(input doc) = ({prims[a]} {op} {prims[b]}) | ~{prims[c]}"
    m = maskc.compile(src)
    doc = docs(kv_len, g)
    got = m.block_map(q_len, kv_len, 1, bq, bk, doc=doc).states()
    assert np.array_equal(got, brute(m, q_len, kv_len, 1, bq, bk, doc=doc)), src


def test_batched_inputs_give_one_table_per_batch_row():
    m = maskc.compile("mask m(input doc) = causal & same(doc)")
    doc = np.stack([np.repeat([0, 1], [10, 22]), np.repeat([0, 1, 2], [3, 3, 26])])
    got = m.block_map(32, heads=1, block_q=4, doc=doc)
    assert got.kv_num_blocks.shape[0] == 2
    assert np.array_equal(got.states(), brute(m, 32, 32, 1, 4, 4, doc=doc))


def test_new_lengths_do_not_recompile(monkeypatch):
    import maskc.api
    m = maskc.compile("mask m = causal & window(before = 100, after = 0) | sink(4)")
    calls = []
    monkeypatch.setattr(maskc.api, "parse", lambda *a: calls.append(a))
    monkeypatch.setattr(maskc.api, "check", lambda *a, **k: calls.append(a))
    for n in (1000, 1500, 4097):
        assert m.block_map(n, block_q=64).q_len == n
    assert calls == []


def test_cost_grows_with_visited_tiles_not_n_squared():
    m = maskc.compile("mask m = causal & window(before = 256, after = 0)")
    big = m.block_map(1 << 20, block_q=128)
    # candidates examined are the visited tiles (3 per row), not the 67M tiles of the square
    assert big.stats["candidates"] <= 3 * big.n_q_tiles
    assert big.stats["tiles"] == big.n_q_tiles ** 2


def test_live_predicate_drops_terms_that_cannot_matter():
    m = maskc.compile("mask m = causal & window(before = 20, after = 0) | sink(4) | global([100])")
    bm = m.block_map(128, block_q=16)
    names = {type(v).__name__ for v in bm.variants}
    # far from the sink columns and global rows, the partial tiles need only the window
    assert any(v == maskc.compile("mask m = window(before = 20, after = 0)").ir.body
               for v in bm.variants), names


def test_document_ids_from_lengths_and_cu_seqlens():
    assert maskc.document_ids([3, 0, 2]).tolist() == [0, 0, 0, 2, 2]
    assert maskc.document_ids(cu_seqlens=[0, 2, 5]).tolist() == [0, 0, 1, 1, 1]
    with pytest.raises(maskc.MaskInputError, match="cu_seqlens must start at 0"):
        maskc.document_ids(cu_seqlens=[1, 3])
    with pytest.raises(maskc.MaskInputError, match="exactly one"):
        maskc.document_ids([2], cu_seqlens=[0, 2])
    with pytest.raises(maskc.MaskInputError, match=">= 0"):
        maskc.document_ids([3, -1])


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data(), mdef=mask_defs(), bq=st.sampled_from([1, 4, 8, 16]),
       bk=st.sampled_from([2, 8, 16]))
def test_random_ir_exact_or_sound(data, mdef, bq, bk):
    """Random IR (every construct): exact without `where`, sound with it."""
    from maskc.backends import reference
    from maskc.analysis.blocktable import build
    kw = data.draw(dense_kwargs(mdef))
    q_len, kv_len, heads = kw.pop("q_len"), kw.pop("kv_len"), kw.pop("heads")
    try:
        want = reference.dense(mdef, q_len, kv_len, heads, **kw)
    except maskc.MaskError:
        with pytest.raises(maskc.MaskError):
            build(mdef, q_len, kv_len, heads, bq, bk, evaluate=reference.evaluate, **kw)
        return
    got = build(mdef, q_len, kv_len, heads, bq, bk, evaluate=reference.evaluate, **kw).states()
    want = want[None] if want.ndim == 3 else want
    want = np.stack([tile_states(x, bq, bk) for x in want])
    if any(isinstance(n, maskc.ir.Where) for n in maskc.ir.walk(mdef.body)):
        assert_sound(got, want)
    else:
        assert np.array_equal(got, want)


def test_live_bits_mark_the_terms_that_matter_per_tile():
    m = maskc.compile("mask m = sink(4) | window(before = 20, after = 0) | global([100])")
    bm = m.block_map(256, block_q=16)
    n = bm.kv_num_blocks[0, 0]
    bits = {}
    for i in range(bm.n_q_tiles):
        for j in range(n[i]):
            bits[(i, int(bm.kv_indices[0, 0, i, j]))] = int(bm.live[0, 0, i, j])
    # far from key tile 0 and from the global row/column only the window is live
    assert bits[(10, 9)] == 0b010
    # the sink's key tile in a query tile beyond the window: only the sink is live
    assert bits[(12, 0)] == 0b001
    # every partial tile has at least one live term, and tiles outside a term's reach drop it
    assert all(b != 0 for b in bits.values())


def test_nested_heads_check_only_the_heads_that_reach_them():
    import torch
    from torch.nn.attention.flex_attention import create_mask
    m = maskc.compile("mask m = heads { 0: heads { 0: causal }, _: all }")
    dense = m.dense(6, heads=2)
    assert np.array_equal(dense[0], np.tril(np.ones((6, 6), bool))) and dense[1].all()
    assert np.array_equal(m.block_map(6, heads=2, block_q=2).states(),
                          brute(m, 6, 6, 2, 2, 2))
    flex = create_mask(m.mask_mod(6, heads=2), None, 2, 6, 6)[0].numpy()
    assert np.array_equal(flex, dense)
    with pytest.raises(maskc.MaskError, match="head 1 is not covered"):
        maskc.compile("mask m = heads { 0..2: heads { 0: causal }, _: all }").dense(4, heads=3)


@pytest.mark.parametrize("bad", [0, -1, 4.0, True])
def test_bad_tile_sizes_are_errors(bad):
    m = maskc.compile("mask m = causal")
    with pytest.raises(maskc.MaskSizeError, match="block_q"):
        m.block_map(16, block_q=bad)


def test_empty_batch_of_inputs_is_an_error():
    m = maskc.compile("mask m(input doc) = same(doc)")
    for call in (lambda: m.dense(4, doc=np.zeros((0, 4), int)),
                 lambda: m.block_map(4, block_q=2, doc=np.zeros((0, 4), int))):
        with pytest.raises(maskc.MaskInputError, match="B >= 1"):
            call()


def test_huge_tiles_are_not_evaluated_element_by_element():
    m = maskc.compile("mask m(input doc) = causal & same(doc)")
    doc = maskc.document_ids([3 << 20, 5 << 20])  # a boundary inside a diagonal tile
    bm = m.block_map(1 << 23, block_q=1 << 21, doc=doc)  # would need 4 TiB if evaluated
    assert bm.stats["unproven"] > 0 and bm.stats["resolved"] == 0


def test_supports_of_nested_grid_terms_stay_small():
    """Fuzz: `&` of supports takes every pairwise intersection, and nested `&`/`|` of grid
    terms made 270,000 intervals for a 16-token grid (10 s of block analysis); supports keep
    at most MAX_PIECES intervals (their hull past that) and the tables stay sound."""
    from maskc.analysis.blockmap import MAX_PIECES, Analysis, support
    src = ("mask m over grid(4, 4, 1) = (tile(4, 1, 6) & neighborhood((4, 2, 1), dilation = "
           "(1, 2, 1), causal = (true, false, false), stride = (1, 2, 1))) - neighborhood((3, 2,"
           " 1), dilation = (1, 2, 1), causal = (false, true, false), stride = (2, 1, 1)) & "
           "((tile(3, 4, 5) | causal | neighborhood((2, 3, 1), dilation = (2, 1, 1), causal = "
           "false, stride = (1, 3, 1))) & heads { 4: tile(3, 1, 4), _: sink(8) } & "
           "tile(4, 5, 5))")
    m = maskc.compile(src)
    p = np.arange(16)
    for head in (0, 4):
        an = Analysis(grid=m.ir.grid, inputs={}, head=head)
        assert 1 <= len(support(m.ir.body, p, p, 16, an)) <= MAX_PIECES
    want = m.dense(heads=6)
    for bq, bk in ((1, 1), (2, 4), (4, 4)):
        st = m.block_map(heads=6, block_q=bq, block_k=bk).states()[0]
        for h, i, j in np.ndindex(*st.shape):
            t = want[h, i * bq:(i + 1) * bq, j * bk:(j + 1) * bk]
            assert not (t.any() and st[h, i, j] == 0) and not (st[h, i, j] == 2 and not t.all())
