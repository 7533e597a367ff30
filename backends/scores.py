"""Scores (``with SCORE``, docs/language.md section 11) rendered as float source, once for every
generating backend: the Triton kernels and the FlexAttention ``score_mod``.

:func:`render` walks a :class:`~maskc.ir.Score` through :data:`LOWERINGS` (one entry per
node type) into the renderer's emitter: every float subexpression bound once and named
(``sc``), constants folded in Python, integer terms rendered by the mask constructs
(:func:`~maskc.backends.constructs.pred`) and promoted. What differs between targets is a
:class:`Target`: how functions are spelled, how an integer becomes a float, and how an
input is read at clamped indices (``load``, the backend's own). A softcap renders as
itself (``c * tanh(s / c)``), an ALiBi as ``s - slope * |p - k|``.

:func:`derivatives` gives what the backward kernels need: ``dSCORE/ds`` and, per entry of a
float input read by the score, ``dSCORE/dx[index]`` (:mod:`maskc.ir.scores`: symbolic, then
simplified).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from maskc import ir
from maskc.errors import MaskError
from maskc.ir.scores import diff, expand, simplify

from maskc.backends.constructs import Env, pred
from maskc.backends.emit import w

__all__ = ["Target", "TRITON_SCORES", "TORCH_SCORES", "render", "derivatives", "reads"]


@dataclass(frozen=True)
class Target:
    """How one target spells float functions (``{}`` slots for the arguments)."""

    name: str
    funcs: dict            # func -> format
    to_float: str          # an integer tensor as a float one
    min2: str              # two tensors
    max2: str
    where: str


TRITON_SCORES = Target(
    "triton",
    {"abs": "tl.abs({})", "exp": "tl.exp({})", "log": "tl.log({})", "sqrt": "tl.sqrt({})",
     "sigmoid": "tl.sigmoid({})",
     # NOTE: Triton has no tanh in tl (libdevice's is CUDA-only, absent in the interpreter)
     "tanh": "2.0 * tl.sigmoid(2.0 * {}) - 1.0",
     "sign": "tl.where({0} > 0.0, 1.0, tl.where({0} < 0.0, -1.0, 0.0))"},
    "{}.to(tl.float32)", "tl.minimum({}, {})", "tl.maximum({}, {})", "tl.where({}, {}, {})")

TORCH_SCORES = Target(
    "torch",
    {"abs": "torch.abs({})", "exp": "torch.exp({})", "log": "torch.log({})",
     "sqrt": "torch.sqrt({})", "sigmoid": "torch.sigmoid({})", "tanh": "torch.tanh({})",
     "sign": "torch.sign({})"},
    "{}.to(score.dtype)", "torch.minimum({}, {})", "torch.maximum({}, {})",
    "torch.where({}, {}, {})")

_MATH = {"abs": abs, "exp": math.exp, "log": math.log, "sqrt": math.sqrt,
         "tanh": math.tanh, "sigmoid": lambda x: 1.0 / (1.0 + math.exp(-x)),
         "sign": lambda x: float((x > 0) - (x < 0))}


@dataclass
class _Ctx:
    r: object        # the backend's renderer (its emitter is r.e)
    env: Env
    s: str           # the name of the score variable
    t: Target
    load: object     # load(r, node: SIndex, indices) -> source of x[clamped indices]


def _let(c: _Ctx, text: str):
    return c.r.e.let(text, "sc")


def _num(v: float) -> str:
    if math.isnan(v):
        return 'float("nan")'
    if math.isinf(v):
        return 'float("inf")' if v > 0 else 'float("-inf")'
    return repr(float(v))


def _fold(v: float):
    """A folded constant, or ``None`` when it is not a finite float (left to run time)."""
    return v if isinstance(v, float) and math.isfinite(v) else None


def _text(x) -> str:
    return _num(x) if isinstance(x, float) else x


def _int(c: _Ctx, p: ir.Pred):
    v = pred(c.r, p, c.env)
    if isinstance(v, bool):
        v = int(v)
    if isinstance(v, int):
        return float(v)
    return _let(c, c.t.to_float.format(w(v)))


def _bin(c: _Ctx, op: str, a, b):
    if isinstance(a, float) and isinstance(b, float):
        try:
            v = _fold({"+": a + b, "-": a - b, "*": a * b}[op] if op != "/" else a / b)
        except ZeroDivisionError:
            v = None
        if v is not None:
            return v
    if op == "/" and isinstance(b, float) and b != 0 and math.isfinite(1.0 / b):
        # NOTE: by the reciprocal, as softcap renders s / c: the derivative's tanh(s / c) is
        # then the same expression as the score's and is computed once
        return _bin(c, "*", a, 1.0 / b)
    return _let(c, f"{w(_text(a))} {op} {w(_text(b))}")


def _call(c: _Ctx, func: str, args: list):
    if all(isinstance(a, float) for a in args):
        try:
            v = _fold(_MATH[func](*args)) if func in _MATH else \
                _fold({"min": min, "max": max}[func](*args)) if func in ("min", "max") else None
        except (ValueError, OverflowError):
            v = None
        if v is not None:
            return v
    if func in ("min", "max"):
        out = args[0]
        for a in args[1:]:
            out = _minmax(c, func, out, a)
        return out
    if func == "clamp":
        return _minmax(c, "min", _minmax(c, "max", args[0], args[1]), args[2])
    if func in ("select_lt", "select_gt"):  # min/max's derivative: half each on a tie
        a, b, x, y = args
        if x == y:
            return x
        first, second = ("<", ">") if func == "select_lt" else (">", "<")
        if isinstance(a, float) and isinstance(b, float):
            return x if (a < b if first == "<" else a > b) else \
                y if a != b else _bin(c, "*", _bin(c, "+", x, y), 0.5)
        half = _bin(c, "*", _bin(c, "+", x, y), 0.5)
        tie = _let(c, c.t.where.format(f"{_text(a)} {second} {_text(b)}", _text(y),
                                       _text(half)))
        return _let(c, c.t.where.format(f"{_text(a)} {first} {_text(b)}", _text(x),
                                        _text(tie)))
    fmt = c.t.funcs.get(func)
    if fmt is None:
        raise MaskError(f"the {c.t.name} backend cannot render the score function {func}")
    return _let(c, fmt.format(_text(args[0])))


def _minmax(c: _Ctx, func: str, a, b):
    if isinstance(a, float) and isinstance(b, float):
        return min(a, b) if func == "min" else max(a, b)
    if a == b:
        return a
    if c.t is TORCH_SCORES and (isinstance(a, float) or isinstance(b, float)):
        x, k = (b, a) if isinstance(a, float) else (a, b)  # torch.minimum takes tensors only
        return _let(c, f"{w(x)}.clamp({'max' if func == 'min' else 'min'}={_num(k)})")
    fmt = c.t.min2 if func == "min" else c.t.max2
    return _let(c, fmt.format(_text(a), _text(b)))


def _index(c: _Ctx, n: ir.SIndex):
    return c.load(c.r, n, [pred(c.r, i, c.env) for i in n.index])


def _softcap(c: _Ctx, n: ir.Softcap):
    cap = go(c, n.cap)
    c.r.e.note(f"softcap({_text(cap)}) = cap * tanh(s / cap)")
    inner = _bin(c, "*", c.s, 1.0 / cap) if isinstance(cap, float) and cap != 0 else \
        _bin(c, "/", c.s, cap)
    return _bin(c, "*", cap, _call(c, "tanh", [inner]))


def _alibi(c: _Ctx, n: ir.Alibi):
    c.r.e.note(f"alibi({n.slopes}) = s - {n.slopes}[h] * |p - k|")
    slope = _index(c, ir.SIndex(n.slopes, (ir.PVar("h"),)))
    dist = _int(c, ir.PCall("abs", (ir.PBin(ir.Op.SUB, ir.PVar("p"), ir.PVar("k")),)))
    return _bin(c, "-", c.s, _bin(c, "*", slope, dist))


LOWERINGS = {
    ir.SVar: lambda c, n: c.s,
    ir.SConst: lambda c, n: float(n.value) if math.isfinite(n.value) else _num(n.value),
    ir.SInt: lambda c, n: _int(c, n.value),
    ir.SIndex: _index,
    ir.SNeg: lambda c, n: (lambda x: -x if isinstance(x, float) else _let(c, f"-{w(x)}"))(
        go(c, n.operand)),
    ir.SBin: lambda c, n: _bin(c, n.op, go(c, n.left), go(c, n.right)),
    ir.SCall: lambda c, n: _call(c, n.func, [go(c, a) for a in n.args]),
    ir.Softcap: _softcap,
    ir.Alibi: _alibi,
}


def go(c: _Ctx, n: ir.Score):
    fn = LOWERINGS.get(type(n))
    if fn is None:
        raise MaskError(f"the {c.t.name} backend cannot render the score node "
                        f"{type(n).__name__}", n.span)
    return fn(c, n)


def render(r, score: ir.Score, env: Env, s: str, target: Target, load) -> str:
    """Source of ``score`` at the pair ``env`` with the score variable ``s``; statements go
    to ``r.e``. ``load(r, node, indices)`` reads a float input at clamped indices."""
    out = go(_Ctx(r, env, s, target, load), score)
    if isinstance(out, float) and target is TORCH_SCORES:
        # NOTE: a constant score: FlexAttention's score_mod must return a tensor
        return f"torch.full_like({s}, {_num(out)})"
    return _text(out)


def reads(n: ir.Score) -> list[ir.SIndex]:
    """The distinct input entries the expanded score reads, in order of first use."""
    out: list[ir.SIndex] = []
    for x in ir.walk(expand(n)):
        if isinstance(x, ir.SIndex) and x not in out:
            out.append(x)
    return out


def derivatives(score: ir.Score) -> tuple[ir.Score, list[tuple[ir.SIndex, ir.Score]]]:
    """``(dSCORE/ds, [(entry, dSCORE/dentry), ...])`` over the entries :func:`reads` lists,
    each simplified (entries whose derivative is 0 are left out)."""
    full = expand(score)
    ds = simplify(diff(full, ir.SVar()))
    out = []
    for x in reads(score):
        d = simplify(diff(full, x))
        if d != ir.SConst(0.0):
            out.append((x, d))
    return ds, out
