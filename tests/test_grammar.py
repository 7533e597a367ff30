"""The grammar: LALR without conflicts, every construct of LANGUAGE.md parses, precedence."""

import logging

import numpy as np
import pytest
from lark import Lark

import maskc
from maskc.frontend.parser import grammar_path

LANGUAGE_SECTION_1 = """
# comments run to the end of the line; whitespace and newlines are free
let swa(w) = causal & window(w)             # a macro with parameters
let g0 = global([0])                        # a named sub-mask

mask mistral(w = 4095) = swa(w)                          # default params
mask longformer(w = 256, g = [0, 1]) = window(w) | global(g)
mask natten(h = 64, w = 64, k = 7) over grid(y = h, x = w) = neighborhood(k)
mask packed(input doc) = causal & same(doc)              # runtime input
mask moa(w = 128) = heads { 0..4: causal & window(w), 4..8: causal & window(8 * w), _: causal }
"""

SECTION_6 = [
    "window(w) | global(g)",
    "window(w, dilation = 2)",
    "blocks(64, window(1) | global([0]) | random(3, seed = 7))",
    "causal & (window(before = s - 1, after = 0) | strided(s))",
    "causal & (chunk(s) | fixed(s, c))",
    "causal & window(before = 4095, after = 0)",
    "causal & (window(before = 1020, after = 0) | sink(4))",
    "causal | prefix(n)",
    "causal & same(doc)",
    "within(doc, causal & window(before = 255, after = 0))",
    "causal & chunk(8192)",
    "heads { 0..4: causal & window(before = 255, after = 0), _: causal }",
]


def test_grammar_has_no_conflicts():
    records = []

    class Catch(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    lark_logger = logging.getLogger("lark")
    handler, level = Catch(), lark_logger.level
    lark_logger.addHandler(handler)
    lark_logger.setLevel(logging.DEBUG)
    try:
        Lark.open(str(grammar_path()), parser="lalr", debug=True)
    finally:
        lark_logger.removeHandler(handler)
        lark_logger.setLevel(level)
    assert not [r for r in records if "conflict" in r.lower()]


def test_language_section_1_compiles():
    for name in ("mistral", "longformer", "natten", "packed", "moa"):
        m = maskc.compile(LANGUAGE_SECTION_1, name=name, **({"h": 8, "w": 8} if name == "natten"
                                                              else {}))
        assert m.name == name


@pytest.mark.parametrize("spec", SECTION_6)
def test_section_6_specs_compile(spec):
    src = f"mask m(w = 4, g = [0], s = 4, c = 1, n = 8, input doc) = {spec}"
    m = maskc.compile(src)
    doc = np.repeat([0, 1, 2], [50, 60, 146])
    assert m.dense(256, heads=5, doc=doc).shape == (5, 256, 256)


def dense(src, n=24, **kw):
    return maskc.compile(src).dense(n, **kw)[0]


def test_precedence_of_mask_operators():
    a, b, c = "window(2)", "causal", "global([3])"
    A, B, C = dense(f"mask m = {a}"), dense(f"mask m = {b}"), dense(f"mask m = {c}")
    assert np.array_equal(dense(f"mask m = {a} | {b} & {c}"), A | (B & C))
    assert np.array_equal(dense(f"mask m = ~{a} & {b}"), ~A & B)
    assert np.array_equal(dense(f"mask m = {a} - {b} & {c}"), (A & ~B) & C)
    assert np.array_equal(dense(f"mask m = {a} & {b} - {c}"), A & (B & ~C))
    assert np.array_equal(dense(f"mask m = ({a} | {b}) & {c}"), (A | B) & C)


def test_where_takes_the_longest_predicate():
    q, k = np.indices((24, 24))
    # a '-' after a predicate is arithmetic inside it
    assert np.array_equal(dense("mask m = where k < 10 - 3"), k < 7)
    # parenthesize to subtract a mask
    assert np.array_equal(dense("mask m = (where k < 10) - causal"), (k < 10) & ~(k <= q))
    # '&' and '|' end a predicate
    assert np.array_equal(dense("mask m = where k < 10 & causal"), (k < 10) & (k <= q))
    assert np.array_equal(dense("mask m = ~where k < 10 | causal"), (k >= 10) | (k <= q))
    assert np.array_equal(dense("mask m = where 2 <= k - q < 5 or k == 0"),
                          ((2 <= k - q) & (k - q < 5)) | (k == 0))


def test_integer_arithmetic_in_arguments():
    A = dense("mask m(w = 3) = chunk(2 * w + 1)")
    q, k = np.indices((24, 24))
    assert np.array_equal(A, q // 7 == k // 7)
    assert np.array_equal(dense("mask m = window(-(-3) % 2)"), abs(q - k) <= 1)
    assert np.array_equal(dense("mask m = sink(17 // 4 - 1)"), k < 3)
