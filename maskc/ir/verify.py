"""``verify(mdef)``: the IR's invariants, checked after the checker and after every pass."""

from __future__ import annotations

from maskc import ir
from maskc.errors import MaskError

__all__ = ["verify", "IRInvariantError"]


class IRInvariantError(MaskError):
    """An internal invariant of the IR does not hold (a bug in maskc, not in the user's file)."""


def _fail(node: ir.Node, msg: str):
    raise IRInvariantError(f"invalid IR at {type(node).__name__}: {msg}", node.span)


def verify(mdef: ir.MaskDef) -> ir.MaskDef:
    """Check ``mdef`` and return it unchanged; raise :class:`IRInvariantError` naming the node."""
    nd = len(mdef.grid.axes) if mdef.grid is not None else 0

    def go(n: ir.Node, in_blocks: bool, in_within: bool) -> None:
        if isinstance(n, (ir.And, ir.Or)) and len(n.terms) < 2:
            _fail(n, "needs at least two terms")
        if isinstance(n, ir.Window) and (min(n.before, n.after) < 0 or n.dilation < 1):
            _fail(n, "negative extent or dilation < 1")
        if isinstance(n, (ir.Chunk, ir.Strided)) and min(vars_of(n)) < 1:
            _fail(n, "size must be >= 1")
        if isinstance(n, ir.Fixed) and not (n.s >= 1 and 0 <= n.c <= n.s):
            _fail(n, "needs s >= 1 and 0 <= c <= s")
        if isinstance(n, (ir.Random, ir.Layout, ir.Select)) and not in_blocks:
            _fail(n, "only allowed inside Blocks")
        if isinstance(n, (ir.Keys, ir.Diagonals, ir.Same, ir.Within)) and in_blocks:
            _fail(n, "not allowed inside Blocks")
        if isinstance(n, (ir.Select, ir.Keys, ir.Diagonals)) and in_within:
            _fail(n, "not allowed inside Within")
        if isinstance(n, (ir.Same, ir.Within, ir.Select, ir.Keys, ir.Diagonals)) and \
                n.input not in mdef.inputs:
            _fail(n, f"input '{n.input}' is not declared")
        if isinstance(n, (ir.Neighborhood, ir.Tile, ir.PAxis)):
            if nd == 0 or in_blocks or in_within:
                _fail(n, "needs a grid, outside blocks and within")
        if isinstance(n, ir.Neighborhood):
            if not (len(n.kernel) == len(n.dilation) == len(n.causal) == len(n.stride) == nd):
                _fail(n, "one entry per grid axis")
            for K, d, s, ax in zip(n.kernel, n.dilation, n.stride, mdef.grid.axes):
                if not (K >= 1 and d >= 1 and K * d <= ax.size and 1 <= s <= K):
                    _fail(n, "needs K * d <= n and 1 <= s <= K")
        if isinstance(n, ir.TileBlocks) and (len(n.shape) != nd or min(n.shape) < 1 or
                                             in_blocks or in_within):
            _fail(n, "one size >= 1 per grid axis, outside blocks and within")
        if isinstance(n, ir.Tile) and (len(n.sizes) != nd or min(n.sizes) < 1):
            _fail(n, "one size >= 1 per grid axis")
        if isinstance(n, ir.PAxis) and not 0 <= n.axis < nd:
            _fail(n, "axis out of range")
        if isinstance(n, ir.PBin) and n.op in (ir.Op.FLOORDIV, ir.Op.MOD) and not (
                isinstance(n.right, ir.PConst) and n.right.value > 0):
            _fail(n, "divisor must be a positive constant")
        for c in ir.children(n):
            go(c, in_blocks or isinstance(n, (ir.Blocks, ir.TileBlocks)),
               in_within or isinstance(n, ir.Within))

    go(mdef.body, False, False)
    return mdef


def vars_of(n: ir.Node) -> list[int]:
    return [getattr(n, a) for a in ("n", "s") if hasattr(n, a)]
