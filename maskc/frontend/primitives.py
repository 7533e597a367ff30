"""The builtin primitives of the language: argument binding, validation, IR construction.

``BUILTINS`` maps each name to a function ``(checker, syntax, args, env, ctx) -> value``.
Each validates its arguments as docs/language.md section 4 states and reports errors at the argument.
"""

from __future__ import annotations

from dataclasses import replace

from maskc import ir
from maskc.frontend import syntax as S
from maskc.errors import MaskTypeError, MaskValueError
from maskc.frontend.values import InputV, ListV, TupleV, describe, kind

__all__ = ["BUILTINS", "bind"]

_MISSING = object()


def bind(ck, syn, args, env, ctx, positional: tuple[str, ...], defaults: dict,
         varargs: str | None = None) -> dict:
    """Match ``args`` to parameters; returns ``{name: (value, span)}``.

    ``positional`` names the parameters in order; ``defaults`` maps every other accepted
    name to its default (``_MISSING`` when required). With ``varargs``, extra positional
    arguments are collected as a tuple under that name.
    """
    func = syn.func if isinstance(syn, S.Call) else syn.id
    names = list(positional) + [n for n in defaults if n not in positional]
    out: dict = {}
    extra = []
    for i, a in enumerate(args):
        if a.name is None:
            if any(b.name is not None for b in args[:i]):
                raise MaskTypeError("a positional argument cannot follow a keyword argument",
                                    a.span)
            if i < len(positional):
                key = positional[i]
            elif varargs:
                extra.append((ck.eval(a.value, env, ctx), a.value.span))
                continue
            else:
                raise MaskTypeError(f"{func}() takes at most {len(positional)} positional "
                                    f"argument{'s' if len(positional) != 1 else ''}", a.span)
        else:
            key = a.name
            if key not in names:
                raise MaskTypeError(f"{func}() has no parameter '{key}'; its parameters are: "
                                    + ", ".join(names), a.span)
        if key in out:
            raise MaskTypeError(f"{func}() got '{key}' twice", a.span)
        out[key] = (ck.eval(a.value, env, ctx), a.value.span)
    if varargs:
        out[varargs] = tuple(extra)
    for n in names:
        if n not in out:
            d = defaults.get(n, _MISSING)
            if d is _MISSING:
                raise MaskTypeError(f"{func}() needs the argument '{n}'", syn.span)
            out[n] = (d, syn.span)
    return out


def _span(syn):
    return syn.span


def _const(keep):
    def build(ck, syn, args, env, ctx):
        bind(ck, syn, args, env, ctx, (), {})
        return ir.Const(keep, span=syn.span)
    return build


def _causal(ck, syn, args, env, ctx):
    bind(ck, syn, args, env, ctx, (), {})
    return ir.Causal(span=syn.span)


def _window(ck, syn, args, env, ctx):
    a = bind(ck, syn, args, env, ctx, ("r",),
             {"r": None, "before": None, "after": None, "dilation": 1})
    d = ck.int_value(*a["dilation"], "the window dilation", 1)
    if a["r"][0] is not None:
        if a["before"][0] is not None or a["after"][0] is not None:
            raise MaskTypeError("window() takes either a radius or before/after, not both",
                                syn.span)
        r = ck.int_value(*a["r"], "the window radius", 0)
        return ir.Window(r, r, d, span=syn.span)
    if a["before"][0] is None and a["after"][0] is None:
        raise MaskTypeError("window() needs a radius, or before = and after =", syn.span)
    before = ck.int_value(*a["before"], "window before", 0) if a["before"][0] is not None else 0
    after = ck.int_value(*a["after"], "window after", 0) if a["after"][0] is not None else 0
    return ir.Window(before, after, d, span=syn.span)


def _global(ck, syn, args, env, ctx):
    a = bind(ck, syn, args, env, ctx, ("S",), {"S": _MISSING})
    return ir.Global(ck.positions(*a["S"], "global positions"), span=syn.span)


def _one_int(cls, what: str, lo: int):
    def build(ck, syn, args, env, ctx):
        a = bind(ck, syn, args, env, ctx, ("n",), {"n": _MISSING})
        return cls(ck.int_value(*a["n"], what, lo), span=syn.span)
    return build


def _fixed(ck, syn, args, env, ctx):
    a = bind(ck, syn, args, env, ctx, ("s", "c"), {"s": _MISSING, "c": _MISSING})
    s = ck.int_value(*a["s"], "the fixed stride", 1)
    c = ck.int_value(*a["c"], "the fixed summary width", 0)
    if c > s:
        raise MaskValueError(f"fixed(s, c) needs c <= s, got c = {c} > s = {s}", a["c"][1])
    return ir.Fixed(s, c, span=syn.span)


def _declared(ck, args, env) -> None:
    """An undefined name given where a runtime input goes: say how to declare it (rather
    than only that it is undefined)."""
    a = next((a for a in args if a.name in (None, "x")), None)
    if a is not None and isinstance(a.value, S.Name) and not ck.bound(a.value.id, env):
        raise ck.undefined(a.value.id, a.value.span, env, as_input=True)


def _input(ck, value, span, func: str, ctx) -> str:
    if not isinstance(value, InputV):
        raise MaskTypeError(f"{func}() takes a runtime input (declare it with 'input NAME' in "
                            f"the mask's parameters), got {kind(value)}", span)
    if ctx.in_blocks:
        raise MaskTypeError(f"{func}() cannot be used inside blocks()", span)
    return value.name


def _same(ck, syn, args, env, ctx):
    _declared(ck, args, env)
    a = bind(ck, syn, args, env, ctx, ("x",), {"x": _MISSING})
    return ir.Same(_input(ck, *a["x"], "same", ctx), span=syn.span)


def _within(ck, syn, args, env, ctx):
    _declared(ck, args[:1], env)
    x = bind(ck, syn, args[:1], env, ctx, ("x",), {"x": _MISSING})["x"]
    name = _input(ck, *x, "within", ctx)
    if len(args) != 2 or args[1].name not in (None, "e"):
        raise MaskTypeError("within() takes a runtime input and a mask: within(x, e)", syn.span)
    body = ck.mask_value(args[1].value, env, replace(ctx, in_within=True))
    return ir.Within(name, body, span=syn.span)


def _blocks(ck, syn, args, env, ctx):
    size = bind(ck, syn, args[:1], env, ctx, ("B",), {"B": _MISSING})["B"]
    if len(args) != 2 or args[1].name not in (None, "e"):
        raise MaskTypeError("blocks() takes a block size and a mask: blocks(B, e)", syn.span)
    if ctx.in_tiles:
        raise MaskTypeError("blocks() cannot be nested inside tile-shaped blocks((...), e)",
                            syn.span)
    if isinstance(size[0], TupleV):
        # tile-shaped blocks over a grid: inside, positions are tile indices (section 8)
        if ctx.grid is None:
            raise MaskTypeError("a tuple block size needs a grid: declare the mask 'over "
                                "grid(...)', or give blocks(B, e) one size", size[1])
        if ctx.in_blocks or ctx.in_within:
            raise MaskTypeError("tile-shaped blocks((...), e) cannot be used inside blocks() "
                                "or within()", syn.span)
        shape = per_axis(ck, *size, len(ctx.grid.axes), "the tile shape")
        body = ck.mask_value(args[1].value, env, replace(ctx, in_blocks=True, in_tiles=True))
        return ir.TileBlocks(shape, body, span=syn.span)
    b = ck.int_value(*size, "the block size", 1)
    body = ck.mask_value(args[1].value, env, replace(ctx, in_blocks=True))
    return ir.Blocks(b, body, span=syn.span)


def _needs_blocks(ctx, syn, func):
    if not ctx.in_blocks:
        raise MaskTypeError(f"{func}() is only allowed inside blocks(B, ...)", syn.span)


def _not_in_tiles(ctx, syn, func):
    if ctx.in_tiles:
        raise MaskTypeError(f"{func}() is not supported inside tile-shaped blocks((...), e); "
                            "use select()", syn.span)


def _random(ck, syn, args, env, ctx):
    _needs_blocks(ctx, syn, "random")
    _not_in_tiles(ctx, syn, "random")
    a = bind(ck, syn, args, env, ctx, ("r", "seed"), {"r": _MISSING, "seed": 0})
    return ir.Random(ck.int_value(*a["r"], "the number of random blocks", 0),
                     ck.int_value(*a["seed"], "the random seed", 0), span=syn.span)


def _chosen(cls, func: str):
    """``select(x)`` (inside ``blocks`` only), ``keys(x)``, ``diagonals(x)`` (outside): a
    runtime input listing what the content chose (docs/language.md section 10)."""
    def build(ck, syn, args, env, ctx):
        if cls is ir.Select:
            _needs_blocks(ctx, syn, func)
        elif ctx.in_blocks:
            raise MaskTypeError(f"{func}() cannot be used inside blocks() (it lists token "
                                "positions)", syn.span)
        if ctx.in_within:
            raise MaskTypeError(f"{func}() cannot be used inside within() (it lists "
                                "positions of the whole sequence)", syn.span)
        _declared(ck, args, env)
        value, span = bind(ck, syn, args, env, ctx, ("x",), {"x": _MISSING})["x"]
        if not isinstance(value, InputV):
            raise MaskTypeError(f"{func}() takes a runtime input (declare it with 'input NAME' "
                                f"in the mask's parameters), got {kind(value)}", span)
        return cls(value.name, span=syn.span)
    return build


def _layout(ck, syn, args, env, ctx):
    _needs_blocks(ctx, syn, "layout")
    _not_in_tiles(ctx, syn, "layout")
    value, span = bind(ck, syn, args, env, ctx, ("M",), {"M": _MISSING})["M"]
    if not isinstance(value, ListV) or not all(isinstance(r, ListV) for r in value.items):
        raise MaskTypeError(f"layout() takes a 2-D list of 0/1, got {describe(value)}", span)
    rows = []
    for r in value.items:
        if any(isinstance(x, bool) or x not in (0, 1) for x in r.items):
            raise MaskValueError("layout() entries must be 0 or 1", span)
        rows.append(tuple(bool(x) for x in r.items))
    if len({len(r) for r in rows}) > 1:
        raise MaskValueError("layout() rows must all have the same length", span)
    return ir.Layout(tuple(rows), span=syn.span)


def _grid_of(ctx, syn, func):
    if ctx.grid is None:
        raise MaskTypeError(f"{func}() needs a grid: declare the mask 'over grid(...)'", syn.span)
    if ctx.in_blocks or ctx.in_within:
        raise MaskTypeError(f"{func}() cannot be used inside blocks() or within()", syn.span)
    return ctx.grid


def per_axis(ck, value, span, ndim: int, what: str, boolean: bool = False) -> tuple:
    """A scalar broadcast to every axis, or a tuple with one entry per axis."""
    items = value.items if isinstance(value, TupleV) else (value,) * ndim
    if len(items) != ndim:
        raise MaskValueError(f"{what} has {len(items)} entries but the grid has {ndim} axes",
                             span)
    if boolean:
        if not all(isinstance(x, bool) for x in items):
            raise MaskTypeError(f"{what} must be true/false (or one per axis), got "
                                f"{describe(value)}", span)
        return tuple(items)
    return tuple(ck.int_value(x, span, what, 1) for x in items)


def _neighborhood(ck, syn, args, env, ctx):
    grid = _grid_of(ctx, syn, "neighborhood")
    a = bind(ck, syn, args, env, ctx, ("kernel",),
             {"kernel": _MISSING, "dilation": 1, "causal": False, "stride": 1})
    nd = len(grid.axes)
    kernel = per_axis(ck, *a["kernel"], nd, "the kernel size")
    dilation = per_axis(ck, *a["dilation"], nd, "the dilation")
    causal = per_axis(ck, *a["causal"], nd, "causal", boolean=True)
    stride = per_axis(ck, *a["stride"], nd, "the stride")
    for i, ax in enumerate(grid.axes):
        label = ax.name or f"{i}"
        if kernel[i] * dilation[i] > ax.size:
            span = a["kernel"][1] if dilation[i] == 1 else a["dilation"][1]
            raise MaskValueError(f"kernel {kernel[i]} with dilation {dilation[i]} spans "
                                 f"{kernel[i] * dilation[i]} positions but axis {label} has "
                                 f"{ax.size}", span)
        if stride[i] > kernel[i]:
            raise MaskValueError(f"stride {stride[i]} is larger than kernel {kernel[i]} on "
                                 f"axis {label}", a["stride"][1])
    return ir.Neighborhood(kernel, dilation, causal, stride, span=syn.span)


def _tile(ck, syn, args, env, ctx):
    grid = _grid_of(ctx, syn, "tile")
    a = bind(ck, syn, args, env, ctx, ("t",), {"t": _MISSING}, varargs="rest")
    value, span = a["t"]
    if a["rest"]:
        value = TupleV((value,) + tuple(v for v, _ in a["rest"]))
    return ir.Tile(per_axis(ck, value, span, len(grid.axes), "the tile size"), span=syn.span)


BUILTINS = {
    "all": _const(True),
    "none": _const(False),
    "causal": _causal,
    "window": _window,
    "global": _global,
    "sink": _one_int(ir.Sink, "the number of sink tokens", 0),
    "prefix": _one_int(ir.Prefix, "the prefix length", 0),
    "chunk": _one_int(ir.Chunk, "the chunk size", 1),
    "strided": _one_int(ir.Strided, "the stride", 1),
    "fixed": _fixed,
    "same": _same,
    "within": _within,
    "blocks": _blocks,
    "random": _random,
    "layout": _layout,
    "select": _chosen(ir.Select, "select"),
    "keys": _chosen(ir.Keys, "keys"),
    "diagonals": _chosen(ir.Diagonals, "diagonals"),
    "neighborhood": _neighborhood,
    "tile": _tile,
}
