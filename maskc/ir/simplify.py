"""Meaning-preserving local simplification of mask IR, as a table of rewrite rules.

Requires: a checked IR. Guarantees: the same dense mask for every size, head count and
input; ``And``/``Or`` flat with at least two distinct terms; idempotent.
"""

from __future__ import annotations

import operator
from dataclasses import replace

from maskc import ir
from maskc.ir.rewrite import rewrite

__all__ = ["simplify", "RULES"]

ALL, NONE = ir.Const(True), ir.Const(False)


def _const(value: bool, n: ir.Node) -> ir.Node:
    return ir.Const(value, span=n.span)


def double_negation(n):
    if isinstance(n, ir.Not) and isinstance(n.body, ir.Not):
        return n.body.body
    if isinstance(n, ir.Not) and isinstance(n.body, ir.Const):
        return _const(not n.body.keep, n)
    return None


def _flat(n, cls):
    out = []
    for t in n.terms:
        out.extend(t.terms if isinstance(t, cls) else (t,))
    return out


def _dedupe(terms):
    out = []
    for t in terms:
        if t not in out:
            out.append(t)
    return out


def may_fail(n: ir.Node) -> bool:
    """Whether evaluating ``n`` can raise at some size (``random(r)`` with too few key blocks,
    ``heads`` without ``_``): such terms are never dropped, so errors do not depend on rules."""
    return any(isinstance(x, ir.Random) or (isinstance(x, ir.Heads) and
                                             all(a.heads is not None for a in x.arms))
               for x in ir.walk(n))


def and_identities(n):
    """Flatten; ``x & all = x``; ``x & none = none``; ``x & x = x``; ``x & ~x = none``."""
    if not isinstance(n, ir.And):
        return None
    terms = _dedupe(t for t in _flat(n, ir.And) if t != ALL)
    if (NONE in terms or any(ir.Not(t) in terms for t in terms)) and \
            not any(may_fail(t) for t in terms):
        return _const(False, n)
    if not terms:
        return _const(True, n)
    return terms[0] if len(terms) == 1 else replace(n, terms=tuple(terms))


def or_identities(n):
    """Flatten; ``x | none = x``; ``x | all = all``; ``x | x = x``; ``x | ~x = all``."""
    if not isinstance(n, ir.Or):
        return None
    terms = _dedupe(t for t in _flat(n, ir.Or) if t != NONE)
    if (ALL in terms or any(ir.Not(t) in terms for t in terms)) and \
            not any(may_fail(t) for t in terms):
        return _const(True, n)
    if not terms:
        return _const(False, n)
    return terms[0] if len(terms) == 1 else replace(n, terms=tuple(terms))


def _merge_windows(n, cls, pick):
    if not isinstance(n, cls):
        return None
    terms = list(n.terms)
    for i, a in enumerate(terms):
        for j in range(i + 1, len(terms)):
            b = terms[j]
            if isinstance(a, ir.Window) and isinstance(b, ir.Window) and \
                    a.dilation == b.dilation:
                # NOTE: every window holds p - k == 0, so two windows of one dilation are
                # nested intervals around 0: their union and intersection are windows too.
                terms[i] = ir.Window(pick(a.before, b.before), pick(a.after, b.after),
                                     a.dilation, span=a.span)
                del terms[j]
                return terms[0] if len(terms) == 1 else replace(n, terms=tuple(terms))
    return None


def union_of_windows(n):
    return _merge_windows(n, ir.Or, max)


def intersection_of_windows(n):
    return _merge_windows(n, ir.And, min)


def causal_window(n):
    """``causal & window(before = a, after = b)`` is ``window(before = a, after = 0)``.

    NOTE: every window keeps ``p - k == 0``, so the causal half of it is the window with no
    look-ahead; the block analysis then sees one exact interval instead of two partial ones.
    """
    if not isinstance(n, ir.And) or ir.Causal() not in n.terms:
        return None
    for i, t in enumerate(n.terms):
        if isinstance(t, ir.Window):
            terms = [x for x in n.terms if x != ir.Causal()]
            terms[terms.index(t)] = ir.Window(t.before, 0, t.dilation, span=t.span)
            return terms[0] if len(terms) == 1 else replace(n, terms=tuple(terms))
    return None


def trivial_primitives(n):
    """Primitives whose parameters make them ``all``, ``none`` or the diagonal."""
    if isinstance(n, ir.Window) and n.before == n.after == 0 and n.dilation != 1:
        return ir.Window(0, 0, 1, span=n.span)
    if isinstance(n, ir.Chunk) and n.n == 1:
        return ir.Window(0, 0, 1, span=n.span)
    if isinstance(n, ir.Strided) and n.s == 1:
        return _const(True, n)
    if isinstance(n, ir.Fixed) and n.c in (0, n.s):
        return _const(n.c == n.s, n)
    if isinstance(n, (ir.Sink, ir.Prefix)) and n.n == 0:
        return _const(False, n)
    if isinstance(n, ir.Global) and not n.positions.intervals:
        return _const(False, n)
    if isinstance(n, ir.Random) and n.r == 0:
        return _const(False, n)
    if isinstance(n, ir.Where) and isinstance(n.pred, ir.PConst):
        return _const(bool(n.pred.value), n)
    return None


def constant_bodies(n):
    """``blocks(B, c)`` and ``within(x, none)`` of a constant; ``within(x, all)`` is ``same(x)``."""
    if isinstance(n, (ir.Blocks, ir.TileBlocks)) and isinstance(n.body, ir.Const):
        return n.body
    if isinstance(n, ir.Within) and isinstance(n.body, ir.Const):
        return ir.Same(n.input, span=n.span) if n.body.keep else n.body
    return None


def heads_wildcard(n):
    """Arms after ``_`` are unreachable; a ``heads`` whose first arm is ``_`` is that arm."""
    if not isinstance(n, ir.Heads):
        return None
    for i, arm in enumerate(n.arms):
        if arm.heads is None:
            if i == 0:
                return arm.body
            if i < len(n.arms) - 1:
                return replace(n, arms=n.arms[: i + 1])
    return None


# NOTE: Python's integer semantics (floor division, the divisor's sign for %); ``and``/``or``
# only ever see bools (the checker types them), where operator.and_/or_ agree with them.
_FOLD = {op: getattr(operator, op.python) for op in ir.Op}


def fold_constants(n):
    """Predicate operations on constants are computed (Python's integer semantics)."""
    if isinstance(n, ir.PBin) and isinstance(n.left, ir.PConst) and \
            isinstance(n.right, ir.PConst):
        return ir.PConst(_FOLD[n.op](n.left.value, n.right.value), span=n.span)
    if isinstance(n, ir.PUn) and isinstance(n.operand, ir.PConst):
        v = n.operand.value
        return ir.PConst(_FOLD[n.op](v), span=n.span)
    if isinstance(n, ir.PCall) and all(isinstance(a, ir.PConst) for a in n.args):
        vals = [a.value for a in n.args]
        return ir.PConst({"abs": lambda: abs(vals[0]), "min": lambda: min(vals),
                          "max": lambda: max(vals)}[n.func](), span=n.span)
    return None


RULES = (fold_constants, double_negation, and_identities, or_identities, union_of_windows,
         intersection_of_windows, causal_window, trivial_primitives, constant_bodies, heads_wildcard)


def simplify(mdef: ir.MaskDef) -> ir.MaskDef:
    """Apply :data:`RULES` to a fixed point (and the score's own rules to its score)."""
    from maskc.ir.scores import simplify as simplify_score
    score = None if mdef.score is None else simplify_score(mdef.score)
    return replace(mdef, body=rewrite(mdef.body, RULES), score=score)
