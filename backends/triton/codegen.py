"""Triton code generation: the module of kernels for one mask, from the template and the
renderer (:mod:`.template`, :mod:`.render`). Byte-stable: equal masks give equal source."""

from __future__ import annotations

from maskc import ir
from maskc.ir.pretty import pretty

from maskc.backends.triton.render import SUFFIXES, Renderer, declare_score_args, render_score
from maskc.backends.triton.template import BACKWARD, DECODE, MODULE

__all__ = ["generate", "blocks_chain"]


def generate(mdef: ir.MaskDef) -> tuple[str, list]:
    """``(source, extra_args)`` of the Triton module for ``mdef``. Byte-stable."""
    r = Renderer(mdef)
    floats = declare_score_args(r) if mdef.score is not None else {}
    expr = r.render()
    params, varying = "", ""
    for a in r.args:
        ints = [f"{a.name}_{suffix}" for suffix in SUFFIXES[a.kind]]
        params += f", {a.name}, " + ", ".join(ints)
        varying += "".join(f', "{n}"' for n in ints)
    body = "\n".join(f"    {line}" for line in r.lines) or "    pass"
    name = mdef.name
    spec = pretty(mdef).strip().replace("\n", "\n#   ")
    args = "".join(f", {p}" for p in params.split(", ")[1:]) if params else ""
    slots = render_score(r, floats, name=name, params=params, args=args)
    src = (MODULE + BACKWARD + DECODE).format(name=name, spec=spec, params=params, args=args, body=body,
                                     varying=varying, expr=expr, spec_src=pretty(mdef).strip(),
                                     **slots)
    return src, r.args


def blocks_chain(mdef):
    """For each Random/Layout node: the product of the block sizes above it, and whether it
    sits inside ``within`` (positions relative to a segment start, so never before 0)."""
    out = {}

    def go(n, size, in_within):
        if isinstance(n, (ir.Random, ir.Layout)):
            out[id(n)] = (size, in_within)
        for c in ir.children(n):
            go(c, size * n.size if isinstance(n, ir.Blocks) else size,
               in_within or isinstance(n, ir.Within))
    go(mdef.body, 1, False)
    return out


