"""The shared rewrite driver: apply ``(node) -> node | None`` rules bottom-up to a fixed point."""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Callable, Sequence

from maskc import ir

__all__ = ["Rule", "rewrite", "map_children"]

Rule = Callable[[ir.Node], "ir.Node | None"]


def map_children(node: ir.Node, fn: Callable[[ir.Node], ir.Node]) -> ir.Node:
    """``node`` with ``fn`` applied to each child node (unchanged children keep identity)."""
    changes = {}
    for f in fields(node):
        if f.name == "span":
            continue
        v = getattr(node, f.name)
        if isinstance(v, ir.Node) and not isinstance(v, (ir.Grid, ir.GridAxis)):
            nv = fn(v)
        elif isinstance(v, tuple) and any(isinstance(x, ir.Node) for x in v):
            nv = tuple(fn(x) if isinstance(x, ir.Node) else x for x in v)
        else:
            continue
        if nv != v or any(a is not b for a, b in zip(nv if isinstance(nv, tuple) else (nv,),
                                                        v if isinstance(v, tuple) else (v,))):
            changes[f.name] = nv
    return replace(node, **changes) if changes else node


def rewrite(node: ir.Node, rules: Sequence[Rule], max_steps: int = 100_000) -> ir.Node:
    """Rewrite children first, then apply the first matching rule until none matches."""
    steps = 0

    def go(n: ir.Node) -> ir.Node:
        nonlocal steps
        n = map_children(n, go)
        while True:
            for rule in rules:
                out = rule(n)
                if out is not None and out != n:
                    steps += 1
                    if steps > max_steps:
                        raise RuntimeError("rewrite did not reach a fixed point")
                    # NOTE: a rule may build new children (a merged window): simplify them too
                    n = map_children(out, go)
                    break
            else:
                return n

    return go(node)
