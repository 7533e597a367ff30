"""Scores (docs/language.md section 11): printing, simplifying and differentiating the IR of
``with SCORE``.

The IR keeps structure (a softcap stays :class:`~maskc.ir.Softcap`, an ALiBi an
:class:`~maskc.ir.Alibi`) so that backends emit the cheap form; :func:`expand` rewrites
both into ``+ - * /`` and functions for differentiation. :func:`diff` is symbolic
differentiation by rules, one per node type, and :func:`simplify` a rule table that folds
constants and drops the zeros and ones that differentiation leaves; both keep meaning
(checked against float64 autograd in tests/test_scores.py).
"""

from __future__ import annotations

import math

from maskc.ir import nodes as ir

__all__ = ["pretty_score", "expand", "diff", "simplify", "float_inputs", "uses_s",
           "tile_constant"]

_ADD, _MUL, _NEG, _ATOM = ir.Op.ADD.prec, ir.Op.MUL.prec, ir.Op.NEG.prec, 9


def pretty_score(n: ir.Score, prec: int = 0) -> str:
    from maskc.ir.pretty import pretty_pred
    text, own = _score(n, pretty_pred)
    return f"({text})" if own < prec else text


def _float_text(v: float) -> str:
    t = repr(float(v))
    return t if ("." in t or "e" in t) else t + ".0"


def _score(n, pretty_pred) -> tuple[str, int]:
    if isinstance(n, ir.SVar):
        return "s", _ATOM
    if isinstance(n, ir.SConst):
        return (_float_text(n.value), _ATOM) if n.value >= 0 or math.copysign(1, n.value) > 0 \
            else (f"-{_float_text(-n.value)}", _NEG)
    if isinstance(n, ir.SInt):  # an integer expression prints as one (and lowers back)
        from maskc.ir.pretty import _pred
        return _pred(n.value)
    if isinstance(n, ir.SIndex):
        return f"{n.input}[{', '.join(pretty_pred(i) for i in n.index)}]", _ATOM
    if isinstance(n, ir.SNeg):
        return f"-{pretty_score(n.operand, _NEG)}", _NEG
    if isinstance(n, ir.SBin):
        own = _ADD if n.op in "+-" else _MUL
        return f"{pretty_score(n.left, own)} {n.op} {pretty_score(n.right, own + 1)}", own
    if isinstance(n, ir.SCall):
        return f"{n.func}({', '.join(pretty_score(a) for a in n.args)})", _ATOM
    if isinstance(n, ir.Softcap):
        return f"softcap({pretty_score(n.cap)})", _ATOM
    if isinstance(n, ir.Alibi):
        return f"alibi({n.slopes})", _ATOM
    raise TypeError(f"cannot print {type(n).__name__}")


def float_inputs(score: ir.Score) -> dict[str, int]:
    """The float inputs a score reads and their ranks, in order of first use."""
    out: dict[str, int] = {}
    for n in ir.walk(score):
        if isinstance(n, ir.SIndex):
            out.setdefault(n.input, len(n.index))
        elif isinstance(n, ir.Alibi):
            out.setdefault(n.slopes, 1)
    return out


def tile_constant(x: ir.SIndex) -> bool:
    """Whether an entry's indices are the same for every pair of a kernel tile: they read
    neither positions nor grid coordinates (only heads, lengths and constants)."""
    for i in x.index:
        for n in ir.walk(i):
            if isinstance(n, ir.PAxis) or (isinstance(n, ir.PVar) and n.name in ("p", "q", "k")):
                return False
    return True


def uses_s(score: ir.Score) -> bool:
    return any(isinstance(n, (ir.SVar, ir.Softcap, ir.Alibi)) for n in ir.walk(score))


# ---------------------------------------------------------------- expansion, derivatives

_S = ir.SVar()
_ZERO, _ONE = ir.SConst(0.0), ir.SConst(1.0)


def _bin(op, a, b):
    return ir.SBin(op, a, b)


def _call(f, *args):
    return ir.SCall(f, tuple(args))


def expand(n: ir.Score) -> ir.Score:
    """``n`` with every softcap and ALiBi written out in ``+ - * /`` and functions."""
    if isinstance(n, ir.Softcap):
        c = expand(n.cap)
        return _bin("*", c, _call("tanh", _bin("/", _S, c)))
    if isinstance(n, ir.Alibi):
        dist = ir.SInt(ir.PCall("abs", (ir.PBin(ir.Op.SUB, ir.PVar("p"), ir.PVar("k")),)))
        return _bin("-", _S, _bin("*", ir.SIndex(n.slopes, (ir.PVar("h"),)), dist))
    if isinstance(n, ir.SBin):
        return ir.SBin(n.op, expand(n.left), expand(n.right))
    if isinstance(n, ir.SNeg):
        return ir.SNeg(expand(n.operand))
    if isinstance(n, ir.SCall):
        return ir.SCall(n.func, tuple(expand(a) for a in n.args))
    return n


def diff(n: ir.Score, wrt: ir.Score) -> ir.Score:
    """``d n / d wrt`` of an expanded score; ``wrt`` is ``SVar()`` or one ``SIndex`` (the
    derivative by that entry of the input, as read at that index)."""
    if n == wrt:
        return _ONE
    if isinstance(n, (ir.SVar, ir.SConst, ir.SInt, ir.SIndex)):
        return _ZERO
    if isinstance(n, ir.SNeg):
        return ir.SNeg(diff(n.operand, wrt))
    if isinstance(n, ir.SBin):
        a, b = n.left, n.right
        da, db = diff(a, wrt), diff(b, wrt)
        if n.op in "+-":
            return _bin(n.op, da, db)
        if n.op == "*":
            return _bin("+", _bin("*", da, b), _bin("*", a, db))
        # (a / b)' = a' / b - a b' / b^2
        return _bin("-", _bin("/", da, b), _bin("/", _bin("*", a, db), _bin("*", b, b)))
    if isinstance(n, ir.SCall):
        args = n.args
        d = [diff(a, wrt) for a in args]
        x = args[0]
        f = n.func
        if f == "abs":
            return _bin("*", _call("sign", x), d[0])
        if f == "exp":
            return _bin("*", n, d[0])
        if f == "log":
            return _bin("/", d[0], x)
        if f == "sqrt":
            return _bin("/", d[0], _bin("*", ir.SConst(2.0), n))
        if f == "tanh":
            return _bin("*", _bin("-", _ONE, _bin("*", n, n)), d[0])
        if f == "sigmoid":
            return _bin("*", _bin("*", n, _bin("-", _ONE, n)), d[0])
        if f in ("min", "max"):  # the derivative of the argument that is taken
            out, best = d[0], x
            for a, da in zip(args[1:], d[1:]):
                cmp = "lt" if f == "min" else "gt"
                out = _call("select_" + cmp, a, best, da, out)
                best = ir.SCall(f, (best, a))
            return out
        if f == "clamp":  # clamp(x, lo, hi) = min(max(x, lo), hi)
            return diff(ir.SCall("min", (ir.SCall("max", (x, args[1])), args[2])), wrt)
        if f == "sign" or f.startswith("select_"):
            if f == "sign":
                return _ZERO
            return _call(f, args[0], args[1], diff(args[2], wrt), diff(args[3], wrt))
    raise TypeError(f"cannot differentiate {type(n).__name__} {getattr(n, 'func', '')}")


# NOTE: differentiation also uses two functions the language does not have: sign(x), and
# select_lt(a, b, x, y) = x if a < b, y if a > b, (x + y) / 2 on a tie (select_gt likewise),
# the derivative of min/max: at a tie each argument gets half, as torch.minimum/maximum give.
INTERNAL_FUNCS = {"sign": 1, "select_lt": 4, "select_gt": 4}


# ---------------------------------------------------------------- simplification

def _const(n):
    return n.value if isinstance(n, ir.SConst) else None


def _rule_bin(n: ir.SBin):
    a, b = _const(n.left), _const(n.right)
    if a is not None and b is not None and not (n.op == "/" and b == 0):
        v = {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else 0.0}[n.op]
        if math.isfinite(v):
            return ir.SConst(v, span=n.span)
    if n.op == "+":
        if a == 0:
            return n.right
        if b == 0:
            return n.left
    if n.op == "-":
        if b == 0:
            return n.left
        if a == 0:
            return ir.SNeg(n.right, span=n.span)
    if n.op == "*":
        if a == 0 or b == 0:
            # NOTE: 0 * x is 0 for every finite x; x = inf only where the score is -inf,
            # a pair the kernels drop before the derivative is used
            return _ZERO
        if a == 1:
            return n.right
        if b == 1:
            return n.left
    if n.op == "/":
        if a == 0:
            return _ZERO
        if b == 1:
            return n.left
    return None


def _rule_neg(n: ir.SNeg):
    if isinstance(n.operand, ir.SNeg):
        return n.operand.operand
    c = _const(n.operand)
    return ir.SConst(-c, span=n.span) if c is not None else None


def _rule_call(n: ir.SCall):
    if n.func.startswith("select_") and n.args[2] == n.args[3]:
        return n.args[2]
    return None


_RULES = {ir.SBin: _rule_bin, ir.SNeg: _rule_neg, ir.SCall: _rule_call}


def simplify(n: ir.Score) -> ir.Score:
    """Bottom-up rewriting with :data:`_RULES` until nothing changes."""
    if isinstance(n, ir.SBin):
        n = ir.SBin(n.op, simplify(n.left), simplify(n.right), span=n.span)
    elif isinstance(n, ir.SNeg):
        n = ir.SNeg(simplify(n.operand), span=n.span)
    elif isinstance(n, ir.SCall):
        n = ir.SCall(n.func, tuple(simplify(a) for a in n.args), span=n.span)
    elif isinstance(n, ir.Softcap):
        n = ir.Softcap(simplify(n.cap), span=n.span)
    rule = _RULES.get(type(n))
    out = rule(n) if rule is not None else None
    return n if out is None else simplify(out)
