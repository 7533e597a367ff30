"""Lowering ``where`` predicates: integer/boolean expressions over q, p, k, h, Lq, Lk.

Types are checked (arithmetic on integers, ``and``/``or``/``not`` on booleans), parameters
become constants, ``//`` and ``%`` need a positive constant divisor, and a bound on every
intermediate value proves the arithmetic fits in 64-bit integers (what backends compute in).
"""

from __future__ import annotations

from maskc import ir
from maskc.frontend import syntax as S
from maskc.errors import MaskNameError, MaskTypeError, MaskValueError
from maskc.frontend.values import a_kind, describe

__all__ = ["lower_where", "bound", "POS_BOUND", "I64_BOUND", "check_arity", "int_call",
           "axis", "check_bounds"]

POS_BOUND = 2**31          # |q|, |p|, |k|, Lq, Lk, h and axis coordinates stay below this
I64_BOUND = 2**62
_CMP = ("<", "<=", ">", ">=", "==", "!=")
_FUNCS = {"abs": (1, 1), "min": (2, None), "max": (2, None), "clamp": (3, 3)}


def lower_where(ck, syn: S.WhereLit, env, ctx) -> ir.Where:
    pred, ty = _lower(ck, syn.pred, env, ctx)
    if ty != "bool":
        raise MaskTypeError("a 'where' predicate must be a condition (a comparison, 'and', "
                            "'or', 'not' or a boolean), got an integer expression",
                            syn.pred.span)
    check_bounds(pred)
    return ir.Where(pred, span=syn.span)


def _lower(ck, syn, env, ctx) -> tuple[ir.Pred, str]:
    sp = syn.span
    if isinstance(syn, S.Int):
        ck.int_value(syn.value, sp, "an integer")
        return ir.PConst(syn.value, span=sp), "int"
    if isinstance(syn, S.Bool):
        return ir.PConst(syn.value, span=sp), "bool"
    if isinstance(syn, S.Float):
        raise MaskTypeError(f"a 'where' predicate uses integers, got the float {syn.value!r}", sp)
    if isinstance(syn, S.Name):
        if syn.id in ir.PRED_VARS:
            return ir.PVar(syn.id, span=sp), "int"
        v = ck.eval(syn, env, ctx)
        if isinstance(v, bool):
            return ir.PConst(v, span=sp), "bool"
        if isinstance(v, int):
            return ir.PConst(ck.int_value(v, sp, f"'{syn.id}'"), span=sp), "int"
        raise MaskTypeError(f"'{syn.id}' is {a_kind(v)} ({describe(v)}); a 'where' predicate "
                            "uses integers and booleans only", sp)
    if isinstance(syn, S.Axis):
        return axis(syn, ctx), "int"
    if isinstance(syn, S.Unary):
        x, ty = _lower(ck, syn.operand, env, ctx)
        want = "bool" if syn.op == "not" else "int"
        _expect(ty, want, syn.operand.span, syn.op)
        if isinstance(x, ir.PConst):
            return ir.PConst(-x.value if want == "int" else not x.value, span=sp), want
        return ir.PUn(ir.Op.of(syn.op, unary=True), x, span=sp), want
    if isinstance(syn, S.BinOp):
        a, ta = _lower(ck, syn.left, env, ctx)
        b, tb = _lower(ck, syn.right, env, ctx)
        want = "bool" if syn.op in ("and", "or") else "int"
        _expect(ta, want, syn.left.span, syn.op)
        _expect(tb, want, syn.right.span, syn.op)
        if syn.op in ("//", "%") and not (isinstance(b, ir.PConst) and b.value > 0):
            raise MaskValueError(f"'{syn.op}' inside 'where' needs a positive constant divisor",
                                 syn.right.span)
        return ir.PBin(ir.Op.of(syn.op), a, b, span=sp), want
    if isinstance(syn, S.Compare):
        parts = [_lower(ck, o, env, ctx) for o in syn.operands]
        for (x, t), o in zip(parts, syn.operands):
            _expect(t, "int", o.span, "comparison")
        out = None
        for i, op in enumerate(syn.ops):
            c = ir.PBin(ir.Op.of(op), parts[i][0], parts[i + 1][0], span=sp)
            out = c if out is None else ir.PBin(ir.Op.AND, out, c, span=sp)
        return out, "bool"
    if isinstance(syn, S.Call):
        if syn.func not in _FUNCS:
            raise MaskNameError(f"'{syn.func}' cannot be called inside 'where' (only abs, min, "
                                "max, clamp)", sp)
        check_arity(syn, _FUNCS[syn.func])
        args = []
        for a in syn.args:
            x, t = _lower(ck, a.value, env, ctx)
            _expect(t, "int", a.value.span, syn.func + "()")
            args.append(x)
        return int_call(syn.func, args, sp), "int"
    raise MaskTypeError("this expression is not allowed inside 'where'", sp)


def check_arity(syn: S.Call, arity) -> None:
    lo, hi = arity
    n = len(syn.args)
    if n < lo or (hi is not None and n > hi):
        want = str(lo) if lo == hi else f"at least {lo}"
        raise MaskTypeError(f"{syn.func}() takes {want} argument{'s' if want != '1' else ''}, "
                            f"got {n}", syn.span)
    for a in syn.args:
        if a.name is not None:
            raise MaskTypeError(f"{syn.func}() takes positional arguments only", a.span)


def int_call(func: str, args, span) -> ir.Pred:
    """``abs``/``min``/``max`` as one call; ``clamp(x, lo, hi)`` as ``min(max(x, lo), hi)``."""
    if func == "clamp":
        return ir.PCall("min", (ir.PCall("max", tuple(args[:2]), span=span), args[2]), span=span)
    return ir.PCall(func, tuple(args), span=span)


def _expect(got: str, want: str, span, op: str) -> None:
    if got != want:
        what = {"int": "an integer", "bool": "a condition"}
        name = op if op in ("comparison",) or op.endswith("()") else f"'{op}'"
        raise MaskTypeError(f"{name} needs {what[want]} here, got {what[got]}", span)


def axis(syn: S.Axis, ctx) -> ir.PAxis:
    if syn.base not in ("q", "k", "p"):
        raise MaskNameError(f"grid coordinates are taken of q, p or k, not '{syn.base}'",
                            syn.span)
    if ctx.grid is None:
        raise MaskNameError("axis coordinates need a grid: declare the mask 'over grid(...)'",
                            syn.span)
    if ctx.in_blocks or ctx.in_within:
        raise MaskTypeError("axis coordinates cannot be used inside blocks() or within()",
                            syn.span)
    axes = ctx.grid.axes
    if isinstance(syn.axis, int):
        if syn.axis >= len(axes):
            raise MaskValueError(f"axis {syn.axis} is out of range: the grid has {len(axes)} "
                                 "axes", syn.span)
        return ir.PAxis("k" if syn.base == "k" else "q", syn.axis, span=syn.span)
    names = [a.name for a in axes]
    if syn.axis not in names:
        known = ", ".join(n for n in names if n) or "none (the grid's axes are positional)"
        raise MaskNameError(f"the grid has no axis '{syn.axis}'; its axes are: {known}", syn.span)
    return ir.PAxis("k" if syn.base == "k" else "q", names.index(syn.axis), syn.axis,
                    span=syn.span)


_BOUND = {ir.Op.ADD: lambda a, b: a + b, ir.Op.SUB: lambda a, b: a + b,
          ir.Op.MUL: lambda a, b: a * b, ir.Op.FLOORDIV: lambda a, b: a,
          ir.Op.MOD: lambda a, b: b}  # comparisons and logic: 0 or 1


def bound(pred: ir.Pred) -> int:
    """An upper bound on ``|value|`` of an integer predicate expression."""
    if isinstance(pred, ir.PConst):
        return abs(int(pred.value))
    if isinstance(pred, (ir.PVar, ir.PAxis)):
        return POS_BOUND
    if isinstance(pred, ir.PUn):
        return bound(pred.operand)
    if isinstance(pred, ir.PCall):
        return max(bound(a) for a in pred.args)
    if isinstance(pred, ir.PBin):
        a, b = bound(pred.left), bound(pred.right)
        return _BOUND.get(pred.op, lambda a, b: 1)(a, b)
    raise TypeError(type(pred).__name__)


def check_bounds(pred: ir.Pred) -> None:
    for node in ir.walk(pred):
        if isinstance(node, ir.PBin) and node.op in _BOUND and bound(node) > I64_BOUND:
            raise MaskValueError("this arithmetic could overflow 64-bit integers for "
                                 "positions up to 2**31", node.span)
