"""What block analysis derives once from a mask and its inputs: random()'s choice (bind, the
block analysis and the backends all ask for it: a second each at 1M tokens in blocks of 64)
and within()'s runs of equal ids (once per plan, not once per slice of tiles it resolves)."""

import numpy as np
import pytest

import maskc
from maskc.analysis import rng
from maskc.passes import bind


def test_random_choice_is_computed_once_and_copied(monkeypatch):
    calls = []
    choose = rng._choose
    monkeypatch.setattr(rng, "_choose", lambda *a: calls.append(a) or choose(*a))
    qb = np.arange(40)
    a = rng.random_choice(12345, qb, 50, 3)
    a[:] = -1  # the caller's copy: what is kept stays right
    b = rng.random_choice(12345, qb, 50, 3)
    assert len(calls) == 1
    assert np.array_equal(b, choose(12345, qb, 50, 3)) and (b >= 0).all()
    rng.random_choice(12346, qb, 50, 3)  # another seed is another choice
    assert len(calls) == 2


def test_a_kept_random_choice_still_meets_the_dense_limit():
    qb = np.arange(300)
    rng.random_choice(7, qb, 300, 2)
    maskc.set_dense_limit(1000)
    try:
        with pytest.raises(maskc.MaskSizeError, match="random"):
            rng.random_choice(7, qb, 300, 2)
    finally:
        maskc.set_dense_limit(None)


def test_within_runs_are_found_once_per_plan(monkeypatch):
    from maskc.backends import reference
    calls = []
    runs = reference._runs
    monkeypatch.setattr(reference, "_runs", lambda x: calls.append(x.shape) or runs(x))
    n, b = 1 << 15, 128
    doc = np.repeat(np.arange(n // 300 + 1), 300)[:n]  # ids ascending: a document is a range
    m = maskc.compile("mask m(input doc) = within(doc, causal)")
    bm = m.block_map(n, n, block_q=b, block_k=b, doc=doc)  # 4 slices of tiles to resolve
    assert len(calls) == 1, len(calls)  # not one per slice of tiles
    # the tiles, by formula: tile (i, j) below the diagonal keeps a pair iff a document has
    # rows in both, all pairs iff both are inside one document; diagonal tiles are partial
    lo, hi = doc[::b], doc[b - 1::b]
    i, j = np.indices((n // b, n // b))
    overlap = (lo[i] <= hi[j]) & (lo[j] <= hi[i])
    one = (lo[i] == hi[i]) & (lo[j] == hi[j]) & (lo[i] == lo[j])
    want = np.where(j < i, np.where(one, 2, np.where(overlap, 1, 0)), np.where(j == i, 1, 0))
    assert np.array_equal(bm.states()[0, 0], want)  # and the tiles are still right
