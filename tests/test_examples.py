"""Every example in examples/ compiles, and its dense mask matches an independent
reference written here from the papers and LANGUAGE.md (sections 2 and 6).

The references use plain numpy index arithmetic or Python loops, never maskc.
1-D masks are checked with q_len != kv_len (bottom-right alignment: primitives
see p = q + (kv_len - q_len)) and with lengths that are not multiples of the
block/chunk sizes.
"""

from __future__ import annotations

import math
import pathlib
import re

import numpy as np
import pytest

import maskc

EXAMPLES = pathlib.Path(__file__).parent.parent / "examples"

# (q_len, kv_len) pairs for the 1-D masks: square, prefill-with-cache (q < kv),
# a single decoding step, and more queries than keys (p < 0 for the first rows).
SIZES = [(96, 96), (100, 100), (37, 150), (1, 77), (150, 61)]
# The same without q_len > kv_len, for masks indexed by a runtime input at p.
SIZES_NO_NEG = [(96, 96), (100, 100), (37, 150), (1, 77), (130, 131)]


def mask_names(path: pathlib.Path) -> list[str]:
    return re.findall(r"^mask\s+(\w+)", path.read_text(), flags=re.MULTILINE)


def dense(file: str, name: str, q_len=None, kv_len=None, heads=1, inputs=None, **params):
    """Compile `name` from examples/`file` with `params` and return its dense mask."""
    m = maskc.compile(EXAMPLES / file, name=name, **params)
    d = m.dense(q_len=q_len, kv_len=kv_len, heads=heads, **(inputs or {}))
    d = np.asarray(d)
    assert d.dtype == np.bool_, d.dtype
    if q_len is not None:
        assert d.shape == (heads, q_len, kv_len if kv_len is not None else q_len), d.shape
    else:
        assert d.shape[0] == heads and d.shape[1] == d.shape[2], d.shape
    return d


def positions(q_len: int, kv_len: int):
    """Aligned query positions p (column vector) and key positions k (row vector)."""
    q = np.arange(q_len)[:, None]
    k = np.arange(kv_len)[None, :]
    return q + (kv_len - q_len), k


def assert_same(got: np.ndarray, want: np.ndarray, what: str = ""):
    want = np.broadcast_to(want, got.shape)
    if not np.array_equal(got, want):
        diff = np.argwhere(got != want)
        h, q, k = diff[0]
        raise AssertionError(
            f"{what}: {len(diff)} entries differ; first at head={h} q={q} k={k}: "
            f"got {bool(got[h, q, k])}, want {bool(want[h, q, k])}"
        )


# --------------------------------------------------------------------------------------
# Inventory: every file compiles, every mask in it compiles
# --------------------------------------------------------------------------------------

EXPECTED = {
    "longformer.mask": {"longformer", "longformer_dilated", "longformer_mixed"},
    "bigbird.mask": {"bigbird", "bigbird_fixed"},
    "sparse_strided.mask": {"sparse_strided", "sparse_strided_split"},
    "sparse_fixed.mask": {"sparse_fixed"},
    "mistral.mask": {"mistral"},
    "streamingllm.mask": {"streamingllm"},
    "prefix_lm.mask": {"prefix_lm"},
    "packed_documents.mask": {"packed_documents", "packed_sliding_window"},
    "llama4_chunked.mask": {"llama4_chunked"},
    "natten.mask": {"natten2d", "dinat2d", "natten3d"},
    "gna.mask": {"gna_strided", "gna_blocked"},
    "moa.mask": {"moa", "moa_multi", "duoattention"},
    "biformer.mask": {"biformer"},
    "video_tiles.mask": {"video_tiles", "video_tiles_local"},
}

ALL_MASKS = [
    (path.name, name)
    for path in sorted(EXAMPLES.glob("*.mask"))
    for name in mask_names(path)
]


def test_inventory():
    files = {p.name for p in EXAMPLES.glob("*.mask")}
    for file, names in EXPECTED.items():
        assert file in files, f"examples/{file} is missing"
        assert names <= set(mask_names(EXAMPLES / file)), (file, mask_names(EXAMPLES / file))


def test_every_example_starts_with_a_comment():
    for path in sorted(EXAMPLES.glob("*.mask")):
        assert path.read_text().startswith("#"), path.name


@pytest.mark.parametrize("file,name", ALL_MASKS, ids=[f"{f}:{n}" for f, n in ALL_MASKS])
def test_every_mask_compiles(file, name):
    m = maskc.compile(EXAMPLES / file, name=name)
    assert isinstance(m, maskc.Mask)


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.mask")), ids=lambda p: p.name)
def test_file_compiles_from_str_path(path):
    # A str naming an existing .mask file is read as a file.
    for name in mask_names(path):
        maskc.compile(str(path), name=name)
    if len(mask_names(path)) == 1:
        maskc.compile(path)  # one mask in the file: no name needed


# --------------------------------------------------------------------------------------
# Longformer
# --------------------------------------------------------------------------------------

def longformer_ref(q_len, kv_len, w, g, d=1):
    p, k = positions(q_len, kv_len)
    diff = p - k
    win = (np.abs(diff) <= w * d) & (diff % d == 0)
    glob = np.isin(p, list(g)) | np.isin(k, list(g))
    return win | glob


@pytest.mark.parametrize("q_len,kv_len", SIZES)
@pytest.mark.parametrize("w,g", [(17, [0]), (5, [0, 1, 40]), (0, [3])])
def test_longformer(q_len, kv_len, w, g):
    got = dense("longformer.mask", "longformer", q_len, kv_len, w=w, g=g)
    assert_same(got, longformer_ref(q_len, kv_len, w, g), "longformer")


def test_longformer_range_globals():
    got = dense("longformer.mask", "longformer", 80, 120, w=6, g=range(0, 4))
    assert_same(got, longformer_ref(80, 120, 6, range(0, 4)), "longformer g=0..4")


@pytest.mark.parametrize("q_len,kv_len", SIZES)
@pytest.mark.parametrize("w,d", [(8, 2), (5, 3)])
def test_longformer_dilated(q_len, kv_len, w, d):
    got = dense("longformer.mask", "longformer_dilated", q_len, kv_len, w=w, d=d, g=[0, 7])
    assert_same(got, longformer_ref(q_len, kv_len, w, [0, 7], d), "longformer_dilated")


@pytest.mark.parametrize("q_len,kv_len", [(100, 100), (37, 150)])
def test_longformer_mixed_heads(q_len, kv_len):
    H, dh, w, d = 5, 2, 6, 3
    got = dense("longformer.mask", "longformer_mixed", q_len, kv_len, heads=H,
                w=w, d=d, dh=dh, g=[0])
    want = np.stack([
        longformer_ref(q_len, kv_len, w, [0], d if h < dh else 1) for h in range(H)
    ])
    assert_same(got, want, "longformer_mixed")


def test_longformer_default_params():
    # w = 256 covers the whole of a 200-token sequence: everything is kept.
    got = dense("longformer.mask", "longformer", 200, 200)
    assert got.all()


# --------------------------------------------------------------------------------------
# BigBird (ITC)
# --------------------------------------------------------------------------------------

def bigbird_fixed_ref(q_len, kv_len, b, w, g):
    p, k = positions(q_len, kv_len)
    qb, kb = p // b, k // b
    return (np.abs(qb - kb) <= w) | np.isin(qb, g) | np.isin(kb, g)


def key_block_sets(mask2d: np.ndarray, q_len: int, kv_len: int, b: int):
    """For each query block (p // b), the set of key blocks it keeps.

    Checks that the mask is constant on every (query block, key block) tile: a key
    block is kept whole or not at all, and all queries of a block keep the same set.
    """
    p, _ = positions(q_len, kv_len)
    p = p[:, 0]
    kb_of = np.arange(kv_len) // b
    nkb = -(-kv_len // b)
    rows: dict[int, frozenset] = {}
    for i in range(q_len):
        kept = set()
        for j in range(nkb):
            vals = mask2d[i, kb_of == j]
            assert vals.all() or not vals.any(), f"query {i}: key block {j} kept in part"
            if vals.all():
                kept.add(j)
        qb = int(p[i] // b)
        s = frozenset(kept)
        assert rows.setdefault(qb, s) == s, f"queries of block {qb} keep different key blocks"
    return rows


BIGBIRD_SIZES = [(640, 640), (600, 600), (300, 300), (200, 600), (64, 330)]


@pytest.mark.parametrize("q_len,kv_len", BIGBIRD_SIZES)
def test_bigbird_fixed_part_exact(q_len, kv_len):
    got = dense("bigbird.mask", "bigbird_fixed", q_len, kv_len)
    assert_same(got, bigbird_fixed_ref(q_len, kv_len, 64, 1, [0]), "bigbird_fixed")


@pytest.mark.parametrize("b,w,g,q_len,kv_len", [(16, 2, [0, 3], 150, 150), (10, 0, [1], 47, 95)])
def test_bigbird_fixed_part_params(b, w, g, q_len, kv_len):
    got = dense("bigbird.mask", "bigbird_fixed", q_len, kv_len, b=b, w=w, g=g)
    assert_same(got, bigbird_fixed_ref(q_len, kv_len, b, w, g), "bigbird_fixed")


@pytest.mark.parametrize("q_len,kv_len", BIGBIRD_SIZES)
def test_bigbird(q_len, kv_len):
    b, r = 64, 3
    got = dense("bigbird.mask", "bigbird", q_len, kv_len)[0]
    fixed = bigbird_fixed_ref(q_len, kv_len, b, 1, [0])
    # The window and global parts are all kept.
    assert not (fixed & ~got).any(), "bigbird drops part of its window/global pattern"
    # Random adds whole blocks: at most r extra key blocks per query block.
    got_sets = key_block_sets(got, q_len, kv_len, b)
    fixed_sets = key_block_sets(fixed, q_len, kv_len, b)
    for qb, s in got_sets.items():
        assert fixed_sets[qb] <= s
        assert len(s - fixed_sets[qb]) <= r, (qb, sorted(s), sorted(fixed_sets[qb]))
    # The random choice depends only on (seed, query block, number of key blocks), so
    # BigBird is exactly the fixed part OR the random part compiled on its own.
    rand = maskc.compile("mask m = blocks(64, random(3, seed = 7))").dense(q_len, kv_len)[0]
    assert np.array_equal(got, fixed | rand), "bigbird != fixed | random(3, seed = 7)"


@pytest.mark.parametrize("q_len,kv_len", [(640, 640), (600, 600), (200, 600), (250, 250)])
def test_bigbird_random_blocks(q_len, kv_len):
    src = "mask m = blocks(64, random(3, seed = 7))"
    a = maskc.compile(src).dense(q_len, kv_len)
    b = maskc.compile(src).dense(q_len, kv_len)
    assert a.shape == (1, q_len, kv_len)
    assert np.array_equal(a, b), "random blocks are not deterministic across compiles"
    sets = key_block_sets(a[0], q_len, kv_len, 64)
    for qb, s in sets.items():
        assert len(s) == 3, (qb, sorted(s))
    other = maskc.compile("mask m = blocks(64, random(3, seed = 8))").dense(q_len, kv_len)
    assert not np.array_equal(a, other), "seed 7 and seed 8 give the same random blocks"


def test_bigbird_random_too_many_blocks_is_an_error():
    with pytest.raises(maskc.MaskError):
        maskc.compile("mask m = blocks(64, random(3, seed = 7))").dense(128, 128)


# --------------------------------------------------------------------------------------
# Sparse Transformer
# --------------------------------------------------------------------------------------

def sparse_strided_ref(q_len, kv_len, s, part="both"):
    """Child et al. 2019, strided: A(1) = the previous s positions, A(2) = every s-th."""
    out = np.zeros((q_len, kv_len), dtype=bool)
    for i in range(q_len):
        pi = i + kv_len - q_len
        for j in range(kv_len):
            if j > pi:
                continue
            a1 = pi - j < s
            a2 = (pi - j) % s == 0
            out[i, j] = {"both": a1 or a2, "local": a1, "strided": a2}[part]
    return out


@pytest.mark.parametrize("q_len,kv_len", SIZES)
@pytest.mark.parametrize("s", [8, 11])
def test_sparse_strided(q_len, kv_len, s):
    got = dense("sparse_strided.mask", "sparse_strided", q_len, kv_len, s=s)
    assert_same(got, sparse_strided_ref(q_len, kv_len, s), "sparse_strided")


@pytest.mark.parametrize("q_len,kv_len", [(100, 100), (37, 150)])
@pytest.mark.parametrize("H,local_heads", [(6, 4), (3, 1)])
def test_sparse_strided_split(q_len, kv_len, H, local_heads):
    s = 9
    got = dense("sparse_strided.mask", "sparse_strided_split", q_len, kv_len, heads=H,
                s=s, local_heads=local_heads)
    want = np.stack([
        sparse_strided_ref(q_len, kv_len, s, "local" if h < local_heads else "strided")
        for h in range(H)
    ])
    assert_same(got, want, "sparse_strided_split")


def sparse_fixed_ref(q_len, kv_len, l, c):
    """Child et al. 2019, fixed: A(1) = own chunk, A(2) = the last c columns of every chunk."""
    summary = {j for j in range(kv_len) if j % l in range(l - c, l)}
    out = np.zeros((q_len, kv_len), dtype=bool)
    for i in range(q_len):
        pi = i + kv_len - q_len
        for j in range(kv_len):
            if j <= pi and (math.floor(j / l) == math.floor(pi / l) or j in summary):
                out[i, j] = True
    return out


@pytest.mark.parametrize("q_len,kv_len", SIZES)
@pytest.mark.parametrize("s,c", [(16, 4), (10, 3), (7, 1)])
def test_sparse_fixed(q_len, kv_len, s, c):
    got = dense("sparse_fixed.mask", "sparse_fixed", q_len, kv_len, s=s, c=c)
    assert_same(got, sparse_fixed_ref(q_len, kv_len, s, c), "sparse_fixed")


# --------------------------------------------------------------------------------------
# Sliding windows: Mistral, StreamingLLM; Prefix-LM; Llama 4 chunked
# --------------------------------------------------------------------------------------

def causal_ref(q_len, kv_len):
    p, k = positions(q_len, kv_len)
    return k <= p


def swa_ref(q_len, kv_len, w):
    p, k = positions(q_len, kv_len)
    return (k <= p) & (p - k <= w)


@pytest.mark.parametrize("q_len,kv_len", SIZES)
@pytest.mark.parametrize("w", [17, 1, 0])
def test_mistral(q_len, kv_len, w):
    got = dense("mistral.mask", "mistral", q_len, kv_len, heads=2, w=w)
    assert_same(got, swa_ref(q_len, kv_len, w), "mistral")


def test_mistral_default_window():
    # W = 4096: with 200 tokens the window covers everything, i.e. plain causal.
    assert_same(dense("mistral.mask", "mistral", 200, 200), causal_ref(200, 200), "mistral")
    # ...and with 5000 tokens the oldest keys fall out of the window (checked on the
    # last 3 queries only, to keep the dense mask small).
    got = dense("mistral.mask", "mistral", 3, 5000)
    assert_same(got, swa_ref(3, 5000, 4095), "mistral w=4095")
    assert got[0, -1].sum() == 4096


def streamingllm_ref(q_len, kv_len, w, n):
    out = np.zeros((q_len, kv_len), dtype=bool)
    for i in range(q_len):
        pi = i + kv_len - q_len
        for j in range(max(pi + 1, 0)):
            if j < kv_len and (pi - j <= w or j < n):
                out[i, j] = True
    return out


@pytest.mark.parametrize("q_len,kv_len", SIZES)
@pytest.mark.parametrize("w,n", [(13, 4), (20, 1), (5, 30)])
def test_streamingllm(q_len, kv_len, w, n):
    got = dense("streamingllm.mask", "streamingllm", q_len, kv_len, w=w, n=n)
    assert_same(got, streamingllm_ref(q_len, kv_len, w, n), "streamingllm")


def test_streamingllm_default():
    # 4 sinks + 1021 recent tokens (query included) for the last query of 2000 tokens.
    got = dense("streamingllm.mask", "streamingllm", 2, 2000)
    assert_same(got, streamingllm_ref(2, 2000, 1020, 4), "streamingllm default")
    assert got[0, -1].sum() == 4 + 1021


def prefix_lm_ref(q_len, kv_len, n):
    p, k = positions(q_len, kv_len)
    return (k <= p) | ((p < n) & (k < n))


@pytest.mark.parametrize("q_len,kv_len", SIZES)
@pytest.mark.parametrize("n", [20, 1, 0, 130])
def test_prefix_lm(q_len, kv_len, n):
    got = dense("prefix_lm.mask", "prefix_lm", q_len, kv_len, n=n)
    assert_same(got, prefix_lm_ref(q_len, kv_len, n), "prefix_lm")


def test_prefix_lm_default():
    got = dense("prefix_lm.mask", "prefix_lm", 600, 600)
    assert_same(got, prefix_lm_ref(600, 600, 512), "prefix_lm default")
    assert got[0, 0].sum() == 512  # the first prefix token sees the whole prefix


def chunked_ref(q_len, kv_len, n):
    out = np.zeros((q_len, kv_len), dtype=bool)
    for i in range(q_len):
        pi = i + kv_len - q_len
        start = (pi // n) * n  # floor, also for p < 0
        for j in range(max(start, 0), min(pi + 1, kv_len)):
            out[i, j] = True
    return out


@pytest.mark.parametrize("q_len,kv_len", SIZES)
@pytest.mark.parametrize("n", [32, 7, 1])
def test_llama4_chunked(q_len, kv_len, n):
    got = dense("llama4_chunked.mask", "llama4_chunked", q_len, kv_len, n=n)
    assert_same(got, chunked_ref(q_len, kv_len, n), "llama4_chunked")


def test_llama4_chunked_default():
    assert_same(dense("llama4_chunked.mask", "llama4_chunked", 300, 300),
                causal_ref(300, 300), "llama4_chunked n=8192")


# --------------------------------------------------------------------------------------
# Packed documents
# --------------------------------------------------------------------------------------

def make_docs(kv_len: int, seed: int) -> np.ndarray:
    """Random document ids: contiguous runs of random lengths (some of length 1), with
    arbitrary (non-sorted, non-contiguous) id values."""
    rng = np.random.default_rng(seed)
    lengths = []
    while sum(lengths) < kv_len:
        lengths.append(int(rng.choice([1, 3, 9, 17, 30, 45])))
    lengths[-1] -= sum(lengths) - kv_len
    lengths = [x for x in lengths if x > 0]
    ids = rng.permutation(len(lengths)) * 7 + 3
    return np.repeat(ids, lengths).astype(np.int64)


def packed_ref(q_len, kv_len, doc, w=None):
    # Segment starts/ends from the runs of `doc`.
    starts = [0] + [i for i in range(1, kv_len) if doc[i] != doc[i - 1]]
    ends = starts[1:] + [kv_len]
    out = np.zeros((q_len, kv_len), dtype=bool)
    for i in range(q_len):
        pi = i + kv_len - q_len
        s0 = next(s for s, e in zip(starts, ends) if s <= pi < e)
        for j in range(s0, pi + 1):
            if w is None or pi - j <= w:
                out[i, j] = True
    return out


@pytest.mark.parametrize("q_len,kv_len", SIZES_NO_NEG)
@pytest.mark.parametrize("seed", [0, 1])
def test_packed_documents(q_len, kv_len, seed):
    doc = make_docs(kv_len, seed)
    got = dense("packed_documents.mask", "packed_documents", q_len, kv_len, inputs={"doc": doc})
    assert_same(got, packed_ref(q_len, kv_len, doc), "packed_documents")


def test_packed_documents_single_document_is_causal():
    doc = np.zeros(90, dtype=np.int64)
    got = dense("packed_documents.mask", "packed_documents", 90, 90, inputs={"doc": doc})
    assert_same(got, causal_ref(90, 90), "one document")


@pytest.mark.parametrize("q_len,kv_len", SIZES_NO_NEG)
@pytest.mark.parametrize("w", [10, 0])
def test_packed_sliding_window(q_len, kv_len, w):
    doc = make_docs(kv_len, 5)
    got = dense("packed_documents.mask", "packed_sliding_window", q_len, kv_len,
                inputs={"doc": doc}, w=w)
    assert_same(got, packed_ref(q_len, kv_len, doc, w), "packed_sliding_window")


def test_packed_sliding_window_default():
    doc = np.repeat([4, 1, 9], [300, 120, 180])
    got = dense("packed_documents.mask", "packed_sliding_window", 600, 600, inputs={"doc": doc})
    assert_same(got, packed_ref(600, 600, doc, 255), "packed_sliding_window w=255")


def test_packed_documents_missing_input_is_an_error():
    m = maskc.compile(EXAMPLES / "packed_documents.mask", name="packed_documents")
    with pytest.raises(maskc.MaskError):
        m.dense(16, 16)


# --------------------------------------------------------------------------------------
# NATTEN / GNA (N-D)
# --------------------------------------------------------------------------------------

def na_axis_keep(q: int, k: int, n: int, K: int, d: int, s: int, causal: bool) -> bool:
    """One axis of NATTEN's Generalized Neighborhood Attention (LANGUAGE.md section 2)."""
    if k % d != q % d:  # different dilation groups
        return False
    qg, kg = q // d, k // d
    ng = math.ceil((n - q % d) / d)
    if causal:
        leader = min((qg // s) * s + s - 1, ng - 1)
        return kg <= qg and leader - kg < K
    left = K // 2
    right = K // 2 + K % 2 - 1
    leader = min((qg // s) * s + s // 2, ng - 1)
    center = min(max(leader, left), ng - 1 - right)
    return center - left <= kg <= center + right


def per_axis(v, ndim):
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * ndim


def natten_ref(shape, kernel, dilation=1, stride=1, causal=False):
    """Dense (N, N) neighborhood mask on a row-major grid, N = prod(shape)."""
    nd = len(shape)
    kernel, dilation = per_axis(kernel, nd), per_axis(dilation, nd)
    stride, causal = per_axis(stride, nd), per_axis(causal, nd)
    # Per-axis keep tables from the per-element rule; an N-D pair is kept when every
    # axis keeps.
    tables = []
    for a, n in enumerate(shape):
        t = np.zeros((n, n), dtype=bool)
        for q in range(n):
            for k in range(n):
                t[q, k] = na_axis_keep(q, k, n, kernel[a], dilation[a], stride[a], causal[a])
        tables.append(t)
    N = math.prod(shape)
    coords = np.unravel_index(np.arange(N), shape)
    out = np.ones((N, N), dtype=bool)
    for a, t in enumerate(tables):
        out &= t[coords[a][:, None], coords[a][None, :]]
    return out


def tile_ref(shape, tiles):
    N = math.prod(shape)
    coords = np.unravel_index(np.arange(N), shape)
    out = np.ones((N, N), dtype=bool)
    for a, t in enumerate(tiles):
        out &= (coords[a][:, None] // t) == (coords[a][None, :] // t)
    return out


def test_na_reference_small_cases():
    # Sanity of the reference itself on one axis (NATTEN's documented behaviour):
    # n = 10, K = 3: query 0 sees 0..2 (shifted), query 5 sees 4..6, query 9 sees 7..9.
    row = lambda q: [k for k in range(10) if na_axis_keep(q, k, 10, 3, 1, 1, False)]
    assert row(0) == [0, 1, 2] and row(5) == [4, 5, 6] and row(9) == [7, 8, 9]
    # causal: query 5 sees 3..5, query 1 sees 0..1
    crow = lambda q: [k for k in range(10) if na_axis_keep(q, k, 10, 3, 1, 1, True)]
    assert crow(5) == [3, 4, 5] and crow(1) == [0, 1]
    # dilation 2: query 4 (group 0) sees 2, 4, 6
    drow = [k for k in range(10) if na_axis_keep(4, k, 10, 3, 2, 1, False)]
    assert drow == [2, 4, 6]


@pytest.mark.parametrize("params,shape,kernel,dil", [
    ({}, (32, 32), 7, 1),
    (dict(height=12, width=17, kernel=5, d=2), (12, 17), 5, 2),
    (dict(height=9, width=10, kernel=4), (9, 10), 4, 1),       # even kernel
    (dict(height=10, width=11, kernel=3, d=3), (10, 11), 3, 3),
])
def test_natten2d(params, shape, kernel, dil):
    got = dense("natten.mask", "natten2d", **params)
    assert got.shape == (1, math.prod(shape), math.prod(shape))
    assert_same(got, natten_ref(shape, kernel, dil), f"natten2d {params}")
    # NATTEN property: no stride, not causal -> every query sees exactly prod(K) keys.
    assert (got[0].sum(axis=1) == kernel * kernel).all()


def test_natten2d_explicit_lengths():
    m = maskc.compile(EXAMPLES / "natten.mask", name="natten2d", height=8, width=9, kernel=3)
    got = np.asarray(m.dense(72, 72, heads=2))
    assert got.shape == (2, 72, 72)
    assert_same(got, natten_ref((8, 9), 3), "natten2d 8x9 with lengths")


@pytest.mark.parametrize("params,shape,kernel,dil", [
    ({}, (32, 32), 7, 2),
    (dict(height=15, width=14, kernel=3, d=4), (15, 14), 3, 4),
])
def test_dinat2d(params, shape, kernel, dil):
    got = dense("natten.mask", "dinat2d", **params)
    assert_same(got, natten_ref(shape, kernel, dil), f"dinat2d {params}")
    assert (got[0].sum(axis=1) == kernel * kernel).all()


def test_natten3d_default():
    got = dense("natten.mask", "natten3d")
    assert got.shape == (1, 4 * 16 * 16, 4 * 16 * 16)
    assert_same(got, natten_ref((4, 16, 16), (3, 7, 7), causal=(True, False, False)),
                "natten3d")
    # causal in time: the first frame sees only itself (49 keys), later frames
    # up to 3 frames back (frame 1: 2 frames).
    counts = got[0].sum(axis=1).reshape(4, 16, 16)
    assert (counts[0] == 49).all() and (counts[1] == 98).all() and (counts[2:] == 147).all()


def test_natten3d_not_causal():
    got = dense("natten.mask", "natten3d", causal_time=False)
    assert_same(got, natten_ref((4, 16, 16), (3, 7, 7)), "natten3d non-causal")
    assert (got[0].sum(axis=1) == 3 * 7 * 7).all()


def test_natten3d_small_override():
    params = dict(frames=5, height=6, width=5, kernel=(2, 5, 3))
    got = dense("natten.mask", "natten3d", **params)
    assert_same(got, natten_ref((5, 6, 5), (2, 5, 3), causal=(True, False, False)),
                "natten3d small")


@pytest.mark.parametrize("params,shape,kernel,stride", [
    ({}, (32, 32), 16, 8),
    (dict(height=30, width=20, kernel=8, s=4), (30, 20), 8, 4),   # grid not a multiple
    (dict(height=17, width=23, kernel=7, s=3), (17, 23), 7, 3),   # stride not dividing K
    (dict(height=12, width=12, kernel=5, s=1), (12, 12), 5, 1),   # plain NA
])
def test_gna_strided(params, shape, kernel, stride):
    got = dense("gna.mask", "gna_strided", **params)
    assert_same(got, natten_ref(shape, kernel, stride=stride), f"gna_strided {params}")
    # Non-causal windows always hold K keys per axis, whatever the stride.
    assert (got[0].sum(axis=1) == kernel * kernel).all()
    # All queries of a stride group (same y // s and x // s) share one neighborhood.
    ys, xs = np.unravel_index(np.arange(math.prod(shape)), shape)
    group = (ys // stride) * 10_000 + xs // stride
    for gid in np.unique(group):
        rows = got[0][group == gid]
        assert (rows == rows[0]).all(), f"stride group {gid} differs"


@pytest.mark.parametrize("params,shape,b", [
    ({}, (32, 32), 8),
    (dict(height=30, width=20, b=8), (30, 20), 8),   # partial tiles at the borders
    (dict(height=9, width=14, b=5), (9, 14), 5),
])
def test_gna_blocked(params, shape, b):
    got = dense("gna.mask", "gna_blocked", **params)
    assert_same(got, tile_ref(shape, (b, b)), f"gna_blocked {params}")


def test_gna_stride_equal_kernel_is_blocked():
    # GNA: stride == kernel (dividing the grid) is blocked attention.
    strided = dense("gna.mask", "gna_strided", kernel=8, s=8)
    blocked = dense("gna.mask", "gna_blocked", b=8)
    assert np.array_equal(strided, blocked)


# --------------------------------------------------------------------------------------
# Per-head: MoA, DuoAttention
# --------------------------------------------------------------------------------------

def streaming_ref(q_len, kv_len, w, n):
    p, k = positions(q_len, kv_len)
    return (k <= p) & ((p - k <= w) | (k < n))


@pytest.mark.parametrize("q_len,kv_len", [(100, 100), (37, 150), (150, 61)])
@pytest.mark.parametrize("H", [8, 6, 3, 1])
def test_moa(q_len, kv_len, H):
    w = 9
    got = dense("moa.mask", "moa", q_len, kv_len, heads=H, w=w)
    want = np.stack([
        swa_ref(q_len, kv_len, w) if h < 4 else causal_ref(q_len, kv_len) for h in range(H)
    ])
    assert_same(got, want, f"moa H={H}")


@pytest.mark.parametrize("q_len,kv_len", [(100, 100), (37, 150)])
def test_moa_multi(q_len, kv_len):
    H, w, w2 = 10, 5, 20
    got = dense("moa.mask", "moa_multi", q_len, kv_len, heads=H, w=w, w2=w2)
    want = []
    for h in range(H):
        if h < 4:
            want.append(swa_ref(q_len, kv_len, w))
        elif h < 8:
            want.append(swa_ref(q_len, kv_len, w2))
        else:
            want.append(causal_ref(q_len, kv_len))
    assert_same(got, np.stack(want), "moa_multi")


@pytest.mark.parametrize("q_len,kv_len", [(100, 100), (37, 150), (1, 77)])
@pytest.mark.parametrize("H,retrieval", [(6, [1, 4]), (4, [0, 3]), (3, [])])
def test_duoattention(q_len, kv_len, H, retrieval):
    w, n = 10, 3
    got = dense("moa.mask", "duoattention", q_len, kv_len, heads=H,
                retrieval=retrieval, w=w, n=n)
    want = np.stack([
        causal_ref(q_len, kv_len) if h in retrieval else streaming_ref(q_len, kv_len, w, n)
        for h in range(H)
    ])
    assert_same(got, want, f"duoattention retrieval={retrieval}")


def test_duoattention_defaults():
    H = 4
    got = dense("moa.mask", "duoattention", 400, 400, heads=H)
    want = np.stack([
        causal_ref(400, 400) if h in (0, 3) else streaming_ref(400, 400, 252, 4)
        for h in range(H)
    ])
    assert_same(got, want, "duoattention defaults")
