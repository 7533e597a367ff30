"""Print IR back as `.mask` source; ``parse`` + ``check`` of the output gives an equal IR."""

from __future__ import annotations

from maskc import ir

__all__ = ["pretty", "pretty_mask", "pretty_pred"]

# Binding strength of mask operators (higher binds tighter).
_OR, _AND, _DIFF, _UNARY = 1, 2, 3, 5


def pretty(mdef: ir.MaskDef) -> str:
    """The whole compiled mask as a one-item `.mask` file."""
    params = ", ".join(f"input {n}" for n in mdef.inputs + mdef.score_inputs)
    head = f"mask {mdef.name}" + (f"({params})" if params else "")
    if mdef.grid is not None:
        axes = ", ".join(f"{a.name} = {a.size}" if a.name else str(a.size)
                         for a in mdef.grid.axes)
        head += f" over grid({axes})"
    score = ""
    if mdef.score is not None:
        from maskc.ir.scores import pretty_score
        score = f" with {pretty_score(mdef.score)}"
    return f"{head} = {pretty_mask(mdef.body)}{score}\n"


def _ints(s: ir.IntSet) -> str:
    if len(s.intervals) == 1 and s.intervals[0][1] - s.intervals[0][0] > 1:
        a, b = s.intervals[0]
        return f"{a}..{b}"
    return "[" + ", ".join(str(v) for v in s.values()) + "]"


def _axes(values: tuple, fmt=str) -> str:
    if len(set(values)) == 1:
        return fmt(values[0])
    return "(" + ", ".join(fmt(v) for v in values) + ")"


def _bool(b: bool) -> str:
    return "true" if b else "false"


def pretty_mask(n: ir.Node, prec: int = 0) -> str:
    """A mask expression; parenthesized when it binds looser than ``prec``."""
    text, own = _mask(n)
    return f"({text})" if own < prec else text


def _mask(n: ir.Node) -> tuple[str, int]:
    atom = 9
    if isinstance(n, ir.Const):
        return ("all" if n.keep else "none"), atom
    if isinstance(n, ir.Causal):
        return "causal", atom
    if isinstance(n, ir.Window):
        d = f", dilation = {n.dilation}" if n.dilation != 1 else ""
        if n.before == n.after:
            return f"window({n.before}{d})", atom
        return f"window(before = {n.before}, after = {n.after}{d})", atom
    if isinstance(n, ir.Global):
        return f"global({_ints(n.positions)})", atom
    simple = {ir.Sink: ("sink", "n"), ir.Prefix: ("prefix", "n"), ir.Chunk: ("chunk", "n"),
              ir.Strided: ("strided", "s")}
    if type(n) in simple:
        name, attr = simple[type(n)]
        return f"{name}({getattr(n, attr)})", atom
    if isinstance(n, ir.Fixed):
        return f"fixed({n.s}, {n.c})", atom
    if isinstance(n, (ir.Same, ir.Select, ir.Keys, ir.Diagonals)):
        return f"{type(n).__name__.lower()}({n.input})", atom
    if isinstance(n, ir.Within):
        return f"within({n.input}, {pretty_mask(n.body)})", atom
    if isinstance(n, ir.Where):
        return f"where {pretty_pred(n.pred)}", _AND
    if isinstance(n, ir.Not):
        if isinstance(n.body, ir.Where):
            return f"~{pretty_mask(n.body)}", _AND
        return f"~{pretty_mask(n.body, _UNARY)}", _UNARY
    if isinstance(n, ir.And):
        return _and(n.terms), _AND
    if isinstance(n, ir.Or):
        return " | ".join(pretty_mask(t, _AND) for t in n.terms), _OR
    if isinstance(n, ir.Heads):
        arms = ", ".join(f"{'_' if a.heads is None else _ints(a.heads)}: {pretty_mask(a.body)}"
                         for a in n.arms)
        return f"heads {{ {arms} }}", atom
    if isinstance(n, ir.Blocks):
        return f"blocks({n.size}, {pretty_mask(n.body)})", atom
    if isinstance(n, ir.TileBlocks):
        return f"blocks(({', '.join(map(str, n.shape))}), {pretty_mask(n.body)})", atom
    if isinstance(n, ir.Random):
        return f"random({n.r}, seed = {n.seed})", atom
    if isinstance(n, ir.Layout):
        rows = ", ".join("[" + ", ".join("1" if x else "0" for x in r) + "]" for r in n.rows)
        return f"layout([{rows}])", atom
    if isinstance(n, ir.Neighborhood):
        opts = [f"dilation = {_axes(n.dilation)}" if set(n.dilation) != {1} else "",
                f"causal = {_axes(n.causal, _bool)}" if any(n.causal) else "",
                f"stride = {_axes(n.stride)}" if set(n.stride) != {1} else ""]
        return f"neighborhood({', '.join([_axes(n.kernel)] + [o for o in opts if o])})", atom
    if isinstance(n, ir.Tile):
        return f"tile({', '.join(str(t) for t in n.sizes)})", atom
    raise TypeError(f"cannot print {type(n).__name__}")


def _and(terms: tuple[ir.Node, ...]) -> str:
    """``a & b``; a later negated term prints as ``- b`` (``a & b - c`` is ``a & b & ~c``)."""
    out = pretty_mask(terms[0], _DIFF)
    for t in terms[1:]:
        if isinstance(t, ir.Not) and not isinstance(t.body, ir.Where):
            out = f"{out} - {pretty_mask(t.body, _UNARY)}"
        else:
            out = f"{out} & {pretty_mask(t, _DIFF)}"
    return out


# ---------------------------------------------------------------- predicates



def pretty_pred(p: ir.Pred, prec: int = 0) -> str:
    text, own = _pred(p)
    return f"({text})" if own < prec else text


def _pred(p: ir.Pred) -> tuple[str, int]:
    if isinstance(p, ir.PConst):
        v = p.value
        if isinstance(v, bool):
            return _bool(v), 9
        return (str(v), 9) if v >= 0 else (f"-{-v}", ir.Op.NEG.prec)
    if isinstance(p, ir.PVar):
        return p.name, 9
    if isinstance(p, ir.PAxis):
        return (f"{p.of}.{p.label}" if p.label else f"{p.of}[{p.axis}]"), 9
    if isinstance(p, ir.PCall):
        return f"{p.func}({', '.join(pretty_pred(a) for a in p.args)})", 9
    if isinstance(p, ir.PUn):
        sep = " " if p.op is ir.Op.NOT else ""
        return f"{p.op.surface}{sep}{pretty_pred(p.operand, p.op.prec)}", p.op.prec
    if isinstance(p, ir.PBin):
        own, op = p.op.prec, p.op.surface
        if p.op.compare:  # comparisons do not chain in print: both sides bind tighter
            return f"{pretty_pred(p.left, own + 1)} {op} {pretty_pred(p.right, own + 1)}", own
        # left-associative: the right operand needs strictly tighter binding
        return f"{pretty_pred(p.left, own)} {op} {pretty_pred(p.right, own + 1)}", own
    raise TypeError(f"cannot print {type(p).__name__}")
