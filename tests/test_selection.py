"""Masks chosen from the content (LANGUAGE.md section 8): select, keys, diagonals.

Dense masks against a brute-force formula written here from the section's text, tile
classes against brute force from those dense masks, the checker's and the inputs' errors.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

import maskc
from maskc.testing import assert_attention_matches, chosen_specs, runtime_inputs, shapes

SPEC = ("mask m(input idx, input c, input d) = causal & (window(before = 2, after = 0) | "
        "blocks(4, select(idx)) | keys(c) | diagonals(d))")


def brute(Lq, Lk, H, B, idx, c, d, block=4):
    """Section 8 by the letter: (q, k) kept when the static part keeps it and the key block
    is listed in idx[b, h, p // block] (p >= 0), k in c[h], or p - k in d."""
    idx = np.asarray(idx).reshape((1,) * (4 - np.ndim(idx)) + np.shape(idx))
    c = np.asarray(c).reshape((1,) * (3 - np.ndim(c)) + np.shape(c))
    d = np.asarray(d).reshape((1,) * (3 - np.ndim(d)) + np.shape(d))
    out = np.zeros((B, H, Lq, Lk), bool)
    for b in range(B):
        for h in range(H):
            ib, cb, db = (x[min(b, x.shape[0] - 1), min(h, x.shape[1] - 1)] for x in (idx, c, d))
            for q in range(Lq):
                p = q + Lk - Lq
                for k in range(Lk):
                    chosen = ((p >= 0 and k // block in set(ib[p // block].tolist()))
                              or k in set(cb.tolist()) or (p - k) in set(db.tolist()))
                    out[b, h, q, k] = k <= p and (p - k <= 2 or chosen)
    return out


def tiles_are_sound(st, want, bq, bk):
    B, H, Lq, Lk = want.shape
    nq, nk = st.shape[-2:]
    pad = np.zeros((B, H, nq * bq, nk * bk), bool)
    valid = np.zeros_like(pad)
    pad[..., :Lq, :Lk] = want
    valid[..., :Lq, :Lk] = True
    t = pad.reshape(B, H, nq, bq, nk, bk)
    v = valid.reshape(B, H, nq, bq, nk, bk)
    anyk, allk = t.any(axis=(3, 5)), (t | ~v).all(axis=(3, 5))
    return not (anyk & (st == 0)).any() and not (~allk & (st == 2)).any()


@pytest.mark.parametrize("seed", range(12))
def test_dense_and_tiles_match_the_definition(seed):
    rng = np.random.default_rng(seed)
    m = maskc.compile(SPEC)
    Lq, Lk = (int(x) for x in rng.integers(1, 30, size=2))
    H, B = int(rng.integers(1, 3)), int(rng.integers(1, 3))
    nb = -(-Lk // 4)
    r = int(rng.integers(0, 4))
    idx = rng.integers(-1, nb, size=(B, H, nb, r))  # duplicates and padding included
    c = rng.integers(-3, Lk, size=(H, 3))
    d = rng.integers(-1, Lk, size=(int(rng.integers(0, 4)),))
    want = brute(Lq, Lk, H, B, idx, c, d)
    got = m.dense(Lq, Lk, heads=H, idx=idx, c=c, d=d)
    assert got.shape == (B, H, Lq, Lk) and np.array_equal(got, want)
    for bq, bk in ((4, 4), (2, 8), (8, 2), (3, 5), (16, 16)):
        st = m.block_map(Lq, Lk, heads=H, block_q=bq, block_k=bk, idx=idx, c=c, d=d).states()
        assert tiles_are_sound(st, want, bq, bk), (bq, bk)


def test_a_chosen_tile_is_full_and_the_rest_empty():
    """Tiles aligned with the blocks: exactly the listed ones are visited, as full tiles."""
    m = maskc.compile("mask m(input idx) = blocks(16, select(idx))")
    idx = np.array([[0, 2], [1, -1], [3, 3], [-1, -1]])  # 64 tokens, 4 blocks
    st = m.block_map(64, block_q=16, idx=idx).states()[0, 0]
    want = np.zeros((4, 4), np.int8)
    for i, row in enumerate(idx):
        want[i, row[row >= 0]] = 2
    assert np.array_equal(st, want)
    bm = m.block_map(64, block_q=16, idx=idx)
    assert bm.stats["candidates"] == 4  # the support lists the chosen blocks: no others


def test_selection_broadcasts_over_batch_and_heads():
    m = maskc.compile("mask m(input idx) = blocks(2, select(idx))")
    per_head = np.array([[[0], [1]], [[1], [0]]])  # (Hx=2, NB=2, r=1)
    got = m.dense(4, heads=2, idx=per_head)
    assert got.shape == (2, 4, 4)
    assert got[0, 0, :2].all() and not got[0, 0, 2:].any()
    assert got[1, 0, 2:].all() and not got[1, 0, :2].any()
    shared = m.dense(4, heads=3, idx=per_head[0])  # (NB, r): every head
    assert (shared == shared[0]).all()
    batched = m.dense(4, heads=2, idx=per_head[None].repeat(3, axis=0))
    assert batched.shape == (3, 2, 4, 4) and np.array_equal(batched[1], got)


def test_a_query_block_before_the_keys_keeps_nothing():
    """Lq > Lk: query rows with p < 0 are in block p // B < 0, which keeps nothing."""
    m = maskc.compile("mask m(input idx) = blocks(4, select(idx))")
    got = m.dense(10, 4, idx=np.array([[0]]))
    assert not got[0, :6].any() and got[0, 6:].all()


@pytest.mark.parametrize("spec, message, col", [
    ("mask m(input x) = select(x)", "only allowed inside blocks(B, ...)", 19),
    ("mask m(input x) = blocks(4, keys(x))", "cannot be used inside blocks", 29),
    ("mask m(input x, input y) = within(y, diagonals(x))", "cannot be used inside within", 38),
    ("mask m(input x) = same(x) | keys(x)", "used as a list of keys or diagonals per head here, "
     "but as ids (same/within) by same() at 1:19", 29),
    ("mask m(input x) = blocks(4, select(x)) & blocks(8, select(x))",
     "key blocks of 8 tokens here, but as a selection of key blocks of 4 tokens", 52),
    ("mask m = keys(3)", "takes a runtime input", 15),
])
def test_the_checker_locates_misuse(spec, message, col):
    with pytest.raises(maskc.MaskTypeError) as info:
        maskc.compile(spec)
    assert message in str(info.value)
    assert info.value.column == col


def test_keys_and_diagonals_may_share_an_input():
    m = maskc.compile("mask m(input x) = keys(x) | diagonals(x)")
    got = m.dense(4, x=np.array([0]))
    assert np.array_equal(got[0], np.eye(4, dtype=bool) | (np.arange(4) == 0)[None, :])


@pytest.mark.parametrize("given, message", [
    (dict(idx=np.zeros((4, 1), int)), r"must have shape \(3, r\), \(Hx, 3, r\) or"),
    (dict(idx=np.full((3, 2), 3)), r"entry 3 at \[0, 0\], not below the number of key blocks"),
    (dict(idx=np.zeros((3, 1))), "must hold integers"),
    (dict(idx=np.zeros((3, 1), bool)), "must hold integers"),
    (dict(idx=np.zeros((3, 3, 1), int)), "lists 3 heads, but there are 2"),
    (dict(idx=np.zeros((2, 1, 3, 1), int), c=np.zeros((3, 1, 1), int)), "disagree on the batch"),
    (dict(c=np.array([1, 10])), r"input 'c' has entry 10 at \[1\], not below kv_len \(10\)"),
    (dict(c=np.zeros((2, 2, 2, 2), int)), r"must have shape \(r,\), \(Hx, r\) or \(Bx, Hx, r\)"),
])
def test_bad_selections_are_mask_input_errors_on_every_entry(given, message):
    m = maskc.compile("mask m(input idx, input c) = blocks(4, select(idx)) | keys(c)")
    inputs = {"idx": np.zeros((3, 1), int), "c": np.zeros(1, int), **given}
    for call in (lambda: m.dense(10, heads=2, **inputs),
                 lambda: m.block_map(10, heads=2, **inputs),
                 lambda: m.plan(10, heads=2, target="reference", **inputs)):
        with pytest.raises(maskc.MaskInputError, match=message):
            call()


def test_show_draws_a_selection_given_on_the_command_line(tmp_path, capsys):
    from maskc.cli import main
    f = tmp_path / "sel.mask"
    f.write_text("mask m(input idx, input c) = blocks(16, select(idx)) | keys(c)\n")
    rows = np.array([[1], [0], [3], [2]])  # block i keeps block rows[i]
    np.save(tmp_path / "idx.npy", rows)
    assert main(["show", str(f), "--q-len", "64", "--block", "16", "-i",
                 f"idx={tmp_path / 'idx.npy'}", "-i", "c=63"]) == 0
    out = capsys.readouterr().out.splitlines()
    grid = [line.strip() for line in out if set(line.strip()) <= set("█▒·") and line.strip()]
    assert grid == ["·█·▒", "█··▒", "···█", "··█▒"], out  # the key 63 is in the last tile
    assert main(["show", str(f), "--q-len", "64", "-i", "idx=random:2", "-i", "c=1,2"]) == 0
    assert main(["show", str(f), "--q-len", "64", "-i", "idx=random:9"]) == 1
    assert "needs 0 <= R <= 4" in capsys.readouterr().err


# ---------------------------------------------------------------- the kernels

def _qkv(B, H, Lq, Lk, D=16, seed=0):
    import torch
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, L, D, generator=g, dtype=torch.float32, requires_grad=True)
            for L in (Lq, Lk, Lk)]


@pytest.mark.parametrize("backend", ["triton", "flex-eager"])
@pytest.mark.parametrize("Lq, Lk", [(70, 70), (37, 70), (70, 37)])
def test_kernels_agree_with_the_reference(backend, Lq, Lk):
    """Forward, log-sum-exp and (Triton) gradients equal the float64 reference: selected
    tiles that are full, partial and neither, per head and per batch entry."""
    import torch
    m = maskc.compile(SPEC.replace("blocks(4,", "blocks(8,"))
    rng = np.random.default_rng(Lq * Lk)
    B, H, nb = 2, 2, -(-Lk // 8)
    xs = dict(idx=rng.integers(-1, nb, size=(B, H, nb, 3)), c=rng.integers(-1, Lk, size=(H, 2)),
              d=rng.integers(-1, Lk, size=(3,)))
    q, k, v = _qkv(B, H, Lq, Lk)
    want, want_lse = m.attention(q, k, v, backend="reference", return_lse=True, **xs)
    t = maskc.Tiles(16, 16)
    config = maskc.KernelConfig(t, t, t) if backend == "triton" else None
    with torch.set_grad_enabled(backend == "triton"):  # FlexAttention on the CPU: no backward
        got, lse = m.attention(q, k, v, backend=backend, return_lse=True, config=config, **xs)
    torch.testing.assert_close(got, want.to(got.dtype), atol=2e-5, rtol=1e-4)
    fin = torch.isfinite(want_lse)
    assert torch.equal(fin, torch.isfinite(lse))
    torch.testing.assert_close(lse[fin], want_lse[fin].to(lse.dtype), atol=2e-5, rtol=1e-4)
    if backend != "triton":
        return
    dout = torch.randn_like(want)
    want_g = torch.autograd.grad(want, (q, k, v), dout.to(want.dtype))
    got_g = torch.autograd.grad(got, (q, k, v), dout)
    for a, b in zip(got_g, want_g):
        torch.testing.assert_close(a, b.to(a.dtype), atol=5e-5, rtol=1e-4)


def test_a_new_selection_needs_no_new_kernel_and_no_new_plan():
    """The selection is kernel data: new entries change the answer, not the generated code;
    tensors key the plan by shape, so a training loop plans once."""
    import torch
    from maskc.backends.triton.codegen import generate
    m = maskc.compile("mask m(input idx) = causal & blocks(16, select(idx))")
    src, args = generate(m.ir)
    assert [a.kind for a in args] == ["select"] and "for j in range(0, sel_idx_r):" in src
    q, k, v = _qkv(1, 1, 64, 64)
    outs, plans = [], []
    for row in ([0, 1, 2, 3], [0, -1, -1, -1], [3, 2, -1, 0]):
        idx = torch.tensor(row)[None, :].repeat(4, 1)
        outs.append(m.attention(q, k, v, backend="triton", idx=idx))
        ref = m.attention(q, k, v, backend="reference", idx=idx)
        torch.testing.assert_close(outs[-1], ref.to(outs[-1].dtype), atol=2e-5, rtol=1e-4)
        plans.append(m.plan(64, target="triton", device="cpu", dtype="float32", head_dim=16,
                            idx=idx))
    assert not torch.allclose(outs[0], outs[1])
    assert plans[0] is plans[1] is plans[2] and plans[0].chosen is not None


# ---------------------------------------------------------------- tables merged on the device

DEVICE_SPECS = [
    SPEC.replace("blocks(4,", "blocks(8,"),
    "mask m(input idx) = blocks(8, select(idx))",
    "mask m(input idx) = causal & (sink(9) | blocks(16, select(idx)))",
    "mask m(input idx, input c) = heads { 0: blocks(8, select(idx)), _: keys(c) } | window(1)",
    "mask m(input idx) = blocks(2, blocks(3, select(idx))) & ~prefix(5)",
]


def _device_inputs(m, Lk, H, B, rng):
    import torch
    from maskc.ir.inputs import input_kinds
    out = {}
    for name, kind in input_kinds(m.ir).items():
        if kind.kind == "select":
            nb = -(-Lk // kind.block)
            out[name] = torch.from_numpy(rng.integers(-1, nb, size=(B, H, nb, 3)))
        else:
            out[name] = torch.from_numpy(rng.integers(-1, Lk, size=(H, 3)))
    return out


def _merged_states(plan, kernel, xs):
    """Dense tile states (B, H, nq, nk) of the tables the device merge builds."""
    import torch
    bm = plan.block_map(kernel)
    rows = plan.chosen.tables(bm, xs, kernel, torch.device("cpu"))
    nq, nk = bm.n_q_tiles, bm.n_k_tiles
    B = max(rows[-4] if kernel != "dkdv" else rows[-3], 1)
    if kernel == "dkdv":
        fn, fi, fo, pn, pi, po, hg, TB, G, NK = rows
        st = np.zeros((TB, plan.heads, nq, nk), np.int8)
        for b, h, j in np.ndindex(TB, plan.heads, nk):
            g = int(hg[h])
            for num, idx, off, state in ((pn, pi, po, 1), (fn, fi, fo, 2)):
                n, o = int(num[b, g, j]), int(off[b, g, j])
                qts = idx[o:o + n].tolist()
                assert qts == sorted(set(qts)), "query tiles sorted, each once"
                for qt in qts:
                    assert st[b, h, qt, j] == 0, "a tile both full and partial"
                    st[b, h, qt, j] = state
        return st
    fnum, fidx, pnum, pidx, live, hg, TB, G, NQ, FW, PW = rows
    st = np.zeros((TB, plan.heads, nq, nk), np.int8)
    for b, h, i in np.ndindex(TB, plan.heads, nq):
        g = int(hg[h])
        for num, idx, state in ((pnum, pidx, 1), (fnum, fidx, 2)):
            kts = idx[b, g, i, :int(num[b, g, i])].tolist()
            assert kts == sorted(set(kts)), "key tiles sorted, each once"
            for kt in kts:
                assert st[b, h, i, kt] == 0, "a tile both full and partial"
                st[b, h, i, kt] = state
    return st


@pytest.mark.parametrize("spec", DEVICE_SPECS)
@pytest.mark.parametrize("seed", range(3))
def test_tables_merged_on_the_device_are_sound(spec, seed):
    """Every kept pair lies in a visited tile and a full tile keeps all its pairs, for the
    forward tables and the transposed dk/dv ones; static full tiles stay full."""
    import torch
    m = maskc.compile(spec)
    rng = np.random.default_rng(seed)
    Lq, Lk = (int(x) for x in rng.integers(1, 60, size=2))
    H, B = 2, int(rng.integers(1, 3))
    xs = _device_inputs(m, Lk, H, B, rng)
    t = maskc.Tiles(int(rng.choice([4, 8, 16])), int(rng.choice([4, 8, 16])))
    plan = m.plan(Lq, Lk, heads=H, target="triton", device="cpu", dtype="float32",
                  head_dim=16, config=maskc.KernelConfig(t, t, maskc.Tiles(t.block_k, t.block_q)),
                  **xs)
    assert plan.chosen is not None
    want = m.dense(Lq, Lk, heads=H, **{k: v.numpy() for k, v in xs.items()})
    want = want if want.ndim == 4 else want[None]
    for kernel in ("fwd", "dkdv"):
        st = _merged_states(plan, kernel, xs)
        bq, bk = plan.tiles[kernel].block_q, plan.tiles[kernel].block_k
        full = np.broadcast_to(want, (max(st.shape[0], want.shape[0]),) + want.shape[1:])
        assert tiles_are_sound(np.broadcast_to(st, (full.shape[0],) + st.shape[1:]), full, bq, bk)
        static = plan.block_map(kernel).states()
        assert (st[:, :, :, :][np.broadcast_to(static == 2, st.shape)] == 2).all()


def test_the_per_step_path_never_waits_for_the_device(monkeypatch):
    """With the estimators' tensors, checking, merging and passing a selection reads nothing
    back: .item(), .cpu(), .tolist(), .numpy(), bool()/int() of a tensor and
    torch.cuda.synchronize all raise while it runs."""
    import torch
    m = maskc.compile("mask m(input idx, input c, input d) = causal & (window(before = 7, "
                      "after = 0) | blocks(16, select(idx)) | keys(c) | diagonals(d))")
    q, k, _ = _qkv(1, 2, 128, 128)
    with torch.no_grad():
        idx = maskc.topk_blocks(q, k, 3, block=16, mask=maskc.compile("mask c = causal"))
        c, d = maskc.vertical_slash(q, k, 4, 4)
    xs = dict(idx=idx, c=c, d=d)
    plan = m.plan(128, heads=2, target="triton", device="cpu", dtype="float32", head_dim=16,
                  **xs)
    for kernel in plan.tiles:  # the static tables: built once per plan, on the host
        plan.block_map(kernel)

    def refuse(*args, **kwargs):
        raise AssertionError("the per-step path read a tensor back")
    for name in ("item", "cpu", "tolist", "numpy", "__bool__", "__int__", "__index__",
                 "__float__"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    monkeypatch.setattr(torch.cuda, "synchronize", refuse)
    plan.chosen.check(xs)
    for kernel in plan.tiles:
        plan.chosen.tables(plan.block_map(kernel), xs, kernel, torch.device("cpu"))
    for name, kind in (("idx", "select"), ("c", "listed"), ("d", "listed")):
        plan.chosen.arguments(name, kind, xs, torch.device("cpu"))
    monkeypatch.undo()
    with pytest.raises(AssertionError, match="read a tensor back"):  # the patch does bite
        monkeypatch.setattr(torch.Tensor, "item", refuse)
        torch.ones(1).item()


def test_a_tensor_is_checked_once_per_version():
    """A user's tensor is read back on first sight; again only after an in-place change,
    which is then caught before any kernel runs."""
    import torch
    m = maskc.compile("mask m(input idx) = blocks(16, select(idx))")
    q, k, v = _qkv(1, 1, 64, 64)
    idx = torch.tensor([[0], [1], [2], [3]])
    plan = m.plan(64, target="triton", device="cpu", dtype="float32", head_dim=16, idx=idx)
    calls = []
    real = torch.Tensor.nonzero

    def counting(self, *a, **kw):
        calls.append(1)
        return real(self, *a, **kw)
    torch.Tensor.nonzero = counting
    try:
        plan.chosen.check({"idx": idx})
        plan.chosen.check({"idx": idx})
        assert len(calls) == 1
        idx[2, 0] = 4  # NB = 4: out of range
        with pytest.raises(maskc.MaskInputError, match=r"entry 4 at \[2, 0\], not below the "
                                                       "number of key blocks"):
            plan.chosen.check({"idx": idx})
        with pytest.raises(maskc.MaskInputError, match="entry 4"):
            m.attention(q, k, v, backend="triton", idx=idx)
    finally:
        torch.Tensor.nonzero = real


def test_a_negated_selection_uses_host_tables():
    """Where the mask is not monotone in a selection, its tiles come from block analysis of
    the values (on the host): still exact."""
    import torch
    m = maskc.compile("mask m(input c) = causal & ~keys(c)")
    c = torch.tensor([0, 5])
    plan = m.plan(32, target="triton", device="cpu", dtype="float32", head_dim=16, c=c)
    assert plan.chosen is None
    q, k, v = _qkv(1, 1, 32, 32)
    torch.testing.assert_close(m.attention(q, k, v, backend="triton", c=c),
                               m.attention(q, k, v, backend="reference", c=c).float(),
                               atol=2e-5, rtol=1e-4)


@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(src=chosen_specs(), shape=shapes(max_len=48, max_heads=2))
def test_every_backend_agrees_with_the_reference(src, shape):
    """Hypothesis over specs mixing static primitives with selections, keys and diagonals:
    Triton (tensors: tables merged on the device; arrays: host tables) forward and backward,
    FlexAttention's mask_mod forward, each against the float64 reference."""
    import torch
    m = maskc.compile(src)
    arrays = runtime_inputs(m, shape["kv_len"], seed=1)
    tensors = {k: torch.from_numpy(np.asarray(v)) for k, v in arrays.items()}
    for inputs in (tensors, arrays):
        assert_attention_matches(lambda q, k, v, **kw: m.attention(
            q, k, v, backend="triton", return_lse=True, **kw), m, inputs=inputs, **shape)
    with torch.no_grad():
        assert_attention_matches(lambda q, k, v, **kw: m.attention(
            q, k, v, backend="flex-eager", **kw), m, inputs=arrays, grad=False, **shape)
