"""Render a mask IR as Triton expressions: one rendering per IR construct.

:class:`Renderer` walks the IR and emits straight-line statements into the body of the
generated ``mask_<name>`` function, returning the expression of a boolean ``(BM, BN)``
tile. Variables are ``P``/``Q`` (``(BM, 1)`` aligned/raw query positions), ``K``
(``(1, BN)`` keys), ``h`` and ``b`` (scalars) and ``Lq``/``Lk``. Runtime data (inputs,
segment starts, random and layout tables) become extra kernel arguments with
deterministic names, so lengths never change the generated source.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from maskc import ir
from maskc.errors import MaskError

__all__ = ["Renderer", "ExtraArg"]


@dataclass(frozen=True)
class ExtraArg:
    """A runtime argument of the kernel: ``kind`` is input/starts/lens/random/layout."""

    name: str
    kind: str
    source: object   # the input name, or the IR node the table belongs to


@dataclass
class _Env:
    P: str = "P"
    Q: str = "Q"
    K: str = "K"
    Lq: str = "Lq"
    Lk: str = "Lk"
    nkb: str = "Lk"   # length of the key axis in the current position space


@dataclass
class Renderer:
    mdef: ir.MaskDef
    lines: list[str] = field(default_factory=list)
    args: list[ExtraArg] = field(default_factory=list)
    _count: int = 0

    def fresh(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}{self._count}"

    def let(self, prefix: str, expr: str) -> str:
        name = self.fresh(prefix)
        self.lines.append(f"{name} = {expr}")
        return name

    def arg(self, kind: str, source, prefix: str) -> str:
        for a in self.args:
            if a.kind == kind and a.source is source:
                return a.name
        a = ExtraArg(f"{prefix}{len(self.args)}", kind, source)
        self.args.append(a)
        return a.name

    def render(self) -> str:
        """The tile expression of the whole mask (statements go to ``self.lines``).

        A top-level ``&``/``|`` is rendered term by term, each under ``if`` on its bit of
        ``live``: a partial tile evaluates only its live terms (the block IR's live bits).
        """
        body, env = self.mdef.body, _Env()
        if not isinstance(body, (ir.And, ir.Or)) or len(body.terms) > 30:
            return self.mask(body, env)
        op = "&" if isinstance(body, ir.And) else "|"
        self.lines.append(f"keep = {_const(isinstance(body, ir.And), env)}")
        for i, term in enumerate(body.terms):
            outer, self.lines = self.lines, []
            expr = self.mask(term, env)
            inner, self.lines = self.lines, outer
            self.lines.append(f"if ((live >> {i}) & 1) != 0:  # term {i} can change this tile")
            self.lines.extend(f"    {line}" for line in inner)
            self.lines.append(f"    keep = keep {op} {expr}")
        return "keep"

    # ---------------------------------------------------------------- masks
    def mask(self, n: ir.Node, env: _Env) -> str:
        fn = _MASKS.get(type(n))
        if fn is None:
            raise MaskError(f"the Triton backend cannot render {type(n).__name__} yet", n.span)
        return fn(self, n, env)

    def pred(self, p: ir.Pred, env: _Env) -> str:
        if isinstance(p, ir.PConst):
            return ("True" if p.value else "False") if isinstance(p.value, bool) else str(p.value)
        if isinstance(p, ir.PVar):
            return {"p": env.P, "q": env.Q, "k": env.K, "h": "h", "Lq": env.Lq,
                    "Lk": env.Lk}[p.name]
        if isinstance(p, ir.PAxis):
            return self.coord(env.K if p.of == "k" else env.P, p.axis)
        if isinstance(p, ir.PUn):
            x = self.pred(p.operand, env)
            return f"({p.op.triton.format(x)})"
        if isinstance(p, ir.PCall):
            args = [self.pred(a, env) for a in p.args]
            if p.func == "abs":
                return f"tl.abs({args[0]})"
            out = args[0]
            for a in args[1:]:
                out = f"tl.{'minimum' if p.func == 'min' else 'maximum'}({out}, {a})"
            return out
        a, b = self.pred(p.left, env), self.pred(p.right, env)
        return f"({p.op.triton.format(a, b)})"

    def coord(self, flat: str, axis: int) -> str:
        shape = self.mdef.grid.shape
        stride = 1
        for s in shape[axis + 1:]:
            stride *= s
        return f"(({flat} // {stride}) % {shape[axis]})"


def _const(keep: bool, env) -> str:
    """A full (BM, BN) tile of ``keep``."""
    return f"(({env.P} - {env.P} + {env.K} - {env.K}) {'==' if keep else '!='} 0)"


def _window(r: Renderer, n: ir.Window, env):
    d = r.let("d", f"{env.P} - {env.K}")
    out = f"({d} <= {n.before * n.dilation}) & (-{d} <= {n.after * n.dilation})"
    if n.dilation > 1:
        out += f" & (_mod({d}, {n.dilation}) == 0)"
    return f"({out})"


def _in(x: str, s: ir.IntSet) -> str:
    parts = [f"(({x} >= {a}) & ({x} < {b}))" if b - a > 1 else f"({x} == {a})"
             for a, b in s.intervals]
    return "(" + " | ".join(parts) + ")" if parts else "False"


def _gather(r: Renderer, ptr: str, pos: str, env) -> tuple[str, str]:
    """Load ``ptr[b, pos]`` for positions that may be out of ``0..Lk-1``; also their validity."""
    if "Lk_in = Lk" not in r.lines:
        r.lines.insert(0, "Lk_in = Lk  # runtime inputs have one entry per key")
    ok = r.let("ok", f"({pos} >= 0) & ({pos} < Lk_in)")
    val = r.let("x", f"tl.load({ptr} + b * {ptr}_sb + tl.where({ok}, {pos}, 0), mask={ok}, "
                     f"other=-1)")
    return val, ok


def _same(r: Renderer, n: ir.Same, env):
    x = r.arg("input", n.input, "in_")
    xp, okp = _gather(r, x, env.P, env)
    xk, _ = _gather(r, x, env.K, env)
    return f"(({xp} == {xk}) & {okp})"


def _within(r: Renderer, n: ir.Within, env):
    same = _same(r, ir.Same(n.input), env)
    starts, lens = r.arg("starts", n.input, "start_"), r.arg("lens", n.input, "len_")
    sp, _ = _gather(r, starts, env.P, env)
    sk, _ = _gather(r, starts, env.K, env)
    lp, _ = _gather(r, lens, env.P, env)
    lk, _ = _gather(r, lens, env.K, env)
    P = r.let("P", f"{env.P} - {sp}")
    inner = _Env(P=P, Q=P, K=r.let("K", f"{env.K} - {sk}"), Lq=lp, Lk=lk, nkb=env.nkb)
    return f"({same} & {r.mask(n.body, inner)})"


def _heads(r: Renderer, n: ir.Heads, env):
    out = "False"
    for arm in reversed(n.arms):
        body = r.mask(arm.body, env)
        if arm.heads is None:
            out = body
        else:
            out = f"tl.where({_in('h', arm.heads)}, {body}, {out})"
    return out


def _blocks(r: Renderer, n: ir.Blocks, env):
    P = r.let("P", f"_floordiv({env.P}, {n.size})")
    nkb = r.let("nkb", f"({env.nkb} + {n.size - 1}) // {n.size}")
    inner = _Env(P=P, Q=P, K=r.let("K", f"{env.K} // {n.size}"), Lq=nkb, Lk=nkb, nkb=nkb)
    return r.mask(n.body, inner)


def _table(r: Renderer, n, env, kind):
    """Look up a host-built 0/1 table ``T[P - T_first, K]`` (rows x T_cols)."""
    t = r.arg(kind, n, "tab_")
    row = r.let("row", f"{env.P} - {t}_first")
    ok = r.let("ok", f"({row} >= 0) & ({row} < {t}_rows) & ({env.K} >= 0) & ({env.K} < {t}_cols)")
    val = r.let("x", f"tl.load({t} + tl.where({ok}, {row} * {t}_cols + {env.K}, 0), mask={ok}, "
                     "other=0)")
    return f"({val} != 0)"


def _neighborhood(r: Renderer, n: ir.Neighborhood, env):
    terms = []
    for i, size in enumerate(r.mdef.grid.shape):
        K, d, s = n.kernel[i], n.dilation[i], n.stride[i]
        qi, ki = r.let("qc", r.coord(env.P, i)), r.let("kc", r.coord(env.K, i))
        # NOTE: NATTEN's rule (LANGUAGE.md section 2); grid positions are never negative.
        g = r.let("g", f"{qi} % {d}")
        ng = r.let("ng", f"({size} - {g} + {d - 1}) // {d}")
        qq, kk = r.let("qq", f"{qi} // {d}"), r.let("kk", f"{ki} // {d}")
        if n.causal[i]:
            lead = r.let("lead", f"tl.minimum(({qq} // {s}) * {s} + {s - 1}, {ng} - 1)")
            keep = f"({kk} <= {qq}) & ({lead} - {kk} < {K})"
        else:
            left, right = K // 2, K // 2 + K % 2 - 1
            lead = r.let("lead", f"tl.minimum(({qq} // {s}) * {s} + {s // 2}, {ng} - 1)")
            c = r.let("c", f"tl.maximum({left}, tl.minimum({lead}, {ng} - 1 - {right}))")
            keep = f"({c} - {left} <= {kk}) & ({kk} <= {c} + {right})"
        terms.append(f"({keep} & ({ki} % {d} == {g}))" if d > 1 else f"({keep})")
    return "(" + " & ".join(terms) + ")"


def _tile(r: Renderer, n: ir.Tile, env):
    return "(" + " & ".join(f"({r.coord(env.P, i)} // {t} == {r.coord(env.K, i)} // {t})"
                            for i, t in enumerate(n.sizes)) + ")"


_MASKS = {
    ir.Const: lambda r, n, env: _const(n.keep, env),
    ir.Causal: lambda r, n, env: f"({env.K} <= {env.P})",
    ir.Window: _window,
    ir.Global: lambda r, n, env: f"({_in(env.P, n.positions)} | {_in(env.K, n.positions)})",
    ir.Sink: lambda r, n, env: f"({env.K} < {n.n})",
    ir.Prefix: lambda r, n, env: f"(({env.P} < {n.n}) & ({env.K} < {n.n}))",
    ir.Chunk: lambda r, n, env: f"(_floordiv({env.P}, {n.n}) == _floordiv({env.K}, {n.n}))",
    ir.Strided: lambda r, n, env: f"(_mod({env.P} - {env.K}, {n.s}) == 0)",
    ir.Fixed: lambda r, n, env: f"(_mod({env.K}, {n.s}) >= {n.s - n.c})",
    ir.Same: _same,
    ir.Within: _within,
    ir.Where: lambda r, n, env: r.pred(n.pred, env),
    ir.Not: lambda r, n, env: f"(~{r.mask(n.body, env)})",
    ir.And: lambda r, n, env: "(" + " & ".join(r.mask(t, env) for t in n.terms) + ")",
    ir.Or: lambda r, n, env: "(" + " | ".join(r.mask(t, env) for t in n.terms) + ")",
    ir.Heads: _heads,
    ir.Blocks: _blocks,
    ir.Random: lambda r, n, env: _table(r, n, env, "random"),
    ir.Layout: lambda r, n, env: _table(r, n, env, "layout"),
    ir.Neighborhood: _neighborhood,
    ir.Tile: _tile,
}
