"""Each simplification rule fires where it should, and the dense mask does not change."""

import numpy as np
import pytest

import maskc
from maskc import ir
from maskc.frontend.check import check
from maskc.frontend.parser import parse
from maskc.ir.simplify import simplify
from maskc.ir.verify import verify
from maskc.backends import reference

CASES = [
    # (source body, expected simplified body)
    ("~~causal", "causal"),
    ("~all", "none"),
    ("causal & all", "causal"),
    ("causal & none", "none"),
    ("causal | none", "causal"),
    ("causal | all", "all"),
    ("causal & causal & sink(2)", "causal & sink(2)"),
    ("causal & ~causal", "none"),
    ("sink(3) | ~sink(3)", "all"),
    ("window(3) | window(before = 1, after = 5)", "window(before = 3, after = 5)"),
    ("window(3, dilation = 2) | window(1, dilation = 2)", "window(3, dilation = 2)"),
    ("window(3) & window(before = 1, after = 5)", "window(before = 1, after = 3)"),
    ("causal & (window(2) | window(4) | sink(1))", "causal & (window(4) | sink(1))"),
    ("window(0, dilation = 3)", "window(0)"),
    ("chunk(1)", "window(0)"),
    ("strided(1) & causal", "causal"),
    ("fixed(4, 0) | causal", "causal"),
    ("fixed(4, 4) & causal", "causal"),
    ("sink(0) | prefix(0) | causal", "causal"),
    ("global([]) | causal", "causal"),
    ("blocks(4, all)", "all"),
    ("blocks(4, random(0) | none)", "none"),
    ("within(doc, all)", "same(doc)"),
    ("within(doc, none)", "none"),
    ("heads { _: causal, 0: sink(2) }", "causal"),
    ("heads { 0..2: sink(2), _: causal, 3: window(1) }", "heads { 0..2: sink(2), _: causal }"),
    ("where 1 < 2", "all"),
    ("causal & window(5) & sink(9)", "window(before = 5, after = 0) & sink(9)"),
    ("causal & window(before = 2, after = 7, dilation = 3)",
     "window(before = 2, after = 0, dilation = 3)"),
    ("where not true", "none"),
]


def lower(body: str, simplified: bool) -> ir.MaskDef:
    mdef = check(parse(f"mask m(input doc) = {body}"))
    return verify(simplify(mdef)) if simplified else verify(mdef)


@pytest.mark.parametrize("body, expected", CASES)
def test_rule_fires_and_preserves_meaning(body, expected):
    before, after = lower(body, False), lower(body, True)
    assert after.body == lower(expected, False).body
    doc = np.repeat([0, 1, 2, 1], [5, 9, 3, 7])
    for q_len, kv_len, heads in ((24, 24, 4), (7, 24, 3), (24, 10, 1), (1, 24, 2)):
        docs = doc[:kv_len] if kv_len <= 24 else doc
        assert np.array_equal(reference.dense(before, q_len, kv_len, heads, doc=docs),
                              reference.dense(after, q_len, kv_len, heads, doc=docs))


@pytest.mark.parametrize("body, expected", CASES)
def test_simplify_is_idempotent(body, expected):
    once = lower(body, True)
    assert simplify(once) == once


def test_compile_simplifies_and_pretty_shows_it():
    m = maskc.compile("mask m = sink(2) & all & ~~window(before = 3, after = 0) | none")
    assert m.pretty() == "mask m = sink(2) & window(before = 3, after = 0)\n"
