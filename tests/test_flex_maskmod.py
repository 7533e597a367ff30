"""The FlexAttention ``mask_mod`` lowering (backends/flex.py, part 1) against the reference.

``create_mask`` evaluates a mask_mod under ``torch.vmap``, so these tests also check that the
lowering uses only vmap-safe tensor operations. Every mask must equal ``Mask.dense`` exactly.
"""

from __future__ import annotations

import pathlib
import re

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from torch.nn.attention.flex_attention import create_block_mask, create_mask

import maskc
from maskc import ir
from maskc.backends import flex, reference
from maskc.errors import MaskError, Source, Span
from maskc.ir.inputs import input_kinds

try:
    import strategies as strat
except ImportError:  # pragma: no cover - the strategies module is optional
    strat = None

DOC = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 4, 4, 4, 4, 4, 4, 4,
                4, 4, 5, 5, 5, 5, 6, 6, 7, 7, 7, 7, 7, 7, 7, 7, 8, 8, 8, 8, 8, 8, 8, 8])
SIZES = [(17, 17), (13, 29), (29, 13), (1, 20), (40, 40), (33, 48)]


def flex_dense(mdef: ir.MaskDef, q_len, kv_len, heads, **inputs) -> np.ndarray:
    """``create_mask`` of our mask_mod, shaped like ``reference.dense``'s answer."""
    q_len, kv_len = maskc.analysis.sizes.resolve_lengths(mdef, q_len, kv_len)
    xs = flex.torch_inputs(mdef, kv_len, inputs)
    B = max([x.shape[0] for x in xs.values()] or [1])
    mod = flex.make_mask_mod(mdef, q_len, kv_len, heads, xs)
    out = create_mask(mod, B, heads, q_len, kv_len, device="cpu").numpy()
    return out if any(x.shape[0] > 1 for x in xs.values()) else out[0]


def check(mdef: ir.MaskDef, q_len=None, kv_len=None, heads=1, **inputs):
    want = reference.dense(mdef, q_len, kv_len, heads, **inputs)
    got = flex_dense(mdef, q_len, kv_len, heads, **inputs)
    assert got.dtype == np.bool_ and got.shape == want.shape
    assert np.array_equal(got, want)


def doc_for(kv_len: int) -> np.ndarray:
    return np.resize(DOC, kv_len) if kv_len > len(DOC) else DOC[:kv_len]


# ---------------------------------------------------------------- 1-D masks, all sizes

MASKS_1D = [
    "all", "none", "causal", "window(3)", "window(before = 4, after = 1)",
    "window(2, dilation = 3)", "window(before = 3, after = 0, dilation = 2)",
    "global([0, 5, 6])", "global(3..9)", "global([])", "sink(4)", "prefix(7)", "chunk(5)",
    "causal & chunk(8)", "strided(4)", "fixed(6, 2)", "causal | prefix(5)",
    "~causal", "window(4) - causal", "causal & (window(before = 3, after = 0) | strided(4))",
    "causal & (chunk(4) | fixed(4, 1))", "causal & (window(before = 5, after = 0) | sink(2))",
    # blocks, with random and layout; a nested blocks
    "blocks(4, window(1) | global([0]))", "blocks(5, causal)",
    "blocks(4, window(1) | global([0]) | random(2, seed = 7))",
    "blocks(3, random(1))", "blocks(6, random(2, seed = 11)) & causal",
    "blocks(4, layout([[1, 0, 1], [0, 1, 0], [1, 1, 1]]))",
    "blocks(7, layout([[0, 1], [1, 0], [1, 1], [0, 0], [1, 0]]) | random(1, seed = 2))",
    "blocks(2, blocks(3, random(1, seed = 5) | causal))",
    "blocks(3, where p == k + 1 or Lq < 6 and k == Lk - 1)",
    # predicates
    "where q <= k", "where p >= k and (p - k) % 3 == 0", "where abs(p - k) * 2 < 7",
    "where min(p, k) // 4 == max(p - 1, k + 1) // 4", "where h == 0 or k == Lk - 1",
    "where q == Lq - 1 or not (k < 3)", "where -p + k >= -2 and k - p <= 1",
    "where min(p, 5, k) == 5 or max(k, 3) == 3", "where true", "where false",
    "heads {0..2: causal & window(2), 2: window(before = 3, after = 0, dilation = 2), "
    "_: where h * 3 < k}",
    "heads {[1, 3]: sink(2), _: heads {0: causal, _: ~causal}}",
]


@pytest.mark.parametrize("src", MASKS_1D)
def test_one_dimensional(src):
    mdef = maskc.compile(f"mask m = {src}").ir
    for q_len, kv_len in SIZES:
        heads = 4 if "h" in src else 1
        try:
            want = reference.dense(mdef, q_len, kv_len, heads)
        except MaskError as err:  # e.g. random(2) with a single key block
            with pytest.raises(type(err)):
                flex_dense(mdef, q_len, kv_len, heads)
            continue
        assert np.array_equal(flex_dense(mdef, q_len, kv_len, heads), want), (q_len, kv_len)


# ---------------------------------------------------------------- runtime inputs

MASKS_DOC = [
    "same(doc)", "causal & same(doc)", "within(doc, causal & window(before = 2, after = 0))",
    "within(doc, prefix(2) | where Lq > 4 and k == Lk - 1)",
    "within(doc, where q == p and Lq == Lk and (Lq - q) % 2 == 0)",
    "within(doc, blocks(2, window(1) | random(1, seed = 3)))",
    "within(doc, within(doc, causal)) | sink(1)", "same(doc) & ~within(doc, chunk(2))",
    "heads {0: within(doc, causal), _: same(doc) & where h == 1}",
]


@pytest.mark.parametrize("src", MASKS_DOC)
def test_runtime_inputs(src):
    mdef = maskc.compile(f"mask m(input doc) = {src}").ir
    for q_len, kv_len in SIZES:
        doc = doc_for(kv_len)
        check(mdef, q_len, kv_len, 2, doc=doc)
        check(mdef, q_len, kv_len, 2, doc=torch.from_numpy(doc).to(torch.int32))
        rng = np.random.default_rng(q_len * 100 + kv_len)
        check(mdef, q_len, kv_len, 2, doc=rng.integers(0, 3, size=kv_len))  # unsorted ids


def test_batched_inputs():
    mdef = maskc.compile("mask m(input doc, input seg) = "
                         "within(doc, causal) | same(seg) & window(1)").ir
    kv = 23
    doc = np.stack([doc_for(kv), np.sort(np.random.default_rng(0).integers(0, 4, kv))])
    seg = np.arange(kv)[None, :] // 5                      # (1, Lk) broadcasts over B
    check(mdef, 19, kv, 3, doc=doc, seg=seg)
    check(mdef, 19, kv, 3, doc=torch.from_numpy(doc), seg=torch.from_numpy(seg[0]))


# ---------------------------------------------------------------- grids

MASKS_GRID = [
    ("grid(y = 5, x = 7)", "neighborhood(3)"),
    ("grid(y = 5, x = 7)", "neighborhood((3, 4))"),
    ("grid(y = 6, x = 7)", "neighborhood((2, 3), dilation = (2, 2))"),
    ("grid(y = 6, x = 9)", "neighborhood((3, 5), stride = (2, 3))"),
    ("grid(y = 6, x = 8)", "neighborhood((4, 3), causal = (true, false), stride = (2, 1))"),
    ("grid(t = 4, y = 5, x = 6)",
     "neighborhood((2, 3, 3), dilation = (1, 1, 2), causal = (true, false, true))"),
    ("grid(8, 9)", "neighborhood(3, dilation = 2, causal = true, stride = 2)"),
    ("grid(y = 6, x = 10)", "tile(3, 4)"),
    ("grid(t = 3, y = 4, x = 5)", "tile((2, 3, 2)) | where q.t == k.t and k.x == 0"),
    ("grid(y = 5, x = 7)", "where abs(q.y - k.y) + abs(q.x - k.x) <= 2"),
    ("grid(6, 5)", "where q[0] >= k[0] and q[1] % 2 == k[1] % 2"),
    ("grid(y = 5, x = 7)", "causal & neighborhood(3) | global([0])"),
    ("grid(y = 4, x = 9)", "heads {0: neighborhood(3), 1: tile(2, 3), _: causal}"),
]


@pytest.mark.parametrize("grid, src", MASKS_GRID)
def test_grids(grid, src):
    check(maskc.compile(f"mask m over {grid} = {src}").ir, heads=3)


EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
SMALL = {"b": 4, "w": 2, "n": 8, "s": 2, "c": 1, "height": 6, "width": 7, "h": 6, "kernel": 3,
         "r": 2, "dh": 2, "frames": 3, "w2": 5, "local_heads": 2}


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.mask")), ids=lambda p: p.stem)
def test_examples(path):
    text = path.read_text()
    for name in re.findall(r"^mask\s+(\w+)", text, flags=re.MULTILINE):
        sig = re.search(rf"^mask\s+{name}\s*\((.*?)\)\s*(?:over|=)", text,
                        flags=re.MULTILINE | re.DOTALL)
        declared = set(re.findall(r"(\w+)\s*=", sig.group(1))) if sig else set()
        m = maskc.compile(path, name=name, **{k: v for k, v in SMALL.items() if k in declared})
        for q_len, kv_len in ([(None, None)] if m.grid else [(40, 40), (23, 40)]):
            check(m.ir, q_len, kv_len, 8, **inputs_for(m.ir, kv_len or m.ir.grid.numel, 8))


def inputs_for(mdef: ir.MaskDef, kv_len: int, heads: int, seed: int = 0) -> dict:
    """Document ids, or random selections / key lists (per head, some padding) by kind."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, kind in input_kinds(mdef).items():
        if kind.kind == "ids":
            out[name] = doc_for(kv_len)
        elif kind.kind == "select":
            nb = kind.rows(kv_len, mdef.grid)
            out[name] = rng.integers(-1, nb, (heads, nb, min(3, nb)))
        else:
            out[name] = rng.integers(-1, kv_len, (heads, 5))
    return out


@pytest.mark.parametrize("src, block", [
    ("causal & (window(before = 7, after = 0) | blocks(8, select(x)))", 8),
    ("blocks(2, blocks(3, select(x)))", 6),
    ("heads { 0: blocks(4, select(x)), _: causal } & ~prefix(3)", 4),
    ("same(doc) & causal & blocks(4, select(x))", 4),
])
@pytest.mark.parametrize("q_len, kv_len", [(40, 40), (23, 40), (40, 23), (1, 33)])
def test_selections(src, block, q_len, kv_len):
    m = maskc.compile(f"mask m(input x{', input doc' if 'doc' in src else ''}) = {src}").ir
    rng = np.random.default_rng(q_len * kv_len)
    nb = -(-kv_len // block)
    for x in (rng.integers(-1, nb, (nb, 2)), rng.integers(-1, nb, (2, 3, nb, 4)),
              np.zeros((3, nb, 0), np.int64)):
        check(m, q_len, kv_len, 3, x=x, **({"doc": doc_for(kv_len)} if m.inputs[1:] else {}))


@pytest.mark.parametrize("src", ["causal & (sink(2) | keys(c) | diagonals(d))",
                                 "keys(c) & diagonals(c)",
                                 "same(doc) & (keys(c) | diagonals(d))",
                                 "~keys(c) & window(3)"])
@pytest.mark.parametrize("q_len, kv_len", [(40, 40), (23, 40), (40, 23)])
def test_keys_and_diagonals(src, q_len, kv_len):
    used = sorted(set(re.findall(r"\b(?:keys|diagonals|same)\((\w+)", src)))
    m = maskc.compile(f"mask m({', '.join('input ' + x for x in used)}) = {src}").ir
    rng = np.random.default_rng(q_len + kv_len)
    xs = {"c": rng.integers(-1, kv_len, (2, 3, 6)), "d": rng.integers(-1, kv_len, (7,)),
          "doc": doc_for(kv_len)}
    check(m, q_len, kv_len, 3, **{k: v for k, v in xs.items() if k in m.inputs})


# ---------------------------------------------------------------- errors

def _span(col=5):
    return Span(Source("mask m = something odd\n", "x.mask"), 1, col, 1, col + 4)


def test_missing_lowering_is_located():
    class Odd(ir.Node):
        __slots__ = ()

    mdef = ir.MaskDef("m", (), None, ir.And((ir.Causal(), Odd(span=_span(10)))))
    with pytest.raises(MaskError) as err:
        flex.make_mask_mod(mdef, 8, 8, 1, {})
    assert "Odd" in err.value.message and (err.value.line, err.value.column) == (1, 10)


def test_errors_match_the_reference():
    cases = [
        ("mask m = heads {0: causal, 2: window(1)}", 3),   # head 1 uncovered
        ("mask m = blocks(8, random(3))", 1),              # 2 key blocks at Lk = 16
    ]
    for src, heads in cases:
        mdef = maskc.compile(src).ir
        with pytest.raises(MaskError) as want:
            reference.dense(mdef, 16, 16, heads)
        with pytest.raises(type(want.value)) as got:
            flex.make_mask_mod(mdef, 16, 16, heads, {})
        assert (got.value.line, got.value.column) == (want.value.line, want.value.column)
        assert got.value.message == want.value.message
    # an arm no head takes is never lowered, as in the reference
    check(maskc.compile("mask m = heads {0..2: causal, 1: blocks(8, random(3)), _: all}").ir,
          16, 16, 2)


def test_input_errors():
    mdef = maskc.compile("mask m(input doc) = same(doc)").ir
    with pytest.raises(maskc.MaskInputError):
        flex.make_mask_mod(mdef, 8, 8, 1, {})
    with pytest.raises(maskc.MaskInputError):
        flex.make_mask_mod(mdef, 8, 8, 1, {"doc": torch.zeros(7, dtype=torch.long)})
    with pytest.raises(maskc.MaskInputError):
        flex.make_mask_mod(mdef, 8, 8, 1, {"doc": torch.zeros(8)})


def test_block_mask_and_int32_indices():
    """The mask_mod also builds a BlockMask, and takes int32 indices (as compiled kernels do)."""
    m = maskc.compile("mask m(input doc) = within(doc, causal & window(before = 3, after = 0))"
                      " | blocks(8, random(1, seed = 1))")
    doc = torch.from_numpy(doc_for(40))
    mod = flex.make_mask_mod(m.ir, 37, 40, 2, {"doc": doc})
    bm = create_block_mask(mod, None, 2, 37, 40, device="cpu", BLOCK_SIZE=16)
    assert bm.shape[-2:] == (37, 40)
    q = torch.arange(37, dtype=torch.int32)[:, None]
    k = torch.arange(40, dtype=torch.int32)[None, :]
    for h in range(2):
        got = mod(torch.tensor(0), torch.tensor(h, dtype=torch.int32), q, k).numpy()
        assert np.array_equal(got, m.dense(37, 40, 2, doc=doc)[h])


def test_mask_api():
    """``Mask.mask_mod`` goes through this lowering."""
    m = maskc.compile("mask m(input doc) = within(doc, causal) | heads {0: sink(2), _: none}")
    doc = doc_for(30)
    mod = m.mask_mod(21, 30, 2, doc=doc)
    got = create_mask(mod, 1, 2, 21, 30, device="cpu")[0].numpy()
    assert np.array_equal(got, m.dense(21, 30, 2, doc=doc))


# ---------------------------------------------------------------- random IR

_SETTINGS = settings(max_examples=150, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _agree(mdef, kw):
    try:
        want = reference.dense(mdef, **kw)
    except MaskError as err:
        with pytest.raises(type(err)):
            flex_dense(mdef, **kw)
        return
    got = flex_dense(mdef, **kw)
    assert np.array_equal(got, want)


@pytest.mark.skipif(strat is None, reason="tests/strategies.py is not there")
@_SETTINGS
@given(st.data())
def test_random_masks(data):
    mdef = data.draw(strat.mask_defs(depth=3))
    _agree(mdef, data.draw(strat.dense_kwargs(mdef)))


@pytest.mark.skipif(strat is None, reason="tests/strategies.py is not there")
@_SETTINGS
@given(st.data())
def test_random_grid_masks(data):
    mdef = data.draw(strat.grid_mask_defs(depth=3))
    _agree(mdef, data.draw(strat.dense_kwargs(mdef)))


# ---------------------------------------------------------------- the generated source

@pytest.mark.parametrize("spec, kw", [
    ("mask m over grid(y = 64, x = 64) = neighborhood(13)", {}),
    ("mask m(input doc) = within(doc, causal & window(before = 3, after = 0)) & same(doc)"
     " | blocks(8, random(1, seed = 1)) | heads {0: sink(2), _: where k == Lk - 1}",
     dict(q_len=37, kv_len=40, heads=2, doc=doc_for(40))),
])
def test_generated_source_is_readable_and_computes_each_value_once(spec, kw):
    """``mask_mod.source`` is the function that runs: every value bound once, constants
    folded, no int64 conversion where 32 bits are exact, a clamp for a plain neighborhood."""
    m = maskc.compile(spec)
    kw = dict(kw)
    mod = m.mask_mod(kw.pop("q_len", None), kw.pop("kv_len", None), kw.pop("heads", 1), **kw)
    src = mod.source
    rhs = [ln.split(" = ", 1)[1] for ln in src.splitlines() if re.match(r"\s+\w+ = ", ln)]
    assert len(rhs) == len(set(rhs)), src
    assert not re.search(r"(%|//|\*) 1\b(?!\d)|[+-] 0\b(?![\d.])", src), src
    assert "int64" not in src and ".item()" not in src
    if "neighborhood" in spec:
        assert "clamp(0, 51)" in src and src.count("//") == 2, src


def test_int64_only_where_needed():
    """A product of positions could pass 32 bits: then (only then) the indices widen."""
    m = maskc.compile("mask m = where p * k < 2000000000")
    assert "torch.int64" in m.mask_mod(100_000, 100_000).source
    check(m.ir, 40, 40)
