"""The estimators (LANGUAGE.md section 8) against brute force written from the section's text.

Every choice is recomputed here in float64 with plain loops: pooled blocks by their
definition, candidates from the mask's dense form, ranking by (score, then the smaller
index), rows ascending and padded with -1.
"""

import numpy as np
import pytest
import torch

import maskc


def qk(B, Hq, Hkv, Lq, Lk, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, Hq, Lq, D, generator=g, dtype=torch.float64),
            torch.randn(B, Hkv, Lk, D, generator=g, dtype=torch.float64))


def pad(rows, width):
    out = np.full((len(rows), width), -1, np.int64)
    for i, row in enumerate(rows):
        out[i, :len(row)] = sorted(row)
    return out


def block_scores(q, k, block, mask):
    """S[b, h, i, j] by the letter (-inf: not a candidate or no query row in block i)."""
    q, k = q.numpy(), k.numpy()
    B, Hq, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    nb, shift = -(-Lk // block), Lk - Lq
    dense = np.ones((Hq, Lq, Lk), bool) if mask is None else mask.dense(Lq, Lk, heads=Hq)
    S = np.full((B, Hq, nb, nb), -np.inf)
    for i in range(nb):
        rows = [t for t in range(Lq) if (t + shift) // block == i]
        if not rows:
            continue
        for j in range(nb):
            cols = list(range(j * block, min(Lk, (j + 1) * block)))
            for h in range(Hq):
                if not dense[h][np.ix_(rows, cols)].any():
                    continue
                for b in range(B):
                    pq = q[b, h, rows].mean(0)
                    pk = k[b, h // (Hq // Hkv), cols].mean(0)
                    S[b, h, i, j] = pq @ pk / np.sqrt(D)
    return S


def ranked(row):
    """Indices of the finite entries by decreasing score, ties to the smaller index."""
    return [j for j in sorted(range(len(row)), key=lambda j: (-row[j], j)) if np.isfinite(row[j])]


@pytest.mark.parametrize("Lq, Lk, block, spec", [
    (32, 32, 8, None), (20, 37, 8, "causal"), (37, 20, 4, "causal & window(9)"),
    (30, 30, 5, "heads { 0: causal, _: ~causal }"), (9, 40, 16, "sink(3)"),
])
@pytest.mark.parametrize("r", [1, 3, 9])
def test_topk_blocks_by_the_definition(Lq, Lk, block, spec, r):
    mask = maskc.compile(f"mask m = {spec}") if spec else None
    q, k = qk(2, 4, 2, Lq, Lk)
    got = maskc.topk_blocks(q, k, r, block=block, mask=mask, backend="reference")
    S = block_scores(q, k, block, mask)
    assert got.dtype == torch.int32 and got.shape == S.shape[:3] + (r,)
    for b, h, i in np.ndindex(*S.shape[:3]):
        want = pad([ranked(S[b, h, i])[:r]], r)[0]
        assert np.array_equal(got[b, h, i].numpy(), want), (b, h, i)
    # float32 (the default) makes the same choice on these well-separated scores
    assert torch.equal(maskc.topk_blocks(q.float(), k.float(), r, block=block, mask=mask), got)


def test_topk_blocks_from_scores_breaks_ties_toward_the_smaller_block():
    S = torch.tensor([[[[1.0, 2.0, 2.0, 2.0], [0.0, float("-inf"), 0.0, float("-inf")],
                        [float("-inf")] * 4, [5.0, 5.0, 5.0, 5.0]]]])
    got = maskc.topk_blocks(scores=S, r=2)
    assert got.tolist() == [[[[1, 2], [0, 2], [-1, -1], [0, 1]]]]


@pytest.mark.parametrize("p", [0.0, 0.3, 0.7, 0.95, 1.0])
@pytest.mark.parametrize("min_blocks, max_blocks", [(1, None), (2, 3), (0, 5)])
def test_topp_blocks_by_the_definition(p, min_blocks, max_blocks):
    mask = maskc.compile("mask m = causal")
    q, k = qk(1, 2, 1, 30, 30, seed=3)
    q = q * 3  # sharper block scores: the mass is spread unevenly
    got = maskc.topp_blocks(q, k, p, block=4, mask=mask, min_blocks=min_blocks,
                            max_blocks=max_blocks, backend="reference")
    S = block_scores(q, k, 4, mask)
    nb = S.shape[-1]
    width = nb if max_blocks is None else max_blocks
    assert got.shape == (1, 2, nb, width)
    for b, h, i in np.ndindex(*S.shape[:3]):
        order = ranked(S[b, h, i])
        prob = np.exp(S[b, h, i][order] - S[b, h, i][order].max()) if order else np.array([])
        prob = prob / prob.sum() if order else prob
        n = 0
        while n < len(order) and prob[:n].sum() < p:
            n += 1
        n = min(max(n, min_blocks), width, len(order))
        assert np.array_equal(got[b, h, i].numpy(), pad([order[:n]], width)[0]), (h, i, n)


@pytest.mark.parametrize("Lq, Lk, last_q", [(24, 24, 8), (10, 30, 64), (30, 12, 5)])
def test_vertical_slash_by_the_definition(Lq, Lk, last_q):
    q, k = qk(2, 4, 2, Lq, Lk, seed=1)
    keys, diags = maskc.vertical_slash(q, k, 5, 4, last_q=last_q, backend="reference")
    assert keys.shape == (2, 4, 5) and diags.shape == (2, 4, 4) and keys.dtype == torch.int32
    qn, kn = q.numpy(), k.numpy()
    m = min(last_q, Lq)
    for b, h in np.ndindex(2, 4):
        vert, slash = np.zeros(Lk), np.zeros(Lk)
        for t in range(Lq - m, Lq):
            p = t + Lk - Lq
            if p < 0:
                continue
            s = kn[b, h // 2, :p + 1] @ qn[b, h, t] / np.sqrt(8)
            a = np.exp(s - s.max())
            a /= a.sum()
            for kk in range(p + 1):
                vert[kk] += a[kk]
                slash[p - kk] += a[kk]
        top = lambda x, n: sorted(sorted(range(Lk), key=lambda j: (-x[j], j))[:n])  # noqa: E731
        assert keys[b, h].tolist() == top(vert, 5), (b, h)
        assert diags[b, h].tolist() == top(slash, 4), (b, h)


def test_estimates_feed_the_masks_that_read_them():
    """topk_blocks -> select and vertical_slash -> keys/diagonals: the masks keep exactly the
    chosen tiles and lines, and every row of the result is a valid input."""
    q, k = qk(1, 2, 2, 64, 64)
    idx = maskc.topk_blocks(q, k, 2, block=16, mask=maskc.compile("mask m = causal"))
    sel = maskc.compile("mask m(input idx) = causal & blocks(16, select(idx))")
    got = sel.dense(64, heads=2, idx=idx)
    assert got.shape == (1, 2, 64, 64)
    for h, i in np.ndindex(2, 4):
        kept = {j for j in range(4) if got[0, h, i * 16:(i + 1) * 16, j * 16:(j + 1) * 16].any()}
        assert kept == set(idx[0, h, i].tolist()) - {-1}
    cols, diags = maskc.vertical_slash(q, k, 3, 2)
    vs = maskc.compile("mask m(input c, input d) = causal & (keys(c) | diagonals(d))")
    got = vs.dense(64, heads=2, c=cols, d=diags)
    p, kk = np.arange(64)[:, None], np.arange(64)[None, :]
    for h in range(2):
        want = (kk <= p) & (np.isin(kk, cols[0, h]) | np.isin(p - kk, diags[0, h]))
        assert np.array_equal(got[0, h], want)


def test_wide_requests_are_padded():
    q, k = qk(1, 1, 1, 8, 8)
    assert maskc.topk_blocks(q, k, 5, block=4).shape == (1, 1, 2, 5)
    assert (maskc.topk_blocks(q, k, 5, block=4)[..., 2:] == -1).all()
    keys, diags = maskc.vertical_slash(q, k, 10, 0)
    assert keys.shape == (1, 1, 10) and (keys[..., 8:] == -1).all() and diags.shape == (1, 1, 0)


@pytest.mark.parametrize("call, error, message", [
    (lambda q, k: maskc.topk_blocks(q, k), maskc.MaskTypeError, "needs r"),
    (lambda q, k: maskc.topk_blocks(q, k, -1), maskc.MaskValueError, "r must be an integer"),
    (lambda q, k: maskc.topk_blocks(q[0], k, 2), maskc.MaskInputError, r"\(B, H, L, D\)"),
    (lambda q, k: maskc.topk_blocks(q, k[:, :, :, :3], 2), maskc.MaskInputError, "head dim"),
    (lambda q, k: maskc.topk_blocks(q.numpy(), k, 2), maskc.MaskTypeError, "torch tensor"),
    (lambda q, k: maskc.topk_blocks(q, k, 2, block=0), maskc.MaskValueError, "block"),
    (lambda q, k: maskc.topk_blocks(q, k, 2, mask="causal"), maskc.MaskTypeError, "maskc.Mask"),
    (lambda q, k: maskc.topk_blocks(q, k, 2, mask=maskc.compile(
        "mask m(input d) = same(d)")), maskc.MaskInputError, "runtime inputs"),
    (lambda q, k: maskc.topk_blocks(q, k, 2, scores=q), maskc.MaskTypeError, "not both"),
    (lambda q, k: maskc.topk_blocks(scores=q, r=2), maskc.MaskInputError, "NB, NB"),
    (lambda q, k: maskc.topp_blocks(q, k, 1.5), maskc.MaskValueError, r"within \[0, 1\]"),
    (lambda q, k: maskc.topp_blocks(q, k, 0.5, min_blocks=3, max_blocks=2),
     maskc.MaskValueError, "more than max_blocks"),
    (lambda q, k: maskc.vertical_slash(q, k, 2, 2, last_q=0), maskc.MaskValueError, "last_q"),
    (lambda q, k: maskc.topk_blocks(q, k, 2, backend="triton"), maskc.MaskValueError,
     "backend"),
])
def test_misuse_is_a_mask_error(call, error, message):
    q, k = qk(1, 2, 1, 16, 16)
    with pytest.raises(error, match=message):
        call(q, k)
