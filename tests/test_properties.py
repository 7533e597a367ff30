"""Properties over random IR and random text: the reference composes, the simplifier keeps
meaning, the printer round-trips, the front end never crashes, errors point at the user.

Random IR comes from ``tests/strategies.py``; random text from maskc's own Lark grammar and
from mutations of the example files.
"""

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings, target
from hypothesis import strategies as st

import maskc
from maskc.backends import reference
from maskc import ir
from maskc.frontend.check import check
from maskc.frontend.parser import parse
from maskc.ir.pretty import pretty
from maskc.ir.simplify import simplify
from maskc.ir.verify import verify
from strategies import (Ctx, dense_kwargs, grid_mask_defs, lark_texts,
                              mask_defs, mask_exprs, sizes)

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.mask"))
EXAMPLE_MASKS = [(path, name) for path in EXAMPLES
                 for name in re.findall(r"^mask\s+(\w+)", path.read_text(), re.M)]

PROPS = settings(max_examples=300, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                        HealthCheck.filter_too_much])
ANY_MASK = st.one_of(mask_defs(), mask_defs(), grid_mask_defs())


def _dense(mdef: ir.MaskDef, kw: dict):
    """The reference dense mask, or the MaskError subclass it raised."""
    try:
        return reference.dense(mdef, **kw)
    except maskc.MaskError as err:
        return type(err)


def _is_error(result) -> bool:
    return isinstance(result, type) and issubclass(result, maskc.MaskError)


def _mask(body, inputs=(), grid=None) -> ir.MaskDef:
    return ir.MaskDef("m", tuple(inputs), grid, body)


# Regressions, as IR (explicit examples, so every run checks them).
# causal & window(before = 0, after = 5, dilation = 3) & sink(2): causal_window made
# window(0, dilation = 3) inside an And that the driver did not revisit (not idempotent).
IDEMPOTENCE_REPRO = _mask(ir.And((ir.Causal(), ir.Window(0, 5, 3), ir.Sink(2))))
# none - blocks(1, random(2)) at q_len = kv_len = 1: random(2) needs 2 key blocks, and
# simplify used to drop the erroring term, so dense() stopped raising.
DEAD_ERROR_REPRO = _mask(ir.and_(ir.Const(False), ir.Not(ir.Blocks(1, ir.Random(2, 0)))))


# ---------------------------------------------------------------- the reference composes

@PROPS
@given(data=st.data())
def test_operators_compose_like_numpy(data):
    base = data.draw(ANY_MASK, label="base")
    ctx = Ctx(inputs=base.inputs, grid=base.grid)
    kids = [base.body] + data.draw(st.lists(mask_exprs(ctx, 2), min_size=1, max_size=2),
                                   label="others")
    kw = data.draw(dense_kwargs(base), label="dense")
    parts = [_dense(replace(base, body=k), kw) for k in kids]
    everything = range(len(kids))
    combos = [(ir.and_(*kids), everything, np.logical_and.reduce),
              (ir.or_(*kids), everything, np.logical_or.reduce),
              (ir.not_(kids[0]), [0], lambda xs: ~xs[0]),
              (ir.not_(kids[1]), [1], lambda xs: ~xs[0])]
    for node, used, combine in combos:
        out = _dense(replace(base, body=node), kw)
        inner = [parts[i] for i in used]
        if any(_is_error(p) for p in inner):
            # an error anywhere below (random(r) with too few key blocks) is an error above
            assert _is_error(out), pretty(replace(base, body=node))
            continue
        assert not _is_error(out), pretty(replace(base, body=node))
        expected = combine(inner)
        assert out.shape == expected.shape
        assert np.array_equal(out, expected), pretty(replace(base, body=node))


@pytest.mark.parametrize("q_len, kv_len", [(1, 1), (1, 17), (17, 1), (9, 23), (23, 9)])
def test_operators_compose_at_fixed_sizes(q_len, kv_len):
    doc = np.arange(kv_len) // 4
    kids = [ir.Causal(), ir.Window(2, 1), ir.Same("doc"), ir.Where(
        ir.PBin("<", ir.PBin("%", ir.PVar("p"), ir.PConst(3)), ir.PVar("h")))]
    kw = dict(q_len=q_len, kv_len=kv_len, heads=2, doc=doc)
    parts = [reference.dense(_mask(k, ["doc"]), **kw) for k in kids]
    assert np.array_equal(reference.dense(_mask(ir.and_(*kids), ["doc"]), **kw),
                          np.logical_and.reduce(parts))
    assert np.array_equal(reference.dense(_mask(ir.or_(*kids), ["doc"]), **kw),
                          np.logical_or.reduce(parts))
    assert np.array_equal(reference.dense(_mask(ir.not_(kids[1]), ["doc"]), **kw), ~parts[1])


# ---------------------------------------------------------------- the simplifier

@PROPS
@given(mdef=ANY_MASK, data=st.data())
def test_simplify_keeps_the_dense_mask(mdef, data):
    simple = verify(simplify(mdef))
    kw = data.draw(dense_kwargs(mdef), label="dense")
    before, after = _dense(mdef, kw), _dense(simple, kw)
    # simplify never introduces an error ...
    assert not _is_error(after) or _is_error(before), (pretty(mdef), pretty(simple))
    if not _is_error(before):
        # ... and where the original has a mask, the simplified one has the same mask
        assert np.array_equal(before, after), (pretty(mdef), pretty(simple))


@settings(PROPS, max_examples=100)
@example(mdef=DEAD_ERROR_REPRO, size=(1, 1, 1))
@given(mdef=ANY_MASK, size=sizes(max_len=12))
def test_simplify_keeps_dense_errors(mdef, size):
    q_len, kv_len, heads = size
    if mdef.grid is not None:
        q_len = kv_len = mdef.grid.numel
    kw = dict(q_len=q_len, kv_len=kv_len, heads=heads,
              **{name: np.arange(kv_len) // 3 for name in mdef.inputs})
    if _is_error(_dense(mdef, kw)):
        assert _is_error(_dense(simplify(mdef), kw)), pretty(mdef)


@PROPS
@example(mdef=IDEMPOTENCE_REPRO)
@given(mdef=ANY_MASK)
def test_simplify_is_idempotent(mdef):
    once = simplify(mdef)
    assert simplify(once) == once, (pretty(mdef), pretty(once))


@PROPS
@given(mdef=ANY_MASK)
def test_verify_holds_before_and_after_simplify(mdef):
    verify(mdef)
    out = verify(simplify(mdef))
    for node in ir.walk(out.body):
        if isinstance(node, (ir.And, ir.Or)):
            assert not any(isinstance(t, type(node)) for t in node.terms)
            assert len(set(node.terms)) == len(node.terms) >= 2


# ---------------------------------------------------------------- print -> parse round trip

@PROPS
@given(mdef=ANY_MASK)
def test_pretty_round_trips_strategy_ir(mdef):
    # The strategies keep checker-canonical form (see tests/strategies.py), so the checker
    # alone gives the IR back; compile() adds simplify on top.
    text = pretty(mdef)
    assert check(parse(text)) == mdef, text
    assert maskc.compile(text).ir == simplify(mdef), text


@PROPS
@given(mdef=ANY_MASK)
def test_pretty_round_trips_simplified_ir(mdef):
    simple = simplify(mdef)
    text = pretty(simple)
    assert check(parse(text)) == simple, text
    # compile() simplifies again, which changes nothing (test_simplify_is_idempotent)
    assert maskc.compile(text).ir == simple, text


@pytest.mark.parametrize("path, name", EXAMPLE_MASKS,
                         ids=[f"{p.stem}:{n}" for p, n in EXAMPLE_MASKS])
def test_pretty_round_trips_examples(path, name):
    m = maskc.compile(path, name=name)
    text = m.pretty()
    again = maskc.compile(text)
    assert again.ir == m.ir, text
    assert again.inputs == m.inputs
    assert pretty(again.ir) == text


def test_example_inventory():
    assert len(EXAMPLE_MASKS) >= 12
    assert any("input" in path.read_text() for path, _ in EXAMPLE_MASKS)


# ---------------------------------------------------------------- fuzzing the front end

_DENSE_TOKENS = 256


def _compile_and_use(text: str, name=None, params=None):
    """Compile ``text``; if that works, build a small dense mask. Only MaskError may escape."""
    try:
        m = maskc.compile(text, name=name, **(params or {}))
    except maskc.MaskError:
        return None
    n = int(np.prod(m.grid)) if m.grid is not None else 7
    if n > _DENSE_TOKENS:
        return m
    inputs = {x: np.arange(n) // 3 for x in m.inputs}
    try:
        if m.grid is not None:
            out = m.dense(heads=2, **inputs)
        else:
            out = m.dense(n, n + 2, heads=2, **{x: np.arange(n + 2) // 3 for x in m.inputs})
        assert out.dtype == bool and out.shape[0] == 2
    except maskc.MaskError:
        pass
    return m


def _names(text: str) -> list[str]:
    return re.findall(r"\bmask\s+([A-Za-z_]\w*)", text)


def _steer(text: str, compiled) -> None:
    """Guide generation towards texts that compile, and longer ones among those.

    NOTE: almost every random sentence of the grammar is ill-typed somewhere; without
    ``target`` only ~2% compile, with it ~25%, so dense() on fuzzed masks is exercised too.
    """
    target(1.0 + min(len(text), 200) / 200 if compiled else 0.0, label="compiles")


# Mostly names a file may define, some builtins and predicate variables.
FILE_NAMES = ("m", "n", "f", "w", "w", "doc", "x", "causal", "all", "none", "window", "sink",
              "k", "q", "h", "_")


@settings(PROPS, max_examples=300)
@given(text=lark_texts("start", max_depth=9, names=FILE_NAMES))
def test_grammar_fuzz_files(text):
    ok = _compile_and_use(text) is not None
    for name in _names(text)[:3]:
        ok |= _compile_and_use(text, name=name) is not None
    _steer(text, ok)


@settings(PROPS, max_examples=600)
@given(body=lark_texts("expr", max_depth=7),
       header=st.sampled_from(["mask m(w = 3, g = [0, 2], input doc) = ",
                               "mask m(w = 3) over grid(y = 3, x = 4) = ",
                               "let f(a) = window(a) | sink(1)\nmask m(w = 2) = "]),
       # NOTE: most random expressions are ill-typed somewhere; putting them in integer and
       # mask positions alike lets more of them compile, so dense() gets exercised too.
       wrapper=st.sampled_from(["{}", "{}", "window({})", "sink({})", "causal & ({})",
                                "blocks(2, {})", "heads {{ 0..2: {}, _: none }}"]))
def test_grammar_fuzz_expressions(header, wrapper, body):
    text = header + wrapper.format(body)
    _steer(body, _compile_and_use(text) is not None)


_MUTATION_CHARS = list("()[]{},=:|&~-+*/%.<>_#") + list("0123456789") + \
    list("abkqpwhx") + ["\n", " ", "..", "//", "where ", "heads ", "input ", "mask ", "let "]


@st.composite
def _mutations(draw):
    path = draw(st.sampled_from(EXAMPLES))
    text = path.read_text()
    if draw(st.integers(0, 3)):
        # NOTE: the examples are mostly comments; usually mutate the code alone.
        text = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(("delete", "insert", "replace")))
        ch = draw(st.sampled_from(_MUTATION_CHARS))
        if op == "delete":
            text = text[:i] + text[i + draw(st.integers(1, 3)):]
        elif op == "insert":
            text = text[:i] + ch + text[i:]
        else:
            text = text[:i] + ch + text[i + 1:]
    return path, text


@settings(PROPS, max_examples=400)
@given(case=_mutations())
def test_mutated_examples_compile_or_raise_mask_error(case):
    path, text = case
    _compile_and_use(text)
    for name in _names(path.read_text()) + _names(text)[:1]:
        _compile_and_use(text, name=name)


@settings(PROPS, max_examples=100)
@given(case=_mutations(), n=st.integers(1, 9))
def test_mutated_examples_with_parameters(case, n):
    path, text = case
    for name in _names(text)[:2]:
        _compile_and_use(text, name=name, params={"w": n})


# ---------------------------------------------------------------- error messages

# (source, compile kwargs, dense kwargs or None, error class, line, column)
BAD = [
    # syntax errors
    ("let a = causal\nmask m = causal &\n", {}, None, maskc.MaskSyntaxError, 2, 18),
    ("mask m =\n  causal & (window(3)\n", {}, None, maskc.MaskSyntaxError, 2, 12),  # the '('
    ("mask m = causal\nmask n = window(3) )\n", {}, None, maskc.MaskSyntaxError, 2, 20),
    ("mask m =\n  causal $ window(2)\n", {}, None, maskc.MaskSyntaxError, 2, 10),
    ("mask m =\n  window(3) @ causal\n", {}, None, maskc.MaskSyntaxError, 2, 13),
    ("mask m = causal\n\nmask n = heads { 0: causal _: causal }\n", {}, None,
     maskc.MaskSyntaxError, 3, 28),
    ("# comment\nmask m = window(3,\n  dilation = )\n", {}, None, maskc.MaskSyntaxError, 3, 14),
    ("mask m =\n  causal & where h = 2\n", {}, None, maskc.MaskSyntaxError, 2, 20),
    # unknown names
    ("let a = causal\nmask m = a &\n  wndow(3)\n", {}, None, maskc.MaskNameError, 3, 3),
    ("mask m = causal\nmask n =\n  causal & foo\n", {"name": "n"}, None,
     maskc.MaskNameError, 3, 12),
    ("mask m =\n  where k < z\n", {}, None, maskc.MaskNameError, 2, 13),
    ("mask m = causal\nmask n = window(3, radius = 2)\n", {"name": "n"}, None,
     maskc.MaskTypeError, 2, 20),
    ("mask m =\n  where foo(k) < 2\n", {}, None, maskc.MaskNameError, 2, 9),
    ("mask m =\n  causal & q\n", {}, None, maskc.MaskNameError, 2, 12),
    ("mask m = causal\nmask n = window(3)\n", {"name": "z"}, None, maskc.MaskNameError, 1, 6),
    ("mask m = causal\nmask n = window(3)\n", {}, None, maskc.MaskNameError, 1, 6),
    ("mask m = causal\nmask m = window(2)\n", {"name": "m"}, None, maskc.MaskNameError, 2, 6),
    ("\nlet window = causal\nmask m = window\n", {}, None, maskc.MaskNameError, 2, 5),
    # wrong types
    ("mask m(w = 4) =\n  causal & w\n", {}, None, maskc.MaskTypeError, 2, 12),
    ("mask m =\n    window(causal)\n", {}, None, maskc.MaskTypeError, 2, 12),
    ("mask m =\n  where k + 1\n", {}, None, maskc.MaskTypeError, 2, 9),
    ("mask m =\n  where k < 3 and 4\n", {}, None, maskc.MaskTypeError, 2, 19),
    ("mask m =\n  where not k\n", {}, None, maskc.MaskTypeError, 2, 13),
    ("mask m =\n  causal | 3\n", {}, None, maskc.MaskTypeError, 2, 12),
    ("mask m =\n  ~3\n", {}, None, maskc.MaskTypeError, 2, 3),
    ("mask m(w = 2) =\n  same(w)\n", {}, None, maskc.MaskTypeError, 2, 8),
    ("mask m =\n  window(before = 2, 3)\n", {}, None, maskc.MaskTypeError, 2, 22),
    ("mask m over grid(y = 4, x = 4) =\n  neighborhood(3, causal = 1)\n", {}, None,
     maskc.MaskTypeError, 2, 28),
    # negative windows, zero strides and chunks, other bad values
    ("mask m =\n  window(-1)\n", {}, None, maskc.MaskValueError, 2, 10),
    ("mask m =\n  causal & window(before = 3, after = -2)\n", {}, None,
     maskc.MaskValueError, 2, 39),
    ("mask m =\n  window(3, dilation = 0)\n", {}, None, maskc.MaskValueError, 2, 24),
    ("mask m(s = 0) =\n  strided(s)\n", {}, None, maskc.MaskValueError, 2, 11),
    ("mask m(s = 4) =\n  strided(s)\n", {"s": 0}, None, maskc.MaskValueError, 2, 11),
    ("mask m =\n  causal & chunk(0)\n", {}, None, maskc.MaskValueError, 2, 18),
    ("mask m =\n  fixed(4, 5)\n", {}, None, maskc.MaskValueError, 2, 12),
    ("mask m =\n  \tcausal & sink(-1)\n", {}, None, maskc.MaskValueError, 2, 18),
    ("mask m =\n  global([-1, 2])\n", {}, None, maskc.MaskValueError, 2, 10),
    ("mask m =\n  window(2147483648)\n", {}, None, maskc.MaskValueError, 2, 10),
    ("mask m =\n  chunk(5 // 0)\n", {}, None, maskc.MaskValueError, 2, 14),
    ("mask m =\n  heads { -1: causal, _: all }\n", {}, None, maskc.MaskValueError, 2, 11),
    # neighborhoods: K * d > n, stride > kernel, grids
    ("mask m over grid(y = 4, x = 4) =\n  neighborhood(5)\n", {}, None,
     maskc.MaskValueError, 2, 16),
    ("mask m over grid(y = 4, x = 8) =\n  neighborhood(3, dilation = (1, 3))\n", {}, None,
     maskc.MaskValueError, 2, 30),
    ("mask m over grid(8) =\n  neighborhood(3, stride = 4)\n", {}, None,
     maskc.MaskValueError, 2, 28),
    ("mask m over grid(4, 4) =\n  tile(2, 2, 2)\n", {}, None, maskc.MaskValueError, 2, 8),
    ("mask m over grid(y = 4, 4) =\n  tile(2)\n", {}, None, maskc.MaskTypeError, 1, 18),
    ("mask m over grid(0) =\n  causal\n", {}, None, maskc.MaskValueError, 1, 18),
    # `//` and `%` in where need a positive constant
    ("mask m =\n  where k // 0 == 1\n", {}, None, maskc.MaskValueError, 2, 14),
    ("mask m =\n  where k % -2 == 1\n", {}, None, maskc.MaskValueError, 2, 13),
    ("mask m =\n  where k % q == 1\n", {}, None, maskc.MaskValueError, 2, 13),
    ("mask m =\n  where k * k * k < 2\n", {}, None, maskc.MaskValueError, 2, 9),
    # axis names without a grid, or not in the grid
    ("mask m =\n  where q.x < 3\n", {}, None, maskc.MaskNameError, 2, 9),
    ("mask m over grid(y = 4, x = 4) =\n  where q.z < 3\n", {}, None, maskc.MaskNameError, 2, 9),
    ("mask m over grid(4, 4) =\n  where q[2] < 3\n", {}, None, maskc.MaskValueError, 2, 9),
    ("mask m =\n  neighborhood(3)\n", {}, None, maskc.MaskTypeError, 2, 3),
    # random / layout outside blocks; inputs inside blocks
    ("mask m =\n  causal | random(2)\n", {}, None, maskc.MaskTypeError, 2, 12),
    ("mask m =\n  layout([[1]])\n", {}, None, maskc.MaskTypeError, 2, 3),
    ("mask m(input doc) =\n  blocks(4, within(doc, causal))\n", {}, None,
     maskc.MaskTypeError, 2, 20),
    # macro arity and misuse
    ("let f(a, b) = window(a) | sink(b)\nmask m =\n  f(1)\n", {}, None,
     maskc.MaskTypeError, 3, 3),
    ("let g = causal\nmask m =\n  g(2)\n", {}, None, maskc.MaskTypeError, 3, 3),
    ("mask m(w = 4) =\n  w(3)\n", {}, None, maskc.MaskTypeError, 2, 3),
    ("let a = b\nlet b = a\nmask m =\n  a\n", {}, None, maskc.MaskNameError, 2, 9),
    # compile-time parameters: unknown (listing the known ones), missing, wrong kind
    ("\nmask m(w = 4) =\n  window(w)\n", {"v": 3}, None, maskc.MaskParamError, 2, 6),
    ("\nmask m(w) =\n  window(w)\n", {}, None, maskc.MaskParamError, 2, 8),
    ("\nmask m(w = 4) =\n  window(w)\n", {"w": [1, 2]}, None, maskc.MaskParamError, 2, 8),
    ("\nmask m(input doc) = same(doc)\n", {"doc": 3}, None, maskc.MaskParamError, 2, 14),
    # errors at dense time still point into the source
    ("mask m =\n  heads { 0..2: causal,\n          2: sink(1) }\n", {},
     {"q_len": 4, "heads": 4}, maskc.MaskValueError, 2, 3),
    ("mask m =\n  sink(3) & blocks(2,\n    random(3, seed = 1))\n", {}, {"q_len": 4},
     maskc.MaskValueError, 3, 5),
    ("\nmask m(input doc) =\n  causal & same(doc)\n", {}, {"q_len": 4},
     maskc.MaskInputError, 2, 6),
    ("\nmask m over grid(4) = causal\n", {}, {"q_len": 5}, maskc.MaskSizeError, 2, 18),
    ("\nmask m = causal\n", {}, {"q_len": 4, "heads": 0}, maskc.MaskSizeError, 2, 6),
]

def _raise(source, params, dense_kw):
    m = maskc.compile(source, **params)
    assert dense_kw is not None, "compiled without an error"
    m.dense(**dense_kw)
    raise AssertionError("dense() did not raise")


def _check_message(err, filename, line, column, source):
    text = str(err)
    assert (err.line, err.column) == (line, column), text
    assert text.startswith(f"{filename}:{line}:{column}: error: "), text
    lines = text.splitlines()
    assert lines[1].strip() == source.splitlines()[line - 1].strip(), text
    caret = lines[2]
    assert re.fullmatch(r"[ \t]*\^+", caret), text
    # the caret sits under the reported column (tabs are kept in the padding)
    assert caret.index("^") - 4 == column - 1, text
    for leak in ("maskc/", ".py", "lark", "Traceback", "site-packages"):
        assert leak not in text, text


@pytest.mark.parametrize("source, params, dense_kw, cls, line, column", BAD,
                         ids=[f"{i}-{c.__name__}" for i, (*_, c, _l, _c) in enumerate(BAD)])
def test_error_location_and_message(source, params, dense_kw, cls, line, column):
    with pytest.raises(maskc.MaskError) as info:
        _raise(source, params, dense_kw)
    err = info.value
    assert isinstance(err, cls), str(err)
    _check_message(err, "<string>", line, column, source)


def test_error_messages_say_what_is_wrong():
    cases = [
        ("mask m(w = 4) =\n  window(w)\n", {"v": 3}, ["'v'", "its parameters are: w"]),
        ("mask m(w, n = 2) =\n  window(w) | sink(n)\n", {}, ["'w'", "no default"]),
        ("mask m =\n  heads { 0: causal }\n", None, ["head 1"]),
        ("let f(a, b) = window(a)\nmask m =\n  f(1)\n", {}, ["'f'", "2", "1"]),
        ("mask m over grid(y = 4, x = 4) =\n  neighborhood(5)\n", {}, ["5", "4"]),
        ("mask m over grid(8) =\n  neighborhood(3, stride = 4)\n", {}, ["stride", "4", "3"]),
        ("mask m =\n  wndow(3)\n", {}, ["wndow"]),
        ("mask m =\n  where q.x < 3\n", {}, ["grid"]),
    ]
    for source, params, needles in cases:
        with pytest.raises(maskc.MaskError) as info:
            if params is None:
                maskc.compile(source).dense(3, heads=2)
            else:
                maskc.compile(source, **params)
        for needle in needles:
            assert needle in info.value.message, str(info.value)


@pytest.mark.parametrize("as_path", [False, True])
def test_error_messages_name_the_file(tmp_path, as_path):
    source = "# a comment\nmask m(w = 3) =\n  causal &\n    window(w, dilation = 0)\n"
    path = tmp_path / "bad.mask"
    path.write_text(source)
    with pytest.raises(maskc.MaskValueError) as info:
        maskc.compile(path if as_path else str(path))
    _check_message(info.value, str(path), 4, 26, source)


def test_syntax_error_in_a_file(tmp_path):
    source = "mask m =\n  causal &\n\n  (window(2) |\n"
    path = tmp_path / "cut.mask"
    path.write_text(source)
    with pytest.raises(maskc.MaskSyntaxError) as info:
        maskc.compile(path)
    _check_message(info.value, str(path), 4, 15, source)


def test_empty_file_error_names_the_file(tmp_path):
    path = tmp_path / "empty.mask"
    path.write_text("# only a comment\n")
    with pytest.raises(maskc.MaskNameError) as info:
        maskc.compile(path)
    assert str(info.value).startswith(f"{path}:"), str(info.value)
