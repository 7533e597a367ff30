"""Neighborhood attention (NATTEN / GNA), ``tile`` and grid coordinates on 1-, 2- and 3-D grids.

The reference here is an independent, per-element Python transcription of LANGUAGE.md
section 2, "N-D masks": tokens lie on the grid in row-major order (last axis fastest); a
pair is kept when every axis keeps it; on one axis of size ``n`` with kernel ``K``,
dilation ``d`` and stride ``s``:

- keys share the query's dilation group (``k % d == q % d``); within the group
  ``q' = q // d``, ``k' = k // d`` and the group has ``n_g = ceil((n - q % d) / d)`` positions;
- non-causal: ``left = K // 2``, ``right = K // 2 + K % 2 - 1``,
  ``leader = min((q' // s) * s + s // 2, n_g - 1)``,
  ``center = clamp(leader, left, n_g - 1 - right)``; keep ``center - left <= k' <= center + right``;
- causal: ``leader = min((q' // s) * s + s - 1, n_g - 1)``; keep ``k' <= q'`` and ``leader - k' < K``.

Only the public API is used on the compiler side.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import maskc

FAST = settings(max_examples=25, deadline=None)
AXES = ("t", "y", "x")


# ----------------------------------------------------------------------------------------
# the reference
# ----------------------------------------------------------------------------------------

def axis_keeps(qc: int, kc: int, n: int, K: int, d: int, s: int, causal: bool) -> bool:
    """One axis of Generalized Neighborhood Attention, element by element."""
    assert 0 <= qc < n and 0 <= kc < n
    if kc % d != qc % d:
        return False
    qp, kp = qc // d, kc // d
    ng = math.ceil((n - qc % d) / d)
    if not causal:
        left = K // 2
        right = K // 2 + K % 2 - 1
        leader = min((qp // s) * s + s // 2, ng - 1)
        center = max(left, min(leader, ng - 1 - right))
        return center - left <= kp <= center + right
    leader = min((qp // s) * s + s - 1, ng - 1)
    return kp <= qp and leader - kp < K


def axis_table(n, K, d, s, causal) -> np.ndarray:
    return np.array([[axis_keeps(i, j, n, K, d, s, causal) for j in range(n)] for i in range(n)],
                    dtype=bool)


def coords(shape):
    """Row-major coordinates of every token: (N, ndim), last axis fastest."""
    return np.array(list(itertools.product(*[range(n) for n in shape])), dtype=np.int64).reshape(
        -1, len(shape))


def ref_neighborhood(shape, K, d, s, causal) -> np.ndarray:
    """(N, N) mask: every axis keeps (per-axis tables, indexed by the tokens' coordinates)."""
    c = coords(shape)
    out = np.ones((len(c), len(c)), dtype=bool)
    for a, n in enumerate(shape):
        tab = axis_table(n, K[a], d[a], s[a], causal[a])
        out &= tab[c[:, a][:, None], c[:, a][None, :]]
    return out


def ref_neighborhood_brute(shape, K, d, s, causal) -> np.ndarray:
    """The same, one (q, k) pair at a time with no tables (slow; small grids only)."""
    c = coords(shape)
    N = len(c)
    out = np.zeros((N, N), dtype=bool)
    for q in range(N):
        for k in range(N):
            out[q, k] = all(axis_keeps(int(c[q, a]), int(c[k, a]), n, K[a], d[a], s[a], causal[a])
                            for a, n in enumerate(shape))
    return out


def ref_tile(shape, t) -> np.ndarray:
    c = coords(shape)
    out = np.ones((len(c), len(c)), dtype=bool)
    for a in range(len(shape)):
        out &= (c[:, a][:, None] // t[a]) == (c[:, a][None, :] // t[a])
    return out


# ----------------------------------------------------------------------------------------
# sanity of the reference itself (hand-worked values)
# ----------------------------------------------------------------------------------------

def test_reference_hand_values():
    # n = 7, K = 3: windows shift at the borders
    tab = axis_table(7, 3, 1, 1, False)
    assert [np.flatnonzero(r).tolist() for r in tab] == [
        [0, 1, 2], [0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 5], [4, 5, 6], [4, 5, 6]]
    # even kernel K = 4: left = 2, right = 1
    tab = axis_table(7, 4, 1, 1, False)
    assert [np.flatnonzero(r).tolist() for r in tab] == [
        [0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 2, 3], [1, 2, 3, 4], [2, 3, 4, 5], [3, 4, 5, 6],
        [3, 4, 5, 6]]
    # dilation 2 on n = 7: groups {0,2,4,6} (n_g = 4) and {1,3,5} (n_g = 3)
    tab = axis_table(7, 3, 2, 1, False)
    assert np.flatnonzero(tab[0]).tolist() == [0, 2, 4]
    assert np.flatnonzero(tab[6]).tolist() == [2, 4, 6]
    assert np.flatnonzero(tab[3]).tolist() == [1, 3, 5]
    # causal K = 3: the last three (or fewer at the start)
    tab = axis_table(6, 3, 1, 1, True)
    assert [np.flatnonzero(r).tolist() for r in tab] == [
        [0], [0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 5]]
    # stride = kernel: blocked (tile) attention when n is a multiple of K
    assert np.array_equal(axis_table(8, 4, 1, 4, False), ref_tile((8,), (4,)))
    # causal with stride 2, K = 3: queries 2 and 3 share leader 3 -> keys 1..3 capped by k' <= q'
    tab = axis_table(6, 3, 1, 2, True)
    assert np.flatnonzero(tab[2]).tolist() == [1, 2]
    assert np.flatnonzero(tab[3]).tolist() == [1, 2, 3]


def test_reference_tables_equal_brute_force():
    for shape, K, d, s, c in [((5, 7), (3, 4), (1, 1), (1, 2), (False, True)),
                              ((3, 4, 5), (2, 3, 2), (1, 1, 2), (2, 1, 1), (True, False, False))]:
        assert np.array_equal(ref_neighborhood(shape, K, d, s, c),
                              ref_neighborhood_brute(shape, K, d, s, c))


# ----------------------------------------------------------------------------------------
# source text
# ----------------------------------------------------------------------------------------

def fmt(vals, kind=int):
    """A per-axis argument: a scalar when every axis agrees (it broadcasts), else a tuple."""
    text = [("true" if v else "false") if kind is bool else str(v) for v in vals]
    if len(set(text)) == 1 and len(vals) > 1:
        return text[0]
    if len(text) == 1:
        return text[0]
    return "(" + ", ".join(text) + ")"


def grid_text(shape, named: bool) -> str:
    if named:
        names = AXES[-len(shape):]
        return "grid(" + ", ".join(f"{a} = {n}" for a, n in zip(names, shape)) + ")"
    return "grid(" + ", ".join(map(str, shape)) + ")"


def na_source(shape, K, d, s, causal, named=True, spell_defaults=False, force_tuples=False):
    args = [f"({', '.join(map(str, K))})" if force_tuples and len(K) > 1 else fmt(K)]
    if spell_defaults or any(x != 1 for x in d):
        args.append(f"dilation = {fmt(d)}")
    if spell_defaults or any(causal):
        args.append(f"causal = {fmt(causal, bool)}")
    if spell_defaults or any(x != 1 for x in s):
        args.append(f"stride = {fmt(s)}")
    return f"mask m over {grid_text(shape, named)} = neighborhood({', '.join(args)})"


# ----------------------------------------------------------------------------------------
# strategies
# ----------------------------------------------------------------------------------------

@st.composite
def shapes(draw, ndim=None):
    """Grid shapes of at most 400 tokens, sizes not multiples of anything in particular."""
    nd = draw(st.integers(1, 3)) if ndim is None else ndim
    max_n = {1: 40, 2: 20, 3: 7}[nd]
    return tuple(draw(st.integers(1, max_n)) for _ in range(nd))


@st.composite
def na_configs(draw, ndim=None, stride=True, causal=True, dilation=True):
    shape = draw(shapes(ndim))
    K, d, s, c = [], [], [], []
    for n in shape:
        dd = draw(st.integers(1, n)) if dilation else 1
        kk = draw(st.integers(1, n // dd))  # K * d <= n
        ss = draw(st.integers(1, kk)) if stride else 1  # 1 <= s <= K
        cc = draw(st.booleans()) if causal else False
        K.append(kk), d.append(dd), s.append(ss), c.append(cc)
    return shape, tuple(K), tuple(d), tuple(s), tuple(c)


def compiled_dense(src, N):
    m = maskc.compile(src)
    got = m.dense()
    assert got.shape == (1, N, N), (src, got.shape)
    return got[0]


def assert_same(got, want, src):
    if not np.array_equal(got, want):
        bad = np.argwhere(got != want)[:5]
        raise AssertionError(f"{src}: {len(np.argwhere(got != want))} cells differ, e.g. (q, k) "
                             f"{bad.tolist()}; got {got[tuple(bad[0])]}, want {want[tuple(bad[0])]}")


# ----------------------------------------------------------------------------------------
# neighborhood
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("ndim", [1, 2, 3])
@FAST
@given(data=st.data())
def test_neighborhood_general(ndim, data):
    shape, K, d, s, c = data.draw(na_configs(ndim))
    named = data.draw(st.booleans())
    src = na_source(shape, K, d, s, c, named=named)
    assert_same(compiled_dense(src, math.prod(shape)), ref_neighborhood(shape, K, d, s, c), src)


@FAST
@given(na_configs())
def test_neighborhood_spelled_out_defaults_and_tuples(cfg):
    shape, K, d, s, c = cfg
    src = na_source(shape, K, d, s, c, named=False, spell_defaults=True, force_tuples=True)
    assert_same(compiled_dense(src, math.prod(shape)), ref_neighborhood(shape, K, d, s, c), src)


@pytest.mark.parametrize("ndim", [1, 2, 3])
@FAST
@given(data=st.data())
def test_neighborhood_keeps_exactly_prod_kernel(ndim, data):
    # NATTEN's property: with stride 1 and no causal axis, every query sees prod(K) keys
    shape, K, d, s, c = data.draw(na_configs(ndim, stride=False, causal=False))
    src = na_source(shape, K, d, s, c, named=True)
    got = compiled_dense(src, math.prod(shape))
    assert (got.sum(axis=1) == math.prod(K)).all(), src
    assert_same(got, ref_neighborhood(shape, K, d, s, c), src)


@pytest.mark.parametrize("src,shape,K,d,s,c", [
    ("mask m over grid(y = 9, x = 11) = neighborhood((3, 4), dilation = (1, 2), "
     "causal = (false, true), stride = (1, 2))", (9, 11), (3, 4), (1, 2), (1, 2), (False, True)),
    ("mask m over grid(9, 11) = neighborhood((3, 4), dilation = (1, 2), "
     "causal = (false, true), stride = (1, 2))", (9, 11), (3, 4), (1, 2), (1, 2), (False, True)),
    ("mask m over grid(y = 8, x = 8) = neighborhood(4)", (8, 8), (4, 4), (1, 1), (1, 1), (False,) * 2),
    ("mask m over grid(y = 8, x = 9) = neighborhood(3, dilation = 2)",
     (8, 9), (3, 3), (2, 2), (1, 1), (False,) * 2),
    ("mask m over grid(y = 8, x = 9) = neighborhood(3, causal = true)",
     (8, 9), (3, 3), (1, 1), (1, 1), (True,) * 2),
    ("mask m over grid(t = 4, y = 5, x = 6) = neighborhood((3, 3, 4), causal = (true, false, false))",
     (4, 5, 6), (3, 3, 4), (1, 1, 1), (1, 1, 1), (True, False, False)),
    ("mask m over grid(t = 4, y = 6, x = 7) = neighborhood((2, 4, 4), stride = (1, 2, 4), "
     "dilation = (2, 1, 1))", (4, 6, 7), (2, 4, 4), (2, 1, 1), (1, 2, 4), (False,) * 3),
    ("mask m over grid(x = 17) = neighborhood(6, stride = 4, dilation = 2)",
     (17,), (6,), (2,), (4,), (False,)),
    ("mask m over grid(x = 17) = neighborhood(5, stride = 3, causal = true)",
     (17,), (5,), (1,), (3,), (True,)),
    ("mask m(h = 6, w = 7, k = 3) over grid(y = h, x = w) = neighborhood(k)",
     (6, 7), (3, 3), (1, 1), (1, 1), (False,) * 2),
])
def test_neighborhood_fixed_configs(src, shape, K, d, s, c):
    want = ref_neighborhood_brute(shape, K, d, s, c)
    assert_same(compiled_dense(src, math.prod(shape)), want, src)


def test_neighborhood_params_at_compile_time():
    src = ("mask natten(h = 6, w = 7, k = 3, d = 1) over grid(y = h, x = w) = "
           "neighborhood((k, k), dilation = d)")
    m = maskc.compile(src, h=9, w=8, k=4, d=2)
    assert m.dense().shape == (1, 72, 72)
    assert_same(m.dense()[0], ref_neighborhood((9, 8), (4, 4), (2, 2), (1, 1), (False, False)), src)


def test_neighborhood_combined_with_flat_primitives():
    # 1-D primitives apply to the flat (row-major) index
    shape, K = (5, 6), (3, 3)
    N = 30
    na = ref_neighborhood(shape, K, (1, 1), (1, 1), (False, False))
    q, k = np.arange(N)[:, None], np.arange(N)[None, :]
    got = compiled_dense("mask m over grid(y = 5, x = 6) = neighborhood(3) & causal", N)
    assert_same(got, na & (k <= q), "neighborhood & causal")
    got = compiled_dense("mask m over grid(y = 5, x = 6) = neighborhood(3) | global([0])", N)
    assert_same(got, na | (q == 0) | (k == 0), "neighborhood | global")
    got = compiled_dense("mask m over grid(5, 6) = window(2) - neighborhood(3)", N)
    assert_same(got, (np.abs(q - k) <= 2) & ~na, "window - neighborhood")


def test_grid_fixes_lengths():
    m = maskc.compile("mask m over grid(y = 3, x = 4) = neighborhood(2)")
    assert m.dense().shape == (1, 12, 12)
    assert m.dense(12).shape == (1, 12, 12)
    assert m.dense(heads=2).shape == (2, 12, 12)


# ----------------------------------------------------------------------------------------
# tile
# ----------------------------------------------------------------------------------------

@FAST
@given(shapes(), st.data())
def test_tile(shape, data):
    t = tuple(data.draw(st.integers(1, n)) for n in shape)
    named = data.draw(st.booleans())
    src = f"mask m over {grid_text(shape, named)} = tile({', '.join(map(str, t))})"
    assert_same(compiled_dense(src, math.prod(shape)), ref_tile(shape, t), src)


def test_tile_equals_neighborhood_with_stride_kernel():
    # GNA: stride == kernel is blocked attention when the kernel divides the axis
    a = compiled_dense("mask m over grid(y = 8, x = 12) = tile(4, 3)", 96)
    b = compiled_dense("mask m over grid(y = 8, x = 12) = neighborhood((4, 3), stride = (4, 3))", 96)
    assert np.array_equal(a, b)
    assert np.array_equal(a, ref_tile((8, 12), (4, 3)))


# ----------------------------------------------------------------------------------------
# axis coordinates in `where`
# ----------------------------------------------------------------------------------------

@FAST
@given(shapes(ndim=2), shapes(ndim=3))
def test_where_axis_coordinates(shape2, shape3):
    c = coords(shape2)
    N = len(c)
    qy, qx = c[:, 0][:, None], c[:, 1][:, None]
    ky, kx = c[:, 0][None, :], c[:, 1][None, :]
    named = f"mask m over {grid_text(shape2, True)} = "
    pos = f"mask m over {grid_text(shape2, False)} = "
    cases = [
        (named + "where q.y == k.y", qy == ky),
        (named + "where q.x <= k.x and abs(q.y - k.y) <= 1", (qx <= kx) & (np.abs(qy - ky) <= 1)),
        (named + "where p.y >= k.y", qy >= ky),
        (pos + "where q[1] <= k[1]", qx <= kx),
        (pos + "where q[0] == k[0] or q[1] == k[1]", (qy == ky) | (qx == kx)),
        (pos + "where q[0] * 100 + q[1] >= k[0] * 100 + k[1]", (qy * 100 + qx) >= (ky * 100 + kx)),
        (named + "neighborhood(1) | where q.y == k.y", (qy == ky) | ((qy == ky) & (qx == kx))),
        (named + "causal & where (q.x - k.x) % 2 == 0", (np.arange(N)[None, :] <= np.arange(N)[:, None])
         & ((qx - kx) % 2 == 0)),
    ]
    for src, want in cases:
        assert_same(compiled_dense(src, N), np.broadcast_to(want, (N, N)), src)
    c = coords(shape3)
    N = len(c)
    src = f"mask m over {grid_text(shape3, True)} = where q.t >= k.t and q[2] == k.x and q.y != k[1]"
    want = ((c[:, 0][:, None] >= c[:, 0][None, :]) & (c[:, 2][:, None] == c[:, 2][None, :])
            & (c[:, 1][:, None] != c[:, 1][None, :]))
    assert_same(compiled_dense(src, N), want, src)


# ----------------------------------------------------------------------------------------
# errors, located at the offending argument
# ----------------------------------------------------------------------------------------

def locate(src: str, needle: str, occurrence: int = 0):
    """1-based (line, column) of the start of ``needle`` (its ``occurrence``-th match)."""
    i = -1
    for _ in range(occurrence + 1):
        i = src.index(needle, i + 1)
    line = src.count("\n", 0, i) + 1
    col = i - (src.rfind("\n", 0, i) + 1) + 1
    return line, col


def raises_at(src: str, start: str, end: str | None = None):
    """Compiling (and, if needed, densifying) ``src`` raises a MaskError located inside the
    argument text that begins at the first ``start`` and ends with the first ``end`` after it."""
    with pytest.raises(maskc.MaskError) as info:
        maskc.compile(src).dense()
    err = info.value
    assert isinstance(err.line, int) and isinstance(err.column, int), (err.line, err.column)
    end = start if end is None else end
    i0 = src.index(start)
    i1 = src.index(end, i0) + len(end)
    lines = src.split("\n")
    assert 1 <= err.line <= len(lines), (err.line, str(err))
    off = sum(len(ln) + 1 for ln in lines[:err.line - 1]) + err.column - 1
    assert i0 <= off < i1, (f"error at {err.line}:{err.column}, expected within "
                            f"the argument {src[i0:i1]!r} at {locate(src, start)}: {err}")
    assert f"{err.line}:{err.column}" in str(err), str(err)
    return err


@pytest.mark.parametrize("src,start,end", [
    # K * d > n with d == 1: the kernel
    ("mask m over grid(x = 5) = neighborhood(6)", "6)", None),
    ("mask m over grid(y = 9, x = 4) = neighborhood((3, 5))", "(3, 5)", None),
    # stride > kernel, stride 0
    ("mask m over grid(y = 9, x = 8) = neighborhood((3, 3), stride = (1, 4))", "stride", "(1, 4)"),
    ("mask m over grid(x = 9) = neighborhood(3, stride = 0)", "stride", "0)"),
    ("mask m over grid(y = 9, x = 9) = neighborhood(3, stride = (0, 1))", "stride", "(0, 1)"),
])
def test_invalid_sizes_are_located_errors(src, start, end):
    raises_at(src, start, end)


def test_kernel_times_dilation_too_big_points_at_kernel_or_dilation():
    src = "mask m over grid(y = 9, x = 10) = neighborhood((3, 4), dilation = (3, 3))"
    err = raises_at(src, "(3, 4)", "(3, 3)")  # the kernel, the dilation, or between them
    assert err.line == 1


def test_invalid_sizes_multiline():
    src = (
        "# neighborhood attention with a bad stride\n"
        "let ok = causal\n"
        "mask m(h = 6)\n"
        "    over grid(y = h, x = 8)\n"
        "    = neighborhood((3, 3),\n"
        "                   stride = (1, 4))\n"
    )
    err = raises_at(src, "stride", "(1, 4)")
    assert err.line == 6
    assert 20 <= err.column <= 34  # `stride = (1, 4)` spans columns 20..34

    src = (
        "mask m over grid(t = 2,\n"
        "                 y = 9,\n"
        "                 x = 9)\n"
        "  = neighborhood(\n"
        "      (3, 3, 3),\n"
        "      stride = 2)\n"
    )
    # t = 2 < K = 3: the kernel argument on line 5
    err = raises_at(src, "(3, 3, 3)", None)
    assert err.line == 5
    assert 7 <= err.column <= 15

    src = (
        "mask m over grid(y = 9, x = 9) =\n"
        "  neighborhood(3,\n"
        "               stride = 0)\n"
    )
    err = raises_at(src, "stride", "0)")
    assert (err.line, err.column) in {(3, 16), (3, 25)}  # at `stride` or at its value `0`


def test_error_locations_point_at_the_right_argument():
    src = "mask m over grid(y = 9, x = 8) = neighborhood((3, 3), stride = (1, 4))"
    with pytest.raises(maskc.MaskError) as info:
        maskc.compile(src).dense()
    line, col = locate(src, "stride")
    assert info.value.line == 1
    assert info.value.column >= col  # not at the kernel argument or the start of the mask
