"""Every primitive, operator, ``heads`` and ``blocks`` against an independent NumPy formula.

Each reference below is written straight from the table in LANGUAGE.md section 2, using
only the public API (``maskc.compile(...).dense(...)``) on the compiler side. Query
positions are bottom-right aligned: every primitive sees ``p = q + (Lk - Lq)``.

Sizes are drawn to include ``Lq != Lk`` both ways (``Lq > Lk`` makes ``p`` negative),
``Lq == 1`` and lengths that are multiples of nothing in particular.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import maskc

FAST = settings(max_examples=25, deadline=None)

lengths = st.integers(1, 70)


@st.composite
def qk_lens(draw, allow_longer_q: bool = True):
    """(Lq, Lk), biased towards the interesting cases: equal, q shorter, q longer, q == 1."""
    lk = draw(lengths)
    kind = draw(st.sampled_from(["eq", "short", "long", "one"] if allow_longer_q
                                else ["eq", "short", "one"]))
    if kind == "eq":
        lq = lk
    elif kind == "short":
        lq = draw(st.integers(1, lk))
    elif kind == "long":
        lq = draw(st.integers(lk, 70))
    else:
        lq = 1
    return lq, lk


def grid(lq: int, lk: int):
    """Broadcastable index arrays ``q`` (Lq, 1), ``p`` (Lq, 1) and ``k`` (1, Lk)."""
    q = np.arange(lq)[:, None]
    k = np.arange(lk)[None, :]
    p = q + (lk - lq)
    return q, p, k


def ref(fn, lq: int, lk: int) -> np.ndarray:
    """Evaluate a reference ``fn(q, p, k, lq, lk)`` to a (1, Lq, Lk) bool array."""
    q, p, k = grid(lq, lk)
    out = np.broadcast_to(np.asarray(fn(q, p, k, lq, lk), dtype=bool), (lq, lk))
    return out[None].copy()


def dense(src: str, lq: int, lk: int, heads: int = 1, **inputs) -> np.ndarray:
    got = maskc.compile(src).dense(lq, lk, heads=heads, **inputs)
    assert got.dtype == np.bool_
    return got


def check(src: str, fn, lq: int, lk: int):
    got = dense(src, lq, lk)
    want = ref(fn, lq, lk)
    assert got.shape == (1, lq, lk), (src, got.shape)
    assert np.array_equal(got, want), (src, lq, lk, np.argwhere(got != want)[:10])


def pymod(a, m):
    """Python's non-negative ``%`` for a positive modulus (numpy agrees; spelled out)."""
    return np.mod(a, m)


# ----------------------------------------------------------------------------------------
# 1-D primitives
# ----------------------------------------------------------------------------------------

@FAST
@given(qk_lens())
def test_all_none_causal(lens):
    lq, lk = lens
    check("mask m = all", lambda q, p, k, *_: np.ones((1, 1)), lq, lk)
    check("mask m = none", lambda q, p, k, *_: np.zeros((1, 1)), lq, lk)
    check("mask m = causal", lambda q, p, k, *_: k <= p, lq, lk)


def test_causal_alignment_by_hand():
    # Lq = 2, Lk = 4: p = q + 2, so row 0 sees keys 0..2 and row 1 sees 0..3.
    got = maskc.compile("mask m = causal").dense(2, 4)[0]
    assert got.tolist() == [[True, True, True, False], [True, True, True, True]]
    # Lq = 4, Lk = 2: p = q - 2, rows 0 and 1 see nothing.
    got = maskc.compile("mask m = causal").dense(4, 2)[0]
    assert got.tolist() == [[False, False], [False, False], [True, False], [True, True]]


@FAST
@given(qk_lens(), st.integers(0, 20))
def test_window_radius(lens, r):
    lq, lk = lens
    check(f"mask m = window({r})", lambda q, p, k, *_: np.abs(p - k) <= r, lq, lk)


@FAST
@given(qk_lens(), st.integers(0, 20), st.integers(0, 20))
def test_window_before_after(lens, a, b):
    lq, lk = lens
    check(f"mask m = window(before = {a}, after = {b})",
          lambda q, p, k, *_: (p - a <= k) & (k <= p + b), lq, lk)


@FAST
@given(qk_lens(), st.integers(0, 10), st.integers(1, 5))
def test_window_dilated(lens, r, d):
    lq, lk = lens
    check(f"mask m = window({r}, dilation = {d})",
          lambda q, p, k, *_: (np.abs(p - k) <= r * d) & (pymod(p - k, d) == 0), lq, lk)


@FAST
@given(qk_lens(), st.lists(st.integers(0, 75), min_size=1, max_size=5))
def test_global_list(lens, g):
    lq, lk = lens
    s = np.array(sorted(set(g)))
    check(f"mask m = global([{', '.join(map(str, g))}])",
          lambda q, p, k, *_: np.isin(p, s) | np.isin(k, s), lq, lk)


@FAST
@given(qk_lens(), st.integers(0, 40), st.integers(0, 40))
def test_global_range(lens, a, n):
    lq, lk = lens
    b = a + n  # a..b half-open; may be empty when n == 0
    check(f"mask m = global({a}..{b})",
          lambda q, p, k, *_: ((a <= p) & (p < b)) | ((a <= k) & (k < b)), lq, lk)


def test_global_via_params():
    m = maskc.compile("mask m(g = [0, 1]) = global(g)")
    assert np.array_equal(m.dense(9), ref(lambda q, p, k, *_: (p < 2) | (k < 2), 9, 9))
    m = maskc.compile("mask m(g) = global(g)", g=[3, 5])
    want = ref(lambda q, p, k, *_: np.isin(p, [3, 5]) | np.isin(k, [3, 5]), 9, 9)
    assert np.array_equal(m.dense(9), want)


@FAST
@given(qk_lens(), st.integers(0, 30))
def test_sink_prefix_chunk(lens, n):
    lq, lk = lens
    check(f"mask m = sink({n})", lambda q, p, k, *_: k < n, lq, lk)
    check(f"mask m = prefix({n})", lambda q, p, k, *_: (p < n) & (k < n), lq, lk)
    check(f"mask m = causal | prefix({n})", lambda q, p, k, *_: (k <= p) | ((p < n) & (k < n)),
          lq, lk)
    if n >= 1:
        # floor division: for negative p (Lq > Lk) p // n is negative, never equal to k // n
        check(f"mask m = chunk({n})", lambda q, p, k, *_: (p // n) == (k // n), lq, lk)
        check(f"mask m = causal & chunk({n})",
              lambda q, p, k, *_: (k <= p) & ((p // n) == (k // n)), lq, lk)


@FAST
@given(qk_lens(), st.integers(1, 12), st.data())
def test_strided_fixed(lens, s, data):
    lq, lk = lens
    c = data.draw(st.integers(0, s))
    check(f"mask m = strided({s})", lambda q, p, k, *_: pymod(p - k, s) == 0, lq, lk)
    check(f"mask m = fixed({s}, {c})", lambda q, p, k, *_: pymod(k, s) >= s - c, lq, lk)
    # the two Sparse Transformer specs of section 6
    check(f"mask m = causal & (window(before = {s} - 1, after = 0) | strided({s}))",
          lambda q, p, k, *_: (k <= p) & (((p - (s - 1) <= k) & (k <= p)) | (pymod(p - k, s) == 0)),
          lq, lk)
    check(f"mask m = causal & (chunk({s}) | fixed({s}, {c}))",
          lambda q, p, k, *_: (k <= p) & (((p // s) == (k // s)) | (pymod(k, s) >= s - c)),
          lq, lk)


# ----------------------------------------------------------------------------------------
# same / within (runtime inputs)
# ----------------------------------------------------------------------------------------

@st.composite
def doc_ids(draw, lk: int, batch: int | None = None):
    """Random ids from a small alphabet: runs, and ids that come back in a later run."""
    def one():
        ids = []
        while len(ids) < lk:
            run = draw(st.integers(1, 8))
            ids += [draw(st.integers(0, 3))] * run
        return ids[:lk]
    if batch is None:
        return np.array(one(), dtype=np.int64)
    return np.array([one() for _ in range(batch)], dtype=np.int64)


def run_starts(x: np.ndarray) -> np.ndarray:
    """start(i): the first index of i's contiguous run in the 1-D array x (a plain loop)."""
    out = np.zeros(len(x), dtype=np.int64)
    for i in range(len(x)):
        out[i] = i if i == 0 or x[i] != x[i - 1] else out[i - 1]
    return out


def ref_same(x: np.ndarray, lq: int) -> np.ndarray:
    lk = len(x)
    out = np.zeros((lq, lk), dtype=bool)
    for q in range(lq):
        p = q + lk - lq
        for k in range(lk):
            out[q, k] = x[p] == x[k]
    return out


WITHIN_E = {
    "causal": lambda pp, kk: kk <= pp,
    "window(before = 3, after = 0)": lambda pp, kk: pp - 3 <= kk <= pp,
    "causal & window(before = 2, after = 0)": lambda pp, kk: kk <= pp and pp - 2 <= kk,
    # not shift-invariant: tells start() apart from a plain same(x) & e
    "sink(2)": lambda pp, kk: kk < 2,
    "prefix(3) | window(1)": lambda pp, kk: (pp < 3 and kk < 3) or abs(pp - kk) <= 1,
}


def ref_within(x: np.ndarray, lq: int, e) -> np.ndarray:
    lk = len(x)
    st_ = run_starts(x)
    out = np.zeros((lq, lk), dtype=bool)
    for q in range(lq):
        p = q + lk - lq
        for k in range(lk):
            out[q, k] = bool(x[p] == x[k] and e(p - st_[p], k - st_[k]))
    return out


def test_run_starts_helper():
    assert run_starts(np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])).tolist() == [0, 0, 0, 3, 3, 5, 5, 5, 5]
    assert run_starts(np.array([4, 4, 7, 4, 4])).tolist() == [0, 0, 2, 3, 3]


def test_same_by_hand():
    doc = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    got = maskc.compile("mask m(input doc) = same(doc)").dense(9, doc=doc)
    assert got.shape == (1, 9, 9)
    assert np.array_equal(got[0], doc[:, None] == doc[None, :])
    got = maskc.compile("mask m(input doc) = causal & same(doc)").dense(9, doc=doc)
    assert np.array_equal(got[0], (doc[:, None] == doc[None, :]) & np.tri(9, dtype=bool))


@FAST
@given(qk_lens(allow_longer_q=False), st.data())
def test_same(lens, data):
    lq, lk = lens
    x = data.draw(doc_ids(lk))
    got = dense("mask m(input doc) = same(doc)", lq, lk, doc=x)
    assert np.array_equal(got[0], ref_same(x, lq))
    got = dense("mask m(input doc) = causal & same(doc)", lq, lk, doc=x)
    assert np.array_equal(got[0], ref_same(x, lq) & ref(lambda q, p, k, *_: k <= p, lq, lk)[0])


@FAST
@given(qk_lens(allow_longer_q=False), st.integers(2, 3), st.data())
def test_same_batched(lens, b, data):
    lq, lk = lens
    x = data.draw(doc_ids(lk, batch=b))
    got = dense("mask m(input doc) = same(doc)", lq, lk, heads=2, doc=x)
    assert got.shape == (b, 2, lq, lk)
    for i in range(b):
        for h in range(2):
            assert np.array_equal(got[i, h], ref_same(x[i], lq))


@pytest.mark.parametrize("e", list(WITHIN_E))
@FAST
@given(lens=qk_lens(allow_longer_q=False), data=st.data())
def test_within(e, lens, data):
    lq, lk = lens
    x = data.draw(doc_ids(lk))
    got = dense(f"mask m(input doc) = within(doc, {e})", lq, lk, doc=x)
    assert np.array_equal(got[0], ref_within(x, lq, WITHIN_E[e])), (e, x.tolist(), lq)


def test_within_by_hand():
    # doc 0 comes back after doc 1: same(doc) pairs the runs, within measures from each run's start
    doc = np.array([0, 0, 1, 0, 0])
    got = maskc.compile("mask m(input doc) = within(doc, causal)").dense(5, doc=doc)[0]
    want = np.array([
        [1, 0, 0, 1, 0],   # p=0 (offset 0): k=0 (0), k=3 (offset 0)
        [1, 1, 0, 1, 1],   # p=1 (offset 1)
        [0, 0, 1, 0, 0],
        [1, 0, 0, 1, 0],   # p=3 (offset 0)
        [1, 1, 0, 1, 1],
    ], dtype=bool)
    assert np.array_equal(got, want)


def test_batched_input_of_one_keeps_the_batch_axis():
    # LANGUAGE.md: an input of shape (B, Lk) gives (B, heads, Lq, Lk); B == 1 is no exception
    # (a (1, Lk) input is batched; a (Lk,) input is not).
    m = maskc.compile("mask m(input doc) = causal & same(doc)")
    doc = np.array([0, 0, 1, 1, 1])
    assert m.dense(5, doc=doc).shape == (1, 5, 5)
    assert m.dense(5, heads=2, doc=doc[None]).shape == (1, 2, 5, 5)


@pytest.mark.parametrize("e", ["causal", "causal & window(before = 2, after = 0)", "sink(2)"])
@FAST
@given(lens=qk_lens(allow_longer_q=False), b=st.integers(2, 3), data=st.data())
def test_within_batched(e, lens, b, data):
    lq, lk = lens
    x = data.draw(doc_ids(lk, batch=b))
    got = dense(f"mask m(input doc) = within(doc, {e})", lq, lk, doc=x)
    assert got.shape == (b, 1, lq, lk)
    for i in range(b):
        assert np.array_equal(got[i, 0], ref_within(x[i], lq, WITHIN_E[e]))


# ----------------------------------------------------------------------------------------
# where predicates
# ----------------------------------------------------------------------------------------

PREDICATES = [
    ("q >= k", lambda q, p, k, lq, lk: q >= k),
    ("p >= k", lambda q, p, k, lq, lk: p >= k),
    ("q + Lk - Lq == p", lambda q, p, k, lq, lk: q + lk - lq == p),
    ("k < Lk - 3 and q > Lq // 2", lambda q, p, k, lq, lk: (k < lk - 3) & (q > lq // 2)),
    ("abs(p - k) <= 4", lambda q, p, k, lq, lk: np.abs(p - k) <= 4),
    ("abs(q - k) > 2 or k == 0", lambda q, p, k, lq, lk: (np.abs(q - k) > 2) | (k == 0)),
    ("min(p, k) % 3 == 1", lambda q, p, k, lq, lk: pymod(np.minimum(p, k), 3) == 1),
    ("max(q, k) // 4 != 2", lambda q, p, k, lq, lk: np.maximum(q, k) // 4 != 2),
    ("p // 5 == k // 5", lambda q, p, k, lq, lk: p // 5 == k // 5),
    ("(p - k) % 3 == 0", lambda q, p, k, lq, lk: pymod(p - k, 3) == 0),
    ("(k - p) // 2 == -1", lambda q, p, k, lq, lk: (k - p) // 2 == -1),
    ("not (k > p)", lambda q, p, k, lq, lk: ~(k > p)),
    ("not k % 2 == 0 and p >= 0", lambda q, p, k, lq, lk: ~(pymod(k, 2) == 0) & (p >= 0)),
    ("k * 2 <= p + 1 or not (q < 3 or k > 10)",
     lambda q, p, k, lq, lk: (k * 2 <= p + 1) | ~((q < 3) | (k > 10))),
    ("-p + 2 * k - 1 > -3", lambda q, p, k, lq, lk: -p + 2 * k - 1 > -3),
    ("Lq <= Lk", lambda q, p, k, lq, lk: np.full((1, 1), lq <= lk)),
    ("true", lambda q, p, k, lq, lk: np.ones((1, 1))),
    ("false or k == Lk - 1", lambda q, p, k, lq, lk: k == lk - 1),
]


@pytest.mark.parametrize("text,fn", PREDICATES, ids=[t for t, _ in PREDICATES])
@settings(max_examples=12, deadline=None)
@given(lens=qk_lens())
def test_where(text, fn, lens):
    lq, lk = lens
    check(f"mask m = where {text}", fn, lq, lk)


@FAST
@given(qk_lens())
def test_where_combined_with_masks(lens):
    lq, lk = lens
    check("mask m = causal & where k % 2 == 0",
          lambda q, p, k, *_: (k <= p) & (pymod(k, 2) == 0), lq, lk)
    check("mask m = sink(2) | where p - k == 3",
          lambda q, p, k, *_: (k < 2) | (p - k == 3), lq, lk)
    # `where` takes the longest predicate: the `- 1` is arithmetic inside it
    check("mask m = where k <= p - 1", lambda q, p, k, *_: k <= p - 1, lq, lk)
    check("mask m = (where k <= p) - window(1)",
          lambda q, p, k, *_: (k <= p) & ~(np.abs(p - k) <= 1), lq, lk)
    check("mask m = ~where k < 3", lambda q, p, k, *_: ~(k < 3), lq, lk)


def test_where_params():
    m = maskc.compile("mask m(a = 3) = where abs(p - k) <= a")
    assert np.array_equal(m.dense(10, 13), ref(lambda q, p, k, *_: np.abs(p - k) <= 3, 10, 13))
    m = maskc.compile("mask m(a = 3) = where abs(p - k) <= a", a=5)
    assert np.array_equal(m.dense(10, 13), ref(lambda q, p, k, *_: np.abs(p - k) <= 5, 10, 13))


# ----------------------------------------------------------------------------------------
# operators and precedence
# ----------------------------------------------------------------------------------------

A = ("causal", lambda q, p, k, *_: k <= p)
B = ("window(2)", lambda q, p, k, *_: np.abs(p - k) <= 2)
C = ("sink(3)", lambda q, p, k, *_: k < 3)


@FAST
@given(qk_lens())
def test_operators(lens):
    lq, lk = lens
    (a, fa), (b, fb), (c, fc) = A, B, C

    def f(expr):
        return lambda *args: expr(*args)

    check(f"mask m = ~{a}", f(lambda *x: ~fa(*x)), lq, lk)
    check(f"mask m = {a} - {b}", f(lambda *x: fa(*x) & ~fb(*x)), lq, lk)
    check(f"mask m = {a} & {b}", f(lambda *x: fa(*x) & fb(*x)), lq, lk)
    check(f"mask m = {a} | {b}", f(lambda *x: fa(*x) | fb(*x)), lq, lk)
    # precedence: ~ tightest, then -, then &, then |
    want = f(lambda *x: fa(*x) | (fb(*x) & fc(*x)))
    check(f"mask m = {a} | {b} & {c}", want, lq, lk)
    check(f"mask m = {a} | ({b} & {c})", want, lq, lk)
    check(f"mask m = {b} & {c} | {a}", want, lq, lk)
    want = f(lambda *x: (~fa(*x)) & fb(*x))
    check(f"mask m = ~{a} & {b}", want, lq, lk)
    check(f"mask m = (~{a}) & {b}", want, lq, lk)
    want = f(lambda *x: (fa(*x) & ~fb(*x)) & fc(*x))
    check(f"mask m = {a} - {b} & {c}", want, lq, lk)
    check(f"mask m = ({a} - {b}) & {c}", want, lq, lk)
    # and the groupings that differ from the defaults
    check(f"mask m = ({a} | {b}) & {c}", f(lambda *x: (fa(*x) | fb(*x)) & fc(*x)), lq, lk)
    check(f"mask m = ~({a} & {b})", f(lambda *x: ~(fa(*x) & fb(*x))), lq, lk)
    check(f"mask m = {a} - ({b} & {c})", f(lambda *x: fa(*x) & ~(fb(*x) & fc(*x))), lq, lk)
    check(f"mask m = {a} - {b} - {c}", f(lambda *x: fa(*x) & ~fb(*x) & ~fc(*x)), lq, lk)
    check(f"mask m = ~~{a}", fa, lq, lk)


def test_precedence_differs():
    # guard: the three precedence checks above really tell the groupings apart at this size
    lq = lk = 12
    (a, fa), (b, fb), (c, fc) = A, B, C
    r = lambda fn: ref(fn, lq, lk)  # noqa: E731
    assert not np.array_equal(r(lambda *x: fa(*x) | (fb(*x) & fc(*x))),
                              r(lambda *x: (fa(*x) | fb(*x)) & fc(*x)))
    assert not np.array_equal(r(lambda *x: (~fa(*x)) & fb(*x)), r(lambda *x: ~(fa(*x) & fb(*x))))
    assert not np.array_equal(r(lambda *x: (fa(*x) & ~fb(*x)) & fc(*x)),
                              r(lambda *x: fa(*x) & ~(fb(*x) & fc(*x))))


def test_let_macros():
    src = """
    let swa(w) = causal & window(w)
    let g0 = global([0])
    mask m(w = 3) = swa(w) | g0
    """
    want = ref(lambda q, p, k, *_: ((k <= p) & (np.abs(p - k) <= 3)) | (p == 0) | (k == 0), 11, 17)
    assert np.array_equal(maskc.compile(src).dense(11, 17), want)
    want = ref(lambda q, p, k, *_: ((k <= p) & (np.abs(p - k) <= 5)) | (p == 0) | (k == 0), 11, 17)
    assert np.array_equal(maskc.compile(src, w=5).dense(11, 17), want)


# ----------------------------------------------------------------------------------------
# heads
# ----------------------------------------------------------------------------------------

def per_head(fns, lq, lk):
    return np.concatenate([ref(fn, lq, lk) for fn in fns], axis=0)


@FAST
@given(qk_lens(), st.integers(1, 9))
def test_heads_first_matching_arm(lens, h):
    lq, lk = lens
    src = "mask m = heads { 0..2: causal, [1, 3]: window(1), 2..4: sink(2), _: none }"
    fns = {
        0: lambda q, p, k, *_: k <= p,
        1: lambda q, p, k, *_: k <= p,              # 0..2 comes before [1, 3]
        2: lambda q, p, k, *_: k < 2,               # 2..4
        3: lambda q, p, k, *_: np.abs(p - k) <= 1,  # [1, 3] comes before 2..4
    }
    none = lambda q, p, k, *_: np.zeros((1, 1))  # noqa: E731
    got = dense(src, lq, lk, heads=h)
    assert got.shape == (h, lq, lk)
    assert np.array_equal(got, per_head([fns.get(i, none) for i in range(h)], lq, lk))


def test_heads_moa_example():
    src = ("mask moa(w = 2) = heads { 0..4: causal & window(w), 4..8: causal & window(8 * w), "
           "_: causal }")
    lq, lk = 20, 40
    fns = [lambda q, p, k, *_: (k <= p) & (np.abs(p - k) <= 2)] * 4 \
        + [lambda q, p, k, *_: (k <= p) & (np.abs(p - k) <= 16)] * 4 \
        + [lambda q, p, k, *_: k <= p] * 2
    assert np.array_equal(maskc.compile(src).dense(lq, lk, heads=10), per_head(fns, lq, lk))


def test_heads_unmatched_is_error():
    m = maskc.compile("mask m = heads { 0..2: causal, [5]: window(1) }")
    assert m.dense(4, heads=2).shape == (2, 4, 4)
    with pytest.raises(maskc.MaskError, match="2"):
        m.dense(4, heads=3)


@FAST
@given(qk_lens(), st.integers(1, 6))
def test_where_h(lens, h):
    lq, lk = lens
    got = dense("mask m = causal & (where h % 2 == 0 or k < h)", lq, lk, heads=h)
    fns = [(lambda i: lambda q, p, k, *_: (k <= p) & ((i % 2 == 0) | (k < i)))(i)
           for i in range(h)]
    assert np.array_equal(got, per_head(fns, lq, lk))
    got = dense("mask m = window(1) | where h == 1 and p == k + 4", lq, lk, heads=h)
    fns = [(lambda i: lambda q, p, k, *_: (np.abs(p - k) <= 1) | ((i == 1) & (p == k + 4)))(i)
           for i in range(h)]
    assert np.array_equal(got, per_head(fns, lq, lk))


# ----------------------------------------------------------------------------------------
# blocks
# ----------------------------------------------------------------------------------------

def ref_blocks(bs, fn, lq, lk):
    """blocks(B, e): e sees (p // B, k // B) with no further alignment."""
    return ref(lambda q, p, k, *_: fn(p // bs, k // bs), lq, lk)


@FAST
@given(qk_lens(), st.integers(1, 9), st.integers(0, 3))
def test_blocks_window_causal_global(lens, bs, r):
    lq, lk = lens
    cases = [
        ("causal", lambda pb, kb: kb <= pb),
        (f"window({r})", lambda pb, kb: np.abs(pb - kb) <= r),
        (f"window(before = {r}, after = 1)", lambda pb, kb: (pb - r <= kb) & (kb <= pb + 1)),
        ("global([0, 2])", lambda pb, kb: np.isin(pb, [0, 2]) | np.isin(kb, [0, 2])),
        (f"window({r}) | global([0])", lambda pb, kb: (np.abs(pb - kb) <= r) | (pb == 0) | (kb == 0)),
        ("causal & ~window(0)", lambda pb, kb: kb < pb),
    ]
    for e, fn in cases:
        got = dense(f"mask m = blocks({bs}, {e})", lq, lk)
        want = ref_blocks(bs, fn, lq, lk)
        assert np.array_equal(got, want), (e, bs, lq, lk)


@FAST
@given(qk_lens(), st.integers(1, 9), st.integers(1, 5), st.integers(1, 5), st.data())
def test_blocks_layout(lens, bs, rows, cols, data):
    lq, lk = lens
    lay = np.array(data.draw(st.lists(st.lists(st.integers(0, 1), min_size=cols, max_size=cols),
                                      min_size=rows, max_size=rows)))
    text = "[" + ", ".join("[" + ", ".join(map(str, row)) + "]" for row in lay) + "]"

    def fn(pb, kb):
        pb, kb = np.broadcast_arrays(pb, kb)
        inside = (pb >= 0) & (pb < rows) & (kb >= 0) & (kb < cols)
        out = np.zeros(pb.shape, dtype=bool)
        out[inside] = lay[pb[inside], kb[inside]] == 1
        return out

    got = dense(f"mask m = blocks({bs}, layout({text}))", lq, lk)
    assert np.array_equal(got, ref_blocks(bs, fn, lq, lk)), (text, bs, lq, lk)
    got = dense(f"mask m = causal & blocks({bs}, layout({text}))", lq, lk)
    assert np.array_equal(got, ref_blocks(bs, fn, lq, lk) & ref(lambda q, p, k, *_: k <= p, lq, lk))


def test_blocks_layout_param():
    m = maskc.compile("mask m(L) = blocks(2, layout(L))", L=[[1, 0], [1, 1]])
    want = ref_blocks(2, lambda pb, kb: np.isin(pb * 10 + kb, [0, 10, 11]), 6, 6)
    assert np.array_equal(m.dense(6), want)


@FAST
@given(st.integers(1, 70), st.integers(1, 9), st.data())
def test_blocks_random_invariants(lk, bs, data):
    nkb = -(-lk // bs)
    lq = data.draw(st.integers(1, lk))
    r = data.draw(st.integers(1, nkb))
    seed = data.draw(st.integers(0, 50))
    src = f"mask m = blocks({bs}, random({r}, seed = {seed}))"
    got = dense(src, lq, lk)[0]
    # deterministic: same answer from a fresh compile
    assert np.array_equal(got, dense(src, lq, lk)[0])
    kblock = np.arange(lk) // bs
    rows_by_block = {}
    for q in range(lq):
        p = q + lk - lq
        chosen = set(kblock[got[q]].tolist())
        assert len(chosen) == r, (q, chosen)
        # whole key blocks: every key of a chosen block is kept
        assert np.array_equal(got[q], np.isin(kblock, list(chosen)))
        # every query of one query block makes the same choice
        prev = rows_by_block.setdefault(p // bs, got[q])
        assert np.array_equal(prev, got[q])
    # the choice depends on (seed, query block, number of key blocks), not on Lq
    if lq < lk:
        full = dense(src, lk, lk)[0]
        assert np.array_equal(full[lk - lq:], got)


def test_blocks_random_all_blocks_when_r_is_nkb():
    got = maskc.compile("mask m = blocks(4, random(3, seed = 1))").dense(10)
    assert got.all()


def test_blocks_random_too_many_is_error():
    m = maskc.compile("mask m = blocks(4, random(3, seed = 1))")
    m.dense(9)  # 3 key blocks: fine
    with pytest.raises(maskc.MaskError):
        m.dense(8)  # 2 key blocks < r = 3
    with pytest.raises(maskc.MaskError):
        m.dense(3, 8)


def test_blocks_random_seeds_differ():
    a = maskc.compile("mask m = blocks(2, random(3, seed = 0))").dense(64)
    b = maskc.compile("mask m = blocks(2, random(3, seed = 1))").dense(64)
    assert not np.array_equal(a, b)


def test_bigbird_shape():
    src = "mask m = blocks(4, window(1) | global([0]) | random(2, seed = 7))"
    got = maskc.compile(src).dense(37)[0]
    base = ref_blocks(4, lambda pb, kb: (np.abs(pb - kb) <= 1) | (pb == 0) | (kb == 0), 37, 37)[0]
    assert not (base & ~got).any()  # random only adds
    kblock = np.arange(37) // 4
    for q in range(37):
        extra = set(kblock[got[q]].tolist()) - set(kblock[base[q]].tolist())
        assert len(extra) <= 2


# ----------------------------------------------------------------------------------------
# misc API behaviour used above
# ----------------------------------------------------------------------------------------

def test_kv_len_defaults_to_q_len():
    m = maskc.compile("mask m = causal")
    assert m.dense(7).shape == (1, 7, 7)
    assert np.array_equal(m.dense(7), m.dense(7, 7))
    assert m.dense(5, 9, heads=3).shape == (3, 5, 9)


def test_missing_param_is_error():
    with pytest.raises(maskc.MaskError):
        maskc.compile("mask m(w) = window(w)")
    assert np.array_equal(maskc.compile("mask m(w) = window(w)", w=2).dense(8),
                          ref(lambda q, p, k, *_: np.abs(p - k) <= 2, 8, 8))


def test_name_selects_mask():
    src = "mask a = causal\nmask b = sink(1)"
    assert np.array_equal(maskc.compile(src, name="b").dense(5), ref(lambda q, p, k, *_: k < 1, 5, 5))
    assert np.array_equal(maskc.compile(src, name="a").dense(5), ref(lambda q, p, k, *_: k <= p, 5, 5))
