"""The checker: surface syntax -> typed mask IR.

Resolves names (parameters, ``let`` constants and macros, builtins), binds compile-time
parameter overrides with type checks, evaluates integer arithmetic, validates ranges, and
lowers ``where`` predicates. Every error points at the user's text.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, replace

from maskc import ir
from maskc.frontend import syntax as S
from maskc.errors import (MaskError, MaskNameError, MaskParamError, MaskSizeError, MaskTypeError,
                     MaskValueError, Span)
from maskc.frontend.values import (InputV, ListV, RangeV, TupleV, Value, a_kind, compatible, describe,
                     from_python, kind)
from maskc.frontend.values import what as what_
from maskc.frontend.primitives import BUILTINS
from maskc.ir.inputs import input_kinds

__all__ = ["check", "check_mask", "mask_names", "Ctx", "Checker", "Unchecked", "MAX_INT",
           "RESERVED", "ir_too_deep"]

# The largest integer a spec may hold (a size, a position, a grid's token count): lengths
# stay below 2**31 everywhere (maskc.analysis.sizes).
MAX_INT = S.MAX_INT
# NOTE: expansion is bounded so a file of doubling macros cannot build an exponential tree.
MAX_EXPANSIONS = 20_000
# NOTE: q, p, k, h, Lq, Lk may name parameters (docs/language.md's own natten(h, w, k) example does);
# inside `where` the predicate variables shadow them.
RESERVED = frozenset({"_"})


@dataclass(frozen=True, slots=True)
class Ctx:
    """Where an expression is being checked: grid, inside ``blocks``, inside ``within``."""

    grid: ir.Grid | None = None
    in_blocks: bool = False
    in_within: bool = False
    in_tiles: bool = False   # inside tile-shaped blocks((b1, ..., bd), e)


def mask_names(module: S.Module) -> list[str]:
    return [it.name for it in module.items if isinstance(it, S.MaskItem)]


class Unchecked(Exception):
    """A use of a name that an item which did not parse defines (:attr:`Checker.broken`):
    that item's error is the one to report, so the mask using it is not checked further.
    Never raised by :func:`check`, whose module is whole."""


_SUGGEST_FROM = 256  # most names (beside the builtins) an unknown name is compared with


class Checker:
    """Checks one module; :meth:`mask` lowers one of its masks with parameter overrides.

    With ``errors`` (a list), a name defined twice or reserved is appended to it and that
    item left out, instead of raised; ``broken`` names what items that failed to parse
    define. Uses of those names, and of reserved names an item failed to redefine, raise
    :class:`Unchecked`.
    """

    def __init__(self, module: S.Module, errors: list | None = None,
                 broken: frozenset[str] = frozenset()):
        self.module = module
        self.lets: dict[str, S.LetItem] = {}
        self.masks: dict[str, S.MaskItem] = {}
        self._close: dict = {}  # suggestions found, per name and scope (undefined())
        self._by_len = None     # item names by length, for _nearest
        rejected = set()
        for it in module.items:
            table = self.lets if isinstance(it, S.LetItem) else self.masks
            err = None
            if it.name in self.lets or it.name in self.masks:
                err = MaskNameError(f"'{it.name}' is defined twice", it.span)
            elif it.name in BUILTINS or it.name in RESERVED:
                err = MaskNameError(f"'{it.name}' is a reserved name and cannot be redefined",
                                    it.span)
                rejected.add(it.name)
            if err is not None:
                if errors is None:
                    raise err
                errors.append(err)
                continue
            table[it.name] = it
        self.broken = (broken | rejected) - set(self.lets) - set(self.masks)
        self.item: S.MaskItem | None = None  # the mask being checked
        self._expanding: list[str] = []
        self._expansions = 0

    # ------------------------------------------------------------ names
    def bound(self, name: str, env) -> bool:
        """Whether ``name`` means something here (a variable, an item, a builtin)."""
        return (name in env or name in self.lets or name in self.masks or name in BUILTINS
                or name in ir.PRED_VARS or name == "s")

    def _nearest(self, name: str, names: set, env) -> set:
        """Of many names in scope, those compared with an unknown ``name``: the builtins, the
        local names, and up to :data:`_SUGGEST_FROM` items nearest in length (difflib's ratio
        falls with the length difference; a file of thousands of masks otherwise costs a
        comparison with each of them per unknown name)."""
        if self._by_len is None:  # (the items are fixed once the checker is made)
            self._by_len = {}
            for n in sorted({*self.lets, *self.masks}):
                self._by_len.setdefault(len(n), []).append(n)
        table = self._by_len
        near: list = []
        for d in range(0, max(table, default=0) + len(name) + 1):
            for length in {len(name) - d, len(name) + d}:
                near += table.get(length, ())
            if len(near) >= _SUGGEST_FROM:
                break
        keep = set(near[:_SUGGEST_FROM]) | set(BUILTINS) | set(env)
        return names & keep

    def undefined(self, name: str, span: Span | None, env, as_input: bool = False,
                  builtins: bool = True) -> MaskNameError:
        """The error for an undefined ``name``: the closest name in scope as a suggestion, or,
        where a runtime input is needed (``as_input``), how to declare one. A name that an
        item which did not parse defines raises :class:`Unchecked` instead."""
        if name in self.broken:
            raise Unchecked(name)
        if as_input:
            scope = [k for k, v in env.items() if isinstance(v, InputV)]
        else:
            scope = [*env, *self.lets, *self.masks, *(BUILTINS if builtins else ())]
        # NOTE: one search per distinct (name, scope): a file repeating one typo in each of
        # thousands of masks searched every mask name each time (quadratic: 27 s for 4,000)
        key = (name, as_input, builtins, tuple(env))
        if key not in self._close:
            names = set(scope) - {name}
            if len(names) > _SUGGEST_FROM:
                names = self._nearest(name, names, env)
            self._close[key] = difflib.get_close_matches(name, sorted(names), n=1)
        close = self._close[key]
        if close:
            return MaskNameError(f"undefined name '{name}'; did you mean '{close[0]}'?", span)
        item = self.item
        if item is not None and self._expanding and any(p.name == name for p in item.params):
            # NOTE: a macro sees its own parameters only, not those of the mask using it
            return MaskNameError(f"undefined name '{name}' (a macro sees only its own "
                                 f"parameters: give '{self._expanding[-1]}' a parameter for "
                                 "it)", span)
        if as_input:
            head = f"mask {item.name}({'..., ' if item.params else ''}" if item else "mask m("
            return MaskNameError(f"undefined name '{name}' (declare it as an input: "
                                 f"{head}input {name}) = ...)", span)
        return MaskNameError(f"undefined name '{name}'", span)

    # ------------------------------------------------------------ masks and parameters
    def mask(self, name: str, overrides: dict) -> ir.MaskDef:
        item = self.item = self.masks[name]
        env: dict[str, Value] = {}
        inputs: list[str] = []
        declared: dict[str, S.Param] = {}
        for p in item.params:
            if p.name in declared:
                raise MaskNameError(f"parameter '{p.name}' is declared twice", p.span)
            declared[p.name] = p
            if p.name == "_" or p.name in BUILTINS:
                raise MaskNameError(f"'{p.name}' is a reserved name and cannot be a parameter",
                                    p.span)
        unknown = [k for k in overrides if k not in declared]
        if unknown:
            known = ", ".join(p.name for p in item.params if not p.is_input) or "none"
            raise MaskParamError(f"mask '{name}' has no parameter '{unknown[0]}'; "
                                 f"its parameters are: {known}", item.span)
        for p in item.params:
            if p.is_input:
                if p.name in overrides:
                    raise MaskParamError(f"'{p.name}' is a runtime input: pass it when the mask "
                                         "is used (dense(), attention()), not to compile()",
                                         p.span)
                env[p.name] = InputV(p.name)
                inputs.append(p.name)
                continue
            default = self.eval(p.default, env, Ctx()) if p.default is not None else None
            if p.name in overrides:
                try:
                    value = from_python(overrides[p.name])
                except TypeError as err:
                    raise MaskParamError(f"parameter '{p.name}' of mask '{name}': {err}",
                                         p.span) from None
                self._check_override(value, p, name)
                if isinstance(default, float) and isinstance(value, int):
                    value = float(value)
                if default is not None and not compatible(default, value):
                    raise MaskParamError(
                        f"parameter '{p.name}' of mask '{name}' expects {a_kind(default)} "
                        f"(default {describe(default)}), got {describe(value)}", p.span)
            elif default is not None:
                value = default
            else:
                raise MaskParamError(f"parameter '{p.name}' of mask '{name}' has no default; "
                                     f"pass it to maskc.compile(..., {p.name}=...)", p.span)
            env[p.name] = value
        grid = self._grid(item, env) if item.grid is not None else None
        body = self.mask_value(item.body, env, Ctx(grid=grid))
        score, floats = None, {}
        if item.score is not None:
            from maskc.frontend.scores import lower_score, score_input_ranks
            score = lower_score(self, item.score, env, Ctx(grid=grid))
            floats = score_input_ranks(score)
        mdef = ir.MaskDef(name, tuple(x for x in inputs if x not in floats), grid, body,
                          score, tuple(x for x in inputs if x in floats), span=item.span)
        kinds = input_kinds(replace(mdef, inputs=tuple(inputs)))
        for x, (rank, use) in floats.items():  # a score's input is read by nothing else
            first = next((n for n in ir.walk(body) if getattr(n, "input", None) == x), None)
            if first is not None:
                raise MaskTypeError(
                    f"input '{x}' is a float tensor of the score here, but the mask reads it "
                    f"as {kinds[x].kind} at {first.span.line}:{first.span.column}: give "
                    "each use its own input" if first.span else "", use.span)
        return mdef

    def _check_override(self, value: Value, p: S.Param, mask: str) -> None:
        """Every integer in a Python override (range ends included) fits in ``MAX_INT``."""
        stack = [value]
        while stack:
            v = stack.pop()
            if isinstance(v, RangeV):
                stack += [v.start, v.stop]
            elif isinstance(v, (ListV, TupleV)):
                stack += v.items
            elif isinstance(v, int) and not isinstance(v, bool) and abs(v) > MAX_INT:
                raise MaskValueError(f"parameter '{p.name}' of mask '{mask}': {v} is out of "
                                     f"range (integers are at most {MAX_INT})", p.span)

    def _grid(self, item: S.MaskItem, env) -> ir.Grid:
        named = [a.name is not None for a in item.grid]
        if any(named) and not all(named):
            raise MaskTypeError("grid axes must be all named or all positional", item.grid[0].span)
        axes, seen = [], set()
        for a in item.grid:
            if a.name is not None and a.name in seen:
                raise MaskNameError(f"grid axis '{a.name}' appears twice", a.span)
            seen.add(a.name)
            size = self.int_value(self.eval(a.value, env, Ctx()), a.value.span, "a grid size", 1)
            axes.append(ir.GridAxis(a.name, size, span=a.span))
        grid = ir.Grid(tuple(axes), span=item.grid[0].span)
        if grid.numel > MAX_INT:
            first, last = item.grid[0].span, item.grid[-1].span
            span = first if first is None or last is None else \
                Span(first.source, first.line, first.column, last.end_line, last.end_column)
            dims = " x ".join(str(a.size) for a in axes)
            raise MaskSizeError(f"the grid has {dims} = {grid.numel:,} tokens, more than the "
                                f"limit of {MAX_INT:,} (lengths stay below 2**31)", span)
        return grid

    # ------------------------------------------------------------ typed accessors
    def mask_value(self, syn: S.Syn, env, ctx: Ctx) -> ir.Node:
        v = self.eval(syn, env, ctx)
        if not isinstance(v, ir.Node):
            raise MaskTypeError(f"expected a mask, got {what_(v)}", syn.span)
        return v

    def int_value(self, v: Value, span: Span | None, what: str, lo: int | None = None) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise MaskTypeError(f"{what} must be an integer, got {what_(v)}", span)
        if abs(v) > MAX_INT:
            raise MaskValueError(f"{what} {v} is out of range (at most {MAX_INT})", span)
        if lo is not None and v < lo:
            raise MaskValueError(f"{what} must be >= {lo}, got {v}", span)
        return v

    # ------------------------------------------------------------ evaluation
    def eval(self, syn: S.Syn, env, ctx: Ctx) -> Value:
        method = getattr(self, "_eval_" + type(syn).__name__, None)
        if method is None:
            raise MaskTypeError(f"{type(syn).__name__} is not allowed here", syn.span)
        return method(syn, env, ctx)

    def _eval_Int(self, syn: S.Int, env, ctx):
        return syn.value

    def _eval_Bool(self, syn: S.Bool, env, ctx):
        return syn.value

    def _eval_Float(self, syn: S.Float, env, ctx):
        return syn.value

    def _eval_Axis(self, syn: S.Axis, env, ctx):
        raise MaskTypeError(f"'{syn.base}.{syn.axis}' is a coordinate: it can only be used "
                            "inside 'where' or a score (after 'with')", syn.span)

    def _eval_Index(self, syn: S.Index, env, ctx):
        raise MaskTypeError(f"'{syn.base}[...]' reads a float input: it can only be used in a "
                            "score (after 'with')", syn.span)

    def _eval_TupleLit(self, syn, env, ctx):
        return TupleV(tuple(self.eval(x, env, ctx) for x in syn.items))

    def _eval_ListLit(self, syn, env, ctx):
        return ListV(tuple(self.eval(x, env, ctx) for x in syn.items))

    def _eval_RangeLit(self, syn, env, ctx):
        a = self.int_value(self.eval(syn.start, env, ctx), syn.start.span, "a range start")
        b = self.int_value(self.eval(syn.stop, env, ctx), syn.stop.span, "a range end")
        return RangeV(a, b)

    def _eval_Name(self, syn: S.Name, env, ctx):
        return self._lookup(syn.id, (), syn, env, ctx)

    def _eval_Call(self, syn: S.Call, env, ctx):
        return self._lookup(syn.func, syn.args, syn, env, ctx, called=True)

    def _lookup(self, name: str, args, syn, env, ctx, called: bool = False):
        if name in env:
            if called:
                raise MaskTypeError(f"'{name}' is a parameter, not a macro: it cannot be called",
                                    syn.span)
            return env[name]
        if name in self.broken:
            raise Unchecked(name)
        if name in self.lets:
            return self._expand(self.lets[name], args, syn, env, ctx)
        if name in BUILTINS:
            return BUILTINS[name](self, syn, args, env, ctx)
        if name in ir.PRED_VARS:
            raise MaskNameError(f"'{name}' can only be used inside a 'where' predicate or a "
                                "score", syn.span)
        if name == "s":
            raise MaskNameError("'s' (the score) can only be used in a score, after 'with'",
                                syn.span)
        if name in self.masks:
            raise MaskNameError(f"'{name}' is a mask; to reuse it, define it with 'let'", syn.span)
        raise self.undefined(name, syn.span, env)

    def _expand(self, let: S.LetItem, args, syn, env, ctx, bind=None, evaluate=None):
        """Expand macro ``let`` at ``syn``: its arguments bound with ``bind(arg syntax)``
        (default: evaluated here), its body evaluated with ``evaluate(body, local, ctx)``
        (default: :meth:`eval`; scores pass their own lowering)."""
        bind = bind or (lambda a: self.eval(a, env, ctx))
        evaluate = evaluate or self.eval
        formals = let.formals or ()
        if len(args) != len(formals):
            raise MaskTypeError(f"'{let.name}' takes {len(formals)} argument"
                                f"{'' if len(formals) == 1 else 's'}, got {len(args)}", syn.span)
        for a in args:
            if a.name is not None:
                raise MaskTypeError(f"macro '{let.name}' takes positional arguments only",
                                    a.span)
        if let.name in self._expanding:
            raise MaskNameError(f"'{let.name}' refers to itself", syn.span)
        self._expansions += 1
        if self._expansions > MAX_EXPANSIONS:
            raise MaskValueError("macro expansion is too large (over "
                                 f"{MAX_EXPANSIONS} expansions)", syn.span)
        local = {f: bind(a.value) for f, a in zip(formals, args)}
        self._expanding.append(let.name)
        try:
            return evaluate(let.body, local, ctx)
        except MaskError as err:
            if syn.span is None or "(in '" in err.message:
                raise
            # NOTE: the error stays where it is in the macro; the note names the call site.
            raise type(err)(f"{err.message} (in '{let.name}' used at line {syn.span.line}, "
                            f"column {syn.span.column})", err.span) from None
        finally:
            self._expanding.pop()

    def _eval_Unary(self, syn: S.Unary, env, ctx):
        v = self.eval(syn.operand, env, ctx)
        if syn.op == "~":
            if not isinstance(v, ir.Node):
                raise MaskTypeError(f"'~' applies to masks, got {kind(v)}", syn.span)
            return ir.not_(v, span=syn.span)
        if syn.op == "-":
            if isinstance(v, float):
                return -v
            return -self.int_value(v, syn.operand.span, "the operand of '-'")
        raise MaskTypeError(f"'{syn.op}' is only allowed inside 'where'", syn.span)

    def _eval_BinOp(self, syn: S.BinOp, env, ctx):
        a, b = self.eval(syn.left, env, ctx), self.eval(syn.right, env, ctx)
        op = syn.op
        if isinstance(a, ir.Node) and isinstance(b, ir.Node) and op in ("|", "&", "-"):
            if op == "|":
                return ir.or_(a, b, span=syn.span)
            if op == "&":
                return ir.and_(a, b, span=syn.span)
            return ir.and_(a, ir.not_(b, span=syn.right.span), span=syn.span)
        if op in ("|", "&"):
            bad = syn.left if not isinstance(a, ir.Node) else syn.right
            raise MaskTypeError(f"'{op}' combines masks, got {kind(self.eval(bad, env, ctx))}",
                                bad.span)
        if op in ("and", "or"):
            raise MaskTypeError(f"'{op}' is only allowed inside 'where'", syn.span)
        if isinstance(a, ir.Node) or isinstance(b, ir.Node):
            raise MaskTypeError(f"'{op}' needs two masks or two integers, got {kind(a)} and "
                                f"{kind(b)}", syn.span)
        if op == "/" or (op in "+-*" and (isinstance(a, float) or isinstance(b, float))):
            return self._float_arith(op, a, b, syn)
        x = self.int_value(a, syn.left.span, f"the left operand of '{op}'")
        y = self.int_value(b, syn.right.span, f"the right operand of '{op}'")
        if op in ("//", "%") and y <= 0:
            raise MaskValueError(f"'{op}' needs a positive divisor, got {y}", syn.right.span)
        r = {"+": lambda: x + y, "-": lambda: x - y, "*": lambda: x * y,
             "//": lambda: x // y, "%": lambda: x % y}[op]()
        return self.int_value(r, syn.span, "the result")

    def _float_arith(self, op, a, b, syn):
        """Compile-time float arithmetic (parameter defaults such as ``cap = 2.0 * 25``)."""
        for v, side in ((a, syn.left), (b, syn.right)):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise MaskTypeError(f"'{op}' needs numbers here, got {what_(v)}", side.span)
        if op == "/" and b == 0:
            raise MaskValueError("division by zero", syn.right.span)
        r = {"+": lambda: a + b, "-": lambda: a - b, "*": lambda: a * b,
             "/": lambda: a / b}[op]()
        r = float(r)
        if r != r or abs(r) == float("inf"):
            raise MaskValueError("this float arithmetic overflows", syn.span)
        return r

    def _eval_HeadsLit(self, syn: S.HeadsLit, env, ctx):
        arms = []
        for arm in syn.arms:
            if isinstance(arm.key, S.Name) and arm.key.id == "_":
                heads = None
            else:
                heads = self.positions(self.eval(arm.key, env, ctx), arm.key.span, "a head set")
            arms.append(ir.HeadArm(heads, self.mask_value(arm.body, env, ctx), span=arm.key.span))
        return ir.Heads(tuple(arms), span=syn.span)

    def _eval_WhereLit(self, syn: S.WhereLit, env, ctx):
        from maskc.frontend.predicates import lower_where
        return lower_where(self, syn, env, ctx)

    def positions(self, v: Value, span, what: str) -> ir.IntSet:
        """A set of non-negative positions from an integer, a list or a range."""
        if isinstance(v, RangeV):
            self.int_value(v.start, span, f"the start of {what}", 0)
            self.int_value(v.stop, span, f"the end of {what}")
            return ir.IntSet.range(v.start, v.stop)
        items = v.items if isinstance(v, ListV) else (v,)
        return ir.IntSet.of(self.int_value(x, span, f"each element of {what}", 0) for x in items)


# Levels below an IR leaf when it is printed as source: ``window(3)`` is a call and an integer,
# ``global(0..4)`` a call, a range and integers, ``layout([[1, 0]])`` a call and two lists.
_LEAF_LEVELS = {ir.Window: 1, ir.Global: 2, ir.Sink: 1, ir.Prefix: 1, ir.Chunk: 1,
                ir.Strided: 1, ir.Fixed: 1, ir.Same: 1, ir.Random: 1, ir.Layout: 3,
                ir.Neighborhood: 2, ir.Tile: 1, ir.HeadArm: 2}


def ir_too_deep(body: ir.Node, limit: int = S.MAX_NESTING) -> ir.Node | None:
    """The first node (pre-order) of ``body`` nested past ``limit``, or ``None``.

    Levels are counted as in the source that :func:`maskc.ir.pretty.pretty` prints for the IR
    (and :func:`maskc.frontend.syntax.too_deep` counts), so what passes here prints, parses back and
    passes there: an ``n``-term ``&``/``|`` prints as ``n - 1`` nested operators, and a leaf
    adds the levels of its arguments. Iterative, so any depth is safe.
    """
    stack: list[tuple[ir.Node, int]] = [(body, 1)]
    while stack:
        node, depth = stack.pop()
        extra = _LEAF_LEVELS.get(type(node), 0)
        if isinstance(node, ir.PConst) and not isinstance(node.value, bool) and node.value < 0:
            extra = 1  # printed as '-' and a literal
        if depth + extra > limit:
            return node
        kids = ir.children(node)
        if isinstance(node, (ir.And, ir.Or)):
            # NOTE: `a & b & c` is ((a & b) & c): term i sits under len - max(i, 1) operators
            steps = [len(kids) - max(i, 1) for i in range(len(kids))]
        else:
            steps = [0 if isinstance(k, ir.HeadArm) else 1 for k in kids]
        stack.extend((k, depth + st) for k, st in zip(reversed(kids), reversed(steps)))
    return None


def check(module: S.Module, name: str | None = None, **params) -> ir.MaskDef:
    """Lower mask ``name`` of ``module`` (the only one if ``None``) with parameter overrides."""
    names = mask_names(module)
    # NOTE: these errors are about the file's masks: point at the first one's name
    span = next((i.span for i in module.items if isinstance(i, S.MaskItem)),
                module.items[0].span if module.items else module.span)
    if not names:
        raise MaskNameError("the file defines no mask (add 'mask NAME = ...')", span)
    if name is None:
        if len(names) > 1:
            raise MaskNameError("the file defines several masks; pick one with name= (--name on the command line): "
                                + ", ".join(names), span)
        name = names[0]
    elif name not in names:
        raise MaskNameError(f"no mask named '{name}'; the file defines: " + ", ".join(names),
                            span)
    return check_mask(Checker(module), name, params)


def check_mask(checker: Checker, name: str, params: dict) -> ir.MaskDef:
    """Lower mask ``name`` of ``checker``'s module with parameter overrides ``params``."""
    try:
        mdef = checker.mask(name, params)
    except RecursionError:
        # NOTE: the source is at most MAX_NESTING deep (the parser checks), so only macros
        # expanding inside macros get here
        raise MaskValueError("the mask expression is nested too deeply once macros are "
                             "expanded", checker.masks[name].span) from None
    # NOTE: checked once here, so every later stage (passes, printer, code generators, all
    # recursive) stays far inside Python's recursion limit.
    deep = ir_too_deep(mdef.body)
    if deep is not None:
        raise MaskValueError(f"the mask expression is nested too deeply (more than "
                             f"{S.MAX_NESTING} levels of operators and calls once macros are "
                             "expanded)", deep.span or mdef.span)
    return mdef

