"""Bad specs found by fuzzing: each is a located MaskError, never a raw exception or a hang.

Every error is checked for its class, its ``<string>:LINE:COL`` and the caret under the
offending text (the source line is shown as Lark counts lines: at "\\n" only).
"""

import re
import sys

import numpy as np
import pytest

import maskc
from maskc.frontend.syntax import MAX_INT, MAX_NESTING


def _raises(cls, source, **params) -> maskc.MaskError:
    with pytest.raises(maskc.MaskError) as info:
        maskc.compile(source, **params)
    assert isinstance(info.value, cls), f"{type(info.value).__name__}: {info.value}"
    return info.value


def _located(err: maskc.MaskError, line: int, column: int, shown: str, under: str) -> None:
    """``err`` reads ``<string>:line:column: error: ...``, shows ``shown`` and puts its caret
    at ``column``, under text that starts with ``under``."""
    text = str(err)
    assert (err.line, err.column) == (line, column), text
    assert text.startswith(f"<string>:{line}:{column}: error: "), text
    head, src, caret = text.split("\n")
    assert src == "    " + shown, text
    assert re.fullmatch(r" *\^+", caret), text
    assert caret.index("^") - 4 == column - 1, text
    assert src[4 + column - 1:].startswith(under), text
    for leak in ("maskc/", ".py", "lark", "Traceback", "VisitError"):
        assert leak not in head, text


# ---------------------------------------------------------------- A1: huge integer literals

@pytest.mark.parametrize("prefix, suffix", [
    ("mask m = window(", ")"),                 # a literal argument
    ("mask m = where k < ", ""),               # a predicate literal
    ("mask m over grid(4) = where q[", "] == 0"),   # an axis index
    ("mask m(w = ", ") = window(3)"),          # a default that is never used
], ids=["argument", "predicate", "axis-index", "unused-default"])
def test_integer_literal_too_large_is_located(prefix, suffix):
    digits = "9" * 5000   # past Python's 4300-digit limit on int(str)
    err = _raises(maskc.MaskValueError, prefix + digits + suffix)
    assert "integer literal is too large" in err.message
    col = len(prefix) + 1
    _located(err, 1, col, prefix + digits + suffix, "9999")


def test_long_integer_literals_still_reach_the_checker():
    err = _raises(maskc.MaskValueError, "mask m = window(99999999999)")
    assert "out of range" in err.message
    _located(err, 1, 17, "mask m = window(99999999999)", "99999999999")
    # leading zeros do not count towards the length of a literal
    m = maskc.compile("mask m = window(" + "0" * 5000 + "3)")
    assert m.pretty() == "mask m = window(3)\n"


# ---------------------------------------------------------------- A2: deep nesting

def _abs_chain(n: int) -> str:
    return "mask m = where " + "abs(" * n + "k" + ")" * n + " < 3"


@pytest.mark.parametrize("n", [MAX_NESTING - 2, MAX_NESTING - 1, 260, 340, 10_000])
def test_nesting_past_the_limit_is_a_located_syntax_error(n):
    # where (1) > comparison (2) > abs ... : the (limit - 1)th abs is the first node too deep
    err = _raises(maskc.MaskSyntaxError, _abs_chain(n))
    assert f"nested too deeply (more than {MAX_NESTING} levels" in err.message
    col = len("mask m = where ") + 4 * (MAX_NESTING - 2) + 1
    _located(err, 1, col, _abs_chain(n), "abs(" if n > MAX_NESTING - 2 else "k)")


_DEEP = {
    "not": "mask m = " + "~" * 5000 + "causal",
    "or-chain": "mask m = causal" + " | window(1)" * 5000,
    "int-sum": "mask m = window(1" + " + 1" * 5000 + ")",
    "int-neg": "mask m = window(" + "-" * 5000 + "1)",
    "pred-sum": "mask m = where k" + " + 1" * 5000 + " < 3",
    "pred-not": "mask m = where " + "not " * 5000 + "k < 3",
    "compare-chain": "mask m = where k" + " < 1" * 5000,
    "blocks": "mask m = " + "blocks(1, " * 5000 + "causal" + ")" * 5000,
    "heads": "mask m = " + "heads { _: " * 5000 + "causal" + " }" * 5000,
    "within": "mask m(input d) = " + "within(d, " * 5000 + "causal" + ")" * 5000,
}


@pytest.mark.parametrize("source", _DEEP.values(), ids=_DEEP.keys())
def test_every_kind_of_deep_nesting_is_rejected(source):
    err = _raises(maskc.MaskSyntaxError, source)
    assert "nested too deeply" in err.message
    assert err.line == 1 and err.column > 1


def test_parentheses_alone_do_not_nest():
    m = maskc.compile("mask m = " + "(" * 10_000 + "causal" + ")" * 10_000)
    assert m.pretty() == "mask m = causal\n"
    m = maskc.compile("mask m = where " + "(" * 10_000 + "k < 3" + ")" * 10_000)
    assert m.pretty() == "mask m = where k < 3\n"


_JUST_BELOW = [
    _abs_chain(MAX_NESTING - 3),
    "mask m = where k" + " + 1" * (MAX_NESTING - 3) + " < 3",
    "mask m = where " + "not " * (MAX_NESTING - 3) + "k < 3",
    "mask m = where " + "min(1, " * (MAX_NESTING - 3) + "k" + ")" * (MAX_NESTING - 3) + " < 3",
    "mask m = " + "~" * (MAX_NESTING - 1) + "causal",
    "mask m = causal" + " | window(1)" * (MAX_NESTING - 2),
    "mask m = " + "blocks(1, " * (MAX_NESTING - 3) + "global([1, 2])" + ")" * (MAX_NESTING - 3),
    "mask m(input d) = " + "within(d, " * (MAX_NESTING - 1) + "causal" + ")" * (MAX_NESTING - 1),
    "mask m over grid(4, 4) = where " + "abs(" * (MAX_NESTING - 4) + "k[0] - q[1]"
    + ")" * (MAX_NESTING - 4) + " < 3",
    "".join(f"let a{i} = ~a{i - 1}\n" if i else "let a0 = causal\n"
            for i in range(MAX_NESTING)) + f"mask m = a{MAX_NESTING - 1}",
]


@pytest.mark.parametrize("source", _JUST_BELOW, ids=range(len(_JUST_BELOW)))
def test_nesting_just_below_the_limit_works_in_every_stage(source, default_recursion_limit):
    """Compile, print (and parse the print back), repr, generate Triton, and evaluate with
    the reference and FlexAttention's mask_mod, under Python's default recursion limit
    (pinned by the fixture, whatever ran before)."""
    torch = pytest.importorskip("torch")
    from maskc.backends import triton

    assert sys.getrecursionlimit() == 1000
    m = maskc.compile(source)
    text = m.pretty()
    assert maskc.compile(text).ir == m.ir
    assert repr(m).startswith("<maskc.Mask m:")
    triton.generate(m.ir)
    inputs = {"d": np.repeat([0, 1], 8)} if m.inputs else {}
    q_len = None if m.grid else 16
    dense = m.dense(q_len, **inputs)
    n = dense.shape[-1]
    mod = m.mask_mod(q_len, **inputs)
    got = mod(torch.tensor(0), torch.tensor(0), torch.arange(n)[:, None], torch.arange(n)[None])
    assert np.array_equal(np.broadcast_to(got.numpy(), dense[0].shape), dense[0])


def test_macros_nesting_past_the_limit_are_located():
    # each use of f nests two levels, so the source stays shallow while the mask does not
    n = MAX_NESTING // 2 + 10
    source = "let f(x) = ~~x\nmask m = " + "f(" * n + "causal" + ")" * n
    err = _raises(maskc.MaskValueError, source)
    assert "nested too deeply" in err.message and "macros" in err.message
    _located(err, 1, 12, "let f(x) = ~~x", "~~x")


def test_long_macro_chains_are_located():
    source = "".join(f"let a{i} = ~a{i - 1}\n" if i else "let a0 = causal\n"
                     for i in range(400)) + "mask m = a399\n"
    err = _raises(maskc.MaskValueError, source)
    assert "nested too deeply" in err.message
    _located(err, 401, 6, "mask m = a399", "m")


# ---------------------------------------------------------------- A3: line breaks Lark ignores

@pytest.mark.parametrize("brk", ["\x0c", "\r"])
def test_caret_under_the_right_text_with_unusual_line_breaks(brk):
    source = f"mask a = causal{brk}mask m = window(-1)"
    err = _raises(maskc.MaskValueError, source, name="m")
    # Lark counts lines at "\n" only: all of this is line 1; the break shows as a space
    _located(err, 1, 33, "mask a = causal mask m = window(-1)", "-1")
    err = _raises(maskc.MaskValueError, f"mask a = causal{brk}\nmask m = window(-1)", name="m")
    _located(err, 2, 17, "mask m = window(-1)", "-1")


@pytest.mark.parametrize("brk", ["\x0b", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"])
def test_line_breaks_that_are_not_whitespace_are_located(brk):
    # str.splitlines() breaks lines here, but they are not whitespace in the grammar
    err = _raises(maskc.MaskSyntaxError, f"mask a = causal{brk}mask m = window(-1)", name="m")
    _located(err, 1, 16, "mask a = causal mask m = window(-1)", " mask")


def test_crlf_lines_show_without_the_carriage_return():
    source = "mask a = causal\r\nmask m =\r\n  window(-1)\r\n"
    err = _raises(maskc.MaskValueError, source, name="m")
    _located(err, 3, 10, "  window(-1)", "-1")
    err = _raises(maskc.MaskSyntaxError, "mask m =\r\n  causal &\r\n")
    _located(err, 2, 11, "  causal &", "")
    err = _raises(maskc.MaskSyntaxError, "mask m =\r\n  window(\r\n")  # where it opens
    _located(err, 2, 9, "  window(", "(")


# ---------------------------------------------------------------- A4: overrides out of range

@pytest.mark.parametrize("value", [range(0, 10**30), range(-10**30, 4), [0, 10**30],
                                   range(0, MAX_INT + 1)])
def test_override_ranges_and_lists_out_of_range(value):
    err = _raises(maskc.MaskValueError, "mask m(g = [0]) = global(g)", g=value)
    assert "out of range" in err.message and "'g'" in err.message
    _located(err, 1, 8, "mask m(g = [0]) = global(g)", "g")


def test_override_ranges_in_range_still_work():
    m = maskc.compile("mask m(g = [0]) = global(g)", g=range(2, MAX_INT))
    assert m.ir.body.positions.intervals == ((2, MAX_INT),)
    err = _raises(maskc.MaskParamError, "mask m(g = [0]) = global(g)", g=range(0, 10, 2))
    _located(err, 1, 8, "mask m(g = [0]) = global(g)", "g")


# ---------------------------------------------------------------- A5: duplicate parameters

@pytest.mark.parametrize("source, column", [
    ("mask m(w = 3, w = -4) = window(w)", 15),
    ("mask m(input d, input d) = same(d)", 23),
    ("mask m(w = 3, input w) = window(w)", 21),
])
def test_duplicate_parameter_is_located_at_the_second(source, column):
    err = _raises(maskc.MaskNameError, source)
    assert err.message in ("parameter 'w' is declared twice", "parameter 'd' is declared twice")
    _located(err, 1, column, source, source[column - 1])


# ---------------------------------------------------------------- B1: grid token count

def test_grid_over_the_token_limit_is_a_located_size_error():
    source = "mask m over grid(65536, 65536) = tile(1, 1)"
    err = _raises(maskc.MaskSizeError, source)
    assert "4,294,967,296 tokens" in err.message
    _located(err, 1, 18, source, "65536, 65536")
    assert str(err).split("\n")[2].count("^") == len("65536, 65536")
    source = "mask m(h = 65536) over grid(\n  y = h, x = h) = tile(1)"
    err = _raises(maskc.MaskSizeError, source)
    _located(err, 2, 3, "  y = h, x = h) = tile(1)", "y = h")


def test_grid_at_the_token_limit_compiles():
    m = maskc.compile(f"mask m over grid({MAX_INT}) = tile(1)")
    assert m.grid == (MAX_INT,)
