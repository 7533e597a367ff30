"""Lowering scores, the float expression after ``with`` (docs/language.md section 11).

A score mixes two types: integer expressions (positions, heads, lengths, grid coordinates;
lowered to the predicate IR, :class:`~maskc.ir.Pred`, with ``//`` and ``%``) and float
expressions (:class:`~maskc.ir.Score`). An integer meets a float only through ``+ - * /``
or a float function, where it is promoted (:class:`~maskc.ir.SInt`). Inside a score ``s``
is the score, whatever the parameters are named; ``q p k h Lq Lk`` are the pair's
positions. A ``let`` macro used here is lowered here, so its body may use ``s``.
"""

from __future__ import annotations

from dataclasses import dataclass

from maskc import ir
from maskc.errors import MaskNameError, MaskTypeError, MaskValueError
from maskc.frontend import syntax as S
from maskc.frontend.predicates import axis, check_arity, check_bounds, int_call
from maskc.frontend.values import InputV, a_kind, describe

__all__ = ["lower_score", "score_input_ranks"]


@dataclass(frozen=True)
class _Lowered:
    """A macro argument already lowered (an integer :class:`ir.Pred` or a float score)."""

    node: ir.Node


_INT_FUNCS = ("abs", "min", "max", "clamp")


def lower_score(ck, syn: S.Syn, env, ctx) -> ir.Score:
    x = _lower(ck, syn, env, ctx)
    out = _float(x, syn.span)
    for n in ir.walk(out):
        if isinstance(n, ir.SInt):
            check_bounds(n.value)
        if isinstance(n, ir.SIndex):
            for i in n.index:
                check_bounds(i)
    return out


def score_input_ranks(score: ir.Score) -> dict[str, tuple[int, ir.Node]]:
    """Each float input the score reads: ``(rank, first use)``; a :class:`MaskTypeError` at
    the use that reads an input with another number of indices than its first use."""
    out: dict[str, tuple[int, ir.Node]] = {}
    for n in ir.walk(score):
        if isinstance(n, (ir.SIndex, ir.Alibi)):
            name = n.input if isinstance(n, ir.SIndex) else n.slopes
            rank = len(n.index) if isinstance(n, ir.SIndex) else 1
            prev = out.setdefault(name, (rank, n))
            if prev[0] != rank:
                where = f" at {prev[1].span.line}:{prev[1].span.column}" if prev[1].span else ""
                raise MaskTypeError(f"input '{name}' is read with {rank} ind"
                                    f"{'ex' if rank == 1 else 'ices'} here, but with "
                                    f"{prev[0]}{where}: an input has one rank", n.span)
    return out


def _float(x: ir.Node, span) -> ir.Score:
    """``x`` as a float score (an integer expression promoted)."""
    if isinstance(x, ir.Score):
        return x
    if isinstance(x, ir.PConst):
        return ir.SConst(float(x.value), span=x.span or span)
    return ir.SInt(x, span=x.span or span)


def _int(x: ir.Node, span, what: str) -> ir.Pred:
    if isinstance(x, ir.Score):
        raise MaskTypeError(f"{what} must be an integer expression, got a float one", span)
    return x


def _lower(ck, syn: S.Syn, env, ctx) -> ir.Node:
    sp = syn.span
    if isinstance(syn, S.Float):
        return ir.SConst(syn.value, span=sp)
    if isinstance(syn, S.Int):
        ck.int_value(syn.value, sp, "an integer")
        return ir.PConst(syn.value, span=sp)
    if isinstance(syn, S.Bool):
        raise MaskTypeError("a score is a number, got a boolean", sp)
    if isinstance(syn, S.Name):
        return _name(ck, syn, env, ctx)
    if isinstance(syn, S.Axis):
        return axis(syn, ctx)
    if isinstance(syn, S.Index):
        return _index(ck, syn, env, ctx)
    if isinstance(syn, S.Unary):
        if syn.op != "-":
            raise MaskTypeError(f"'{syn.op}' is not allowed in a score", sp)
        x = _lower(ck, syn.operand, env, ctx)
        if isinstance(x, ir.SConst):
            return ir.SConst(-x.value, span=sp)
        if isinstance(x, ir.Score):
            return ir.SNeg(x, span=sp)
        if isinstance(x, ir.PConst):
            return ir.PConst(-x.value, span=sp)
        return ir.PUn(ir.Op.NEG, x, span=sp)
    if isinstance(syn, S.BinOp):
        return _binop(ck, syn, env, ctx)
    if isinstance(syn, S.Call):
        return _call(ck, syn, env, ctx)
    if isinstance(syn, S.WhereLit):
        raise MaskTypeError("'where' makes a mask; a score is a float expression", sp)
    raise MaskTypeError("this expression is not allowed in a score (numbers, s, positions, "
                        "indexed inputs, + - * /, and abs min max clamp exp log sqrt tanh "
                        "sigmoid softcap alibi)", sp)


def _name(ck, syn: S.Name, env, ctx):
    sp, name = syn.span, syn.id
    if name == "s":
        return ir.SVar(span=sp)
    if name in ir.PRED_VARS:
        return ir.PVar(name, span=sp)
    if name in env:
        v = env[name]
        if isinstance(v, _Lowered):
            return v.node
        if isinstance(v, bool):
            raise MaskTypeError(f"'{name}' is a boolean; a score uses numbers", sp)
        if isinstance(v, float):
            return ir.SConst(v, span=sp)
        if isinstance(v, int):
            return ir.PConst(ck.int_value(v, sp, f"'{name}'"), span=sp)
        if isinstance(v, InputV):
            raise MaskTypeError(f"input '{v.name}' is a tensor: read an entry of it, "
                                f"'{v.name}[...]'", sp)
        raise MaskTypeError(f"'{name}' is {a_kind(v)} ({describe(v)}); a score uses numbers",
                            sp)
    if name in ck.lets:
        return _expand(ck, ck.lets[name], (), syn, env, ctx)
    from maskc.frontend.primitives import BUILTINS
    if name in BUILTINS:
        raise MaskTypeError(f"'{name}' is a mask; a score is a float expression", sp)
    raise ck.undefined(name, sp, env, builtins=False)


def _index(ck, syn: S.Index, env, ctx):
    sp = syn.span
    if syn.base in ("q", "k", "p") and syn.base not in env and len(syn.items) == 1 and \
            isinstance(syn.items[0], S.Int):  # q[0]: a grid coordinate
        return axis(S.Axis(syn.base, syn.items[0].value, span=sp), ctx)
    v = env.get(syn.base)
    if isinstance(v, _Lowered) or v is None:
        if syn.base in ck.lets or v is not None:
            raise MaskTypeError(f"'{syn.base}' is no input: only runtime inputs are indexed",
                                sp)
        raise ck.undefined(syn.base, sp, env, as_input=True)
    if not isinstance(v, InputV):
        raise MaskTypeError(f"'{syn.base}' is {a_kind(v)}; only runtime inputs are indexed",
                            sp)
    index = tuple(_int(_lower(ck, i, env, ctx), i.span, "an index") for i in syn.items)
    return ir.SIndex(v.name, index, span=sp)


_ARITH = {"+": ir.Op.ADD, "-": ir.Op.SUB, "*": ir.Op.MUL, "//": ir.Op.FLOORDIV,
          "%": ir.Op.MOD}


def _binop(ck, syn: S.BinOp, env, ctx):
    sp, op = syn.span, syn.op
    if op in ("|", "&", "and", "or"):
        raise MaskTypeError(f"'{op}' is not allowed in a score (scores are numbers)", sp)
    a, b = _lower(ck, syn.left, env, ctx), _lower(ck, syn.right, env, ctx)
    floats = isinstance(a, ir.Score) or isinstance(b, ir.Score)
    if op in ("//", "%"):
        _int(a, syn.left.span, f"the left operand of '{op}'")
        _int(b, syn.right.span, f"the right operand of '{op}' (use '/' for floats)")
        if not (isinstance(b, ir.PConst) and b.value > 0):
            raise MaskValueError(f"'{op}' needs a positive constant divisor", syn.right.span)
        return ir.PBin(_ARITH[op], a, b, span=sp)
    if op == "/" or floats:
        if op == "/" and isinstance(b, (ir.PConst, ir.SConst)) and b.value == 0:
            raise MaskValueError("division by zero", syn.right.span)
        return ir.SBin(op, _float(a, syn.left.span), _float(b, syn.right.span), span=sp)
    return ir.PBin(_ARITH[op], a, b, span=sp)


def _call(ck, syn: S.Call, env, ctx):
    sp, func = syn.span, syn.func
    if func in env:
        raise MaskTypeError(f"'{func}' is a parameter, not a function", sp)
    if func in ck.lets:
        return _expand(ck, ck.lets[func], syn.args, syn, env, ctx)
    if func == "softcap":
        check_arity(syn, (1, 1))
        cap = _float(_lower(ck, syn.args[0].value, env, ctx), sp)
        if isinstance(cap, ir.SConst) and not cap.value > 0:
            # NOTE: c * tanh(s / c) is 0 / 0 at c = 0, and c < 0 flips the scores' order
            raise MaskValueError(f"softcap(c) needs a cap c > 0, got {cap.value}",
                                 syn.args[0].value.span)
        return ir.Softcap(cap, span=sp)
    if func == "alibi":
        check_arity(syn, (1, 1))
        arg = syn.args[0].value
        v = env.get(arg.id) if isinstance(arg, S.Name) else None
        if isinstance(arg, S.Name) and not ck.bound(arg.id, env):
            raise ck.undefined(arg.id, arg.span, env, as_input=True)
        if not isinstance(v, InputV):
            raise MaskTypeError("alibi() takes a runtime input, the slopes per head "
                                "(declare 'input slopes')", arg.span)
        return ir.Alibi(v.name, span=sp)
    if func not in ir.SCORE_FUNCS:
        from maskc.frontend.primitives import BUILTINS
        if func in BUILTINS:
            raise MaskTypeError(f"'{func}' is a mask; a score is a float expression", sp)
        if func in ck.broken:
            from maskc.frontend.check import Unchecked
            raise Unchecked(func)
        raise MaskNameError(f"unknown function '{func}' in a score (known: "
                            f"{', '.join(ir.SCORE_FUNCS)}, softcap, alibi)", sp)
    check_arity(syn, ir.SCORE_FUNCS[func])
    args = [_lower(ck, a.value, env, ctx) for a in syn.args]
    if func in _INT_FUNCS and not any(isinstance(a, ir.Score) for a in args):
        return int_call(func, args, sp)  # integers stay integers (an index may use them)
    return ir.SCall(func, tuple(_float(a, x.span) for a, x in zip(args, syn.args)), span=sp)


def _expand(ck, let: S.LetItem, args, syn, env, ctx):
    """A macro in a score: the checker's expansion, with arguments lowered here (an input
    stays an input) and the body lowered as a score."""
    def bind(a):
        v = env.get(a.id) if isinstance(a, S.Name) else None
        return v if isinstance(v, InputV) else _Lowered(_lower(ck, a, env, ctx))
    return ck._expand(let, args, syn, env, ctx, bind=bind,
                      evaluate=lambda body, local, c: _lower(ck, body, local, c))
