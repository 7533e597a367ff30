"""What each runtime input of a mask is, from where the mask uses it (docs/language.md section 10).

An input is one of four kinds, decided by the primitives that read it:

=============  ====================================  ==========================================
kind           used by                               shape at call time
=============  ====================================  ==========================================
``ids``        ``same(x)``, ``within(x, e)``          ``(Lk,)`` or ``(B, Lk)``
``select``     ``blocks(B, select(x))``               ``(NB, r)``, ``(Hx, NB, r)`` or
                                                     ``(Bx, Hx, NB, r)``, ``NB = ceil(Lk / B)``
``keys``       ``keys(x)``                            ``(r,)``, ``(Hx, r)`` or ``(Bx, Hx, r)``
``diagonals``  ``diagonals(x)``                       as ``keys``
=============  ====================================  ==========================================

An input used two incompatible ways (``same(x)`` and ``keys(x)``, or ``select(x)`` under two
block sizes) is a :class:`~maskc.errors.MaskTypeError` at the second use; an input the body
never reads counts as ``ids``. ``keys(x)`` and ``diagonals(x)`` may share an input: both read
a list of integers per head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from maskc.errors import MaskTypeError
from maskc.ir import nodes as ir

__all__ = ["InputKind", "input_kinds", "USES"]

# the kind each primitive reads its input as
USES = {ir.Same: "ids", ir.Within: "ids", ir.Select: "select", ir.Keys: "keys",
        ir.Diagonals: "keys"}
_SAID = {ir.Same: "same", ir.Within: "within", ir.Select: "select", ir.Keys: "keys",
         ir.Diagonals: "diagonals"}


@dataclass(frozen=True)
class InputKind:
    """How a mask reads one runtime input: ``kind`` (``"ids"``, ``"select"`` or ``"keys"``,
    which ``diagonals`` lists are too) and, for a selection, the block size."""

    kind: str
    block: int | None = None
    tiles: tuple[int, ...] | None = None   # a selection of tiles: blocks((b1, ..., bd), e)

    def rows(self, kv_len: int, grid=None) -> int:
        """``NB``: a selection's rows (key blocks, or the grid's tiles)."""
        if self.tiles is not None:
            from maskc.ir.grid import tile_counts
            return math.prod(tile_counts(grid.shape, self.tiles))
        return -(-kv_len // self.block)

    def unit(self) -> str:
        """What a selection lists: ``key blocks of 64 tokens``, ``tiles of 7 x 7``."""
        if self.tiles is not None:
            return f"tiles of {' x '.join(map(str, self.tiles))}"
        return f"key blocks of {self.block} tokens"


def input_kinds(mdef: ir.MaskDef) -> dict[str, InputKind]:
    """The :class:`InputKind` of every declared input of ``mdef``, in declaration order."""
    seen: dict[str, tuple[InputKind, ir.Node]] = {}

    def go(n: ir.Node, block: int | None) -> None:
        if type(n) in USES:
            kind = USES[type(n)]
            this = InputKind(kind) if not isinstance(n, ir.Select) else \
                InputKind(kind, tiles=block) if isinstance(block, tuple) else \
                InputKind(kind, block)
            if n.input not in seen:
                seen[n.input] = (this, n)
            prev, first = seen[n.input]
            if prev != this:
                raise MaskTypeError(
                    f"input '{n.input}' is used as {_what(this)} here, but as "
                    f"{_what(prev)} by {_SAID[type(first)]}() at "
                    f"{_where(first)}: give each use its own input", n.span)
        inner = (block or 1) * n.size if isinstance(n, ir.Blocks) else \
            n.shape if isinstance(n, ir.TileBlocks) else block  # nested: tokens
        for c in ir.children(n):
            go(c, inner)

    go(mdef.body, None)
    return {name: seen[name][0] if name in seen else InputKind("ids") for name in mdef.inputs}


def _what(k: InputKind) -> str:
    return {"ids": "ids (same/within)", "keys": "a list of keys or diagonals per head",
            "select": f"a selection of {k.unit()}"}.get(k.kind, k.kind)


def _where(n: ir.Node) -> str:
    return f"{n.span.line}:{n.span.column}" if n.span is not None else "another place"
