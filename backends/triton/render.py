"""Render a mask IR as Triton expressions: one rendering per IR construct.

:class:`Renderer` walks the IR and emits straight-line statements into the body of the
generated ``mask_<name>`` function, returning the expression of a boolean ``(BM, BN)``
tile. Variables are ``P``/``Q`` (``(BM, 1)`` aligned/raw query positions), ``K``
(``(1, BN)`` keys), ``h`` and ``b`` (scalars) and ``Lq``/``Lk``. Runtime data (inputs,
segment starts, random and layout tables) become extra kernel arguments with
deterministic names, so lengths never change the generated source.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace

from maskc import ir
from maskc.errors import MaskError
from maskc.ir import Op

from maskc.backends.constructs import LOWERINGS, Env, coord, in_set, pred, value
from maskc.ir.grid import tile_counts
from maskc.backends.emit import TRITON, Emitter, Namespace, w

__all__ = ["Renderer", "ExtraArg", "SUFFIXES", "declare_score_args", "render_score"]


@dataclass(frozen=True)
class ExtraArg:
    """A runtime argument of the kernel: ``kind`` is input/starts/lens/random/layout."""

    name: str
    kind: str
    source: object   # the input name, or the IR node the table belongs to


_PARAMS = ("P", "Q", "K", "h", "b", "Lq", "Lk", "live", "KO")
# names the mask function reads from the module, never given to a local
_GLOBALS = ("tl", "triton", "_mod", "_floordiv", "LN2", "SPEC", "VARYING", "keep")


def _identifiers(text: str) -> set[str]:
    return set(re.findall(r"[A-Za-z_][A-Za-z_0-9]*", text))


@dataclass
class Renderer:
    """Renders ``mdef`` into the body of ``mask_<name>``: ``lines`` and the tile expression
    that :meth:`render` returns; ``args`` are the runtime arguments it needs, in order."""

    mdef: ir.MaskDef
    args: list[ExtraArg] = field(default_factory=list)

    def __post_init__(self):
        from maskc.backends.triton.template import (BACKWARD, DECODE, GRAD_CALL, GRAD_FUNC,
                                                    MODULE, SCORE_FUNCS, SCORE_LINES)
        self.e = Emitter(TRITON, _PARAMS + _GLOBALS)
        # NOTE: runtime arguments travel through every kernel and helper of the template,
        # so their names avoid all of the template's identifiers.
        text = MODULE + BACKWARD + DECODE + SCORE_FUNCS + GRAD_FUNC + GRAD_CALL + "".join(
            SCORE_LINES.values())
        self._arg_names = Namespace(_identifiers(text) | set(_PARAMS) | set(_SCORE_PARAMS))

    @property
    def lines(self) -> list[str]:
        return self.e.lines

    def arg(self, kind: str, source, hint: str) -> str:
        for a in self.args:
            if a.kind == kind and a.source is source:
                return a.name
        name = self._arg_names.fresh(hint)
        for suffix in SUFFIXES[kind]:
            self._arg_names.fresh(f"{name}_{suffix}")
        self.e.ns.fresh(name)
        self.args.append(ExtraArg(name, kind, source))
        return name

    def render(self) -> str:
        """The tile expression of the whole mask (statements go to ``self.lines``).

        A top-level ``&``/``|`` is rendered term by term, each under ``if`` on its bit of
        ``live``: a partial tile evaluates only its live terms (the block IR's live bits).
        Each ``if`` block is its own scope: what a term computes is not seen by the next.
        """
        body, e = self.mdef.body, self.e
        grid = self.mdef.grid is not None
        env = Env(P="P", Q="Q", K="K", h="h", Lq="Lq", Lk="Lk", p_nonneg=grid,
                  grid=self.mdef.grid, extra="Lk", k0=0 if grid else "KO")
        if not isinstance(body, (ir.And, ir.Or)) or len(body.terms) > 30:
            return _tile(self.mask(body, env), e.d)
        is_and = isinstance(body, ir.And)
        e.line(f"keep = {_tile(is_and, e.d)}")
        for i, term in enumerate(body.terms):
            with e.block() as inner:
                expr = _tile(self.mask(term, env), e.d)
            e.line(f"if ((live >> {i}) & 1) != 0:  # term {i} can change this tile")
            e.lines.extend(f"    {line}" for line in inner)
            e.line(f"    keep = keep {'&' if is_and else '|'} {w(expr)}")
        return "keep"

    def mask(self, n: ir.Node, env: Env):
        fn = _MASKS.get(type(n))
        if fn is None:
            raise MaskError(f"the Triton backend cannot render {type(n).__name__} yet", n.span)
        out = fn(self, n, env)
        self.e.note(None)  # a construct's comment goes with its own lines only
        return out


# the int arguments that follow each runtime tensor: its batch/head strides (0 where the
# tensor has one row for all), the width of a selection's rows, a table's bounds
SUFFIXES = {"input": ("sb",), "starts": ("sb",), "lens": ("sb",),
            "random": ("first", "rows", "cols"), "layout": ("first", "rows", "cols"),
            "select": ("sb", "sh", "r"), "listed": ("sb", "sh", "n")}


def _tile(x, d) -> str:
    """A boolean value as a full (BM, BN) tile (a folded constant becomes one)."""
    if isinstance(x, bool):
        return "(P == P) & (K == K)" if x else "(P != P) & (K != K)"
    return x


def _gather(r: Renderer, ptr: str, pos, of: str, env: Env, hint: str):
    """``ptr[b, pos]`` at positions that may be outside ``0..Lk-1`` (-1 there); the loads of
    one table share its row pointer, the loads at one position share their validity."""
    e = r.e
    # NOTE: runtime inputs have one entry per key: their bound is the kernel's Lk
    nonneg = env.p_nonneg if of == "q" else True
    ok = e.let(e.and_(True if nonneg else e.cmp(Op.GE, pos, 0), e.cmp(Op.LT, pos, "Lk")),
               f"ok_{of}")
    row = e.let(f"{ptr} + b * {ptr}_sb", f"{ptr}_b")
    return e.let(f"tl.load({row} + tl.where({ok}, {pos}, 0), mask={ok}, other=-1)", hint), ok


def _rows(r: Renderer, env: Env):
    """The key rows of the query's and the key's positions (``position - k0``): where runtime
    inputs are read (docs/language.md section 13)."""
    if env.k0 == 0:
        return env.P, env.K
    e = r.e
    return e.let(e.sub(env.P, env.k0), "row_q"), e.let(e.sub(env.K, env.k0), "row_k")


def _same(r: Renderer, n: ir.Same, env: Env):
    e = r.e
    x = r.arg("input", n.input, f"in_{n.input}")
    e.note(f"same({n.input})")
    pq, pk = _rows(r, env)
    xq, ok = _gather(r, x, pq, "q", env, f"{n.input}_q")
    xk, _ = _gather(r, x, pk, "k", env, f"{n.input}_k")
    # NOTE: a key outside 0..Lk-1 is masked by the kernel, so only the query's validity counts
    return e.let(e.and_(e.cmp(Op.EQ, xq, xk), ok), f"same_{n.input}")


def _within(r: Renderer, n: ir.Within, env: Env):
    e = r.e
    same = _same(r, ir.Same(n.input), env)
    starts = r.arg("starts", n.input, f"start_{n.input}")
    lens = lambda: r.arg("lens", n.input, f"len_{n.input}")  # noqa: E731 (only if read)
    e.note(f"within({n.input}): positions from the start of the run")
    pq, pk = _rows(r, env)
    sq, _ = _gather(r, starts, pq, "q", env, "start_q")
    sk, _ = _gather(r, starts, pk, "k", env, "start_k")
    P = e.let(e.sub(pq, sq), f"p_{n.input}")
    K = e.let(e.sub(pk, sk), f"k_{n.input}")
    lq = lambda: _gather(r, lens(), pq, "q", env, "len_q")[0]  # noqa: E731
    lk = lambda: _gather(r, lens(), pk, "k", env, "len_k")[0]  # noqa: E731
    # lengths of the runs: thunks, loaded only if the body reads Lq or Lk
    inner = replace(env, P=P, Q=P, K=K, Lq=lq, Lk=lk, k0=0)
    return e.and_(same, r.mask(n.body, inner))


def _heads(r: Renderer, n: ir.Heads, env: Env):
    e = r.e
    out = False
    for arm in reversed(n.arms):
        body = r.mask(arm.body, env)
        if arm.heads is None:
            out = body
        else:
            e.note(None)
            out = e.where(in_set(r, "h", arm.heads, nonneg=True), _tile(body, e.d),
                          _tile(out, e.d))
    return out


def _blocks(r: Renderer, n: ir.Blocks, env: Env):
    e = r.e
    e.note(f"blocks({n.size}): block indices")
    P = e.let(e.floordiv(env.P, n.size, env.p_nonneg), "qb")
    K = e.let(e.floordiv(env.K, n.size, True), "kb")
    outer = env.extra
    nkb = lambda: e.let(e.floordiv(e.add(value(outer), n.size - 1), n.size, True), "nkb")  # noqa
    inner = replace(env, P=P, Q=P, K=K, Lq=nkb, Lk=nkb, extra=nkb)
    return r.mask(n.body, inner)


def _tile_blocks(r: Renderer, n: ir.TileBlocks, env: Env):
    e, shape = r.e, env.grid.shape
    counts = tile_counts(shape, n.shape)
    nt = math.prod(counts)
    e.note(f"blocks(({', '.join(map(str, n.shape))}), ...): tile indices")

    def index(of):
        out, stride = 0, 1
        for axis in reversed(range(len(shape))):
            c = coord(r, env, of, axis)
            out = e.add(e.mul(e.floordiv(c, n.shape[axis], True), stride), out)
            stride *= counts[axis]
        return e.let(out, f"t{of}")
    P, K = index("q"), index("k")
    inner = replace(env, P=P, Q=P, K=K, Lq=nt, Lk=nt, extra=nt, grid=None)
    return r.mask(n.body, inner)


def _table(r: Renderer, n, env: Env, kind: str):
    """Look up a host-built 0/1 table ``T[P - T_first, K]`` (rows x T_cols)."""
    e = r.e
    t = r.arg(kind, n, "rand" if kind == "random" else "layout")
    e.note(f"{kind}: a host table of key blocks per query block")
    row = e.let(e.sub(env.P, f"{t}_first"), f"{t}_row")
    ok = e.let(e.and_(e.cmp(Op.GE, row, 0), e.cmp(Op.LT, row, f"{t}_rows"),
                      e.cmp(Op.LT, env.K, f"{t}_cols")), f"{t}_ok")  # block keys are >= 0
    hit = e.let(f"tl.load({t} + tl.where({ok}, {row} * {t}_cols + {env.K}, 0), mask={ok}, "
                "other=0)", f"{t}_hit")
    return e.cmp(Op.NE, hit, 0)


def _select(r: Renderer, n: ir.Select, env: Env):
    """Whether key block ``K`` is among the ``r`` blocks listed for query block ``P``: a loop
    over the row's entries (padding ``-1`` never matches a block)."""
    e = r.e
    t = r.arg("select", n.input, f"sel_{n.input}")
    e.note(f"select({n.input}): the key blocks listed for this query block")
    ok = e.let(e.and_(True if env.p_nonneg else e.cmp(Op.GE, env.P, 0),
                      e.cmp(Op.LT, env.P, value(env.Lk))), f"ok_{n.input}")
    row = e.let(f"{t} + b * {t}_sb + h * {t}_sh + {w(e.where(ok, env.P, 0))} * {t}_r",
                f"{t}_row")
    hit, j = e.ns.fresh(f"{n.input}_hit"), e.ns.fresh("j")
    e.line(f"{hit} = ({env.P} != {env.P}) & ({env.K} != {env.K})")
    e.line(f"for {j} in range(0, {t}_r):")
    e.line(f"    {hit} = {hit} | (tl.load({row} + {j}, mask={ok}, other=-1) == {env.K})")
    return hit


def _listed(r: Renderer, name: str, at: str, env: Env):
    """Whether ``at`` is listed in ``name[b, h]``: one load from a 0/1 map over ``0..Lk-1``
    that the host builds from the list (keys and diagonals of one input share it)."""
    e = r.e
    t = r.arg("listed", name, f"listed_{name}")
    ok = e.let(e.and_(e.cmp(Op.GE, at, 0), e.cmp(Op.LT, at, f"{t}_n")), f"ok_{t}")
    hit = e.let(f"tl.load({t} + b * {t}_sb + h * {t}_sh + tl.where({ok}, {at}, 0), mask={ok}, "
                "other=0)", f"{t}_hit")
    return e.cmp(Op.NE, hit, 0)


def _keys(r: Renderer, n: ir.Keys, env: Env):
    r.e.note(f"keys({n.input}): the key positions listed")
    return _listed(r, n.input, env.K, env)


def _diagonals(r: Renderer, n: ir.Diagonals, env: Env):
    r.e.note(f"diagonals({n.input}): the offsets p - k listed")
    return _listed(r, n.input, r.e.let(r.e.sub(env.P, env.K), "diag"), env)


_MASKS = {
    **LOWERINGS,
    ir.Select: _select,
    ir.Keys: _keys,
    ir.Diagonals: _diagonals,
    ir.Const: lambda r, n, env: n.keep,
    ir.Same: _same,
    ir.Within: _within,
    ir.Heads: _heads,
    ir.Blocks: _blocks,
    ir.TileBlocks: _tile_blocks,
    ir.Random: lambda r, n, env: _table(r, n, env, "random"),
    ir.Layout: lambda r, n, env: _table(r, n, env, "layout"),
}


# ---------------------------------------------------------------- scores (`with`)

MAX_SCORE_RANK = 8
SUFFIXES.update({f"float{r}": tuple(f"n{a}" for a in range(r))
                 for r in range(1, MAX_SCORE_RANK + 1)})
SUFFIXES["grad"] = ("on",)   # the input's gradient buffer, and whether to fill it
_SCORE_PARAMS = ("s", "P", "Q", "K", "h", "b", "Lq", "Lk", "ds")


class _ScoreFn:
    """One score function's emitter (``r.e``, as the shared renderings expect)."""

    def __init__(self, reserved):
        self.e = Emitter(TRITON, reserved)


def declare_score_args(r: Renderer) -> dict:
    """The kernel arguments of the score's float inputs (a pointer and its sizes, a gradient
    buffer and its flag), declared before the mask renders so that no local takes a name."""
    from maskc.ir.scores import float_inputs
    out = {}
    for name, rank in float_inputs(r.mdef.score).items():
        if rank > MAX_SCORE_RANK:
            raise MaskError(f"input '{name}' has {rank} indices; the Triton backend reads "
                            f"float inputs of at most {MAX_SCORE_RANK}", r.mdef.score.span)
        out[name] = (r.arg(f"float{rank}", name, name), r.arg("grad", name, f"grad_{name}"))
    return out


def _flat(e: Emitter, x: str, idx: list, hint: str):
    """The flat offset of ``x[idx]`` (row-major, contiguous), each index clamped to its axis."""
    flat = 0
    for a, i in enumerate(idx):
        ci = e.let(e.clamp(i, 0, f"{x}_n{a} - 1"), f"{hint}_{a}")
        flat = ci if a == 0 else e.add(e.mul(w(flat), f"{x}_n{a}"), ci)
    return e.let(flat, f"at_{hint}")


def render_score(r: Renderer, floats: dict, **names) -> dict:
    """The template's score slots for ``r.mdef`` (all empty without a score); ``names`` are
    the template's ``name``, ``params`` and ``args``."""
    from maskc.backends import scores as S
    from maskc.ir.scores import pretty_score, tile_constant
    from maskc.backends.triton.template import GRAD_CALL, GRAD_FUNC, SCORE_FUNCS, SCORE_LINES
    mdef = r.mdef
    slots = dict.fromkeys(["score_funcs", *SCORE_LINES], "")
    if mdef.score is None:
        return slots
    reserved = set(_SCORE_PARAMS) | set(_GLOBALS) | {"LOG2E"} | {
        n for a in r.args for n in (a.name, *(f"{a.name}_{x}" for x in SUFFIXES[a.kind]))}
    env = Env(P="P", Q="Q", K="K", h="h", Lq="Lq", Lk="Lk", p_nonneg=mdef.grid is not None,
              grid=mdef.grid, extra="Lk")

    def load(f, node: ir.SIndex, idx):
        x = floats[node.input][0]
        at = _flat(f.e, x, idx, node.input)
        return f.e.let(f"tl.load({x} + {w(at)})", f"{node.input}_v")

    def body(f):
        return "\n".join(f"    {line}" for line in f.e.lines) or "    pass"

    fwd = _ScoreFn(reserved)
    value = S.render(fwd, mdef.score, env, "s", S.TRITON_SCORES, load)
    bwd = _ScoreFn(reserved)
    value2 = S.render(bwd, mdef.score, env, "s", S.TRITON_SCORES, load)
    d_s, d_inputs = S.derivatives(mdef.score)
    dvalue = S.render(bwd, d_s, env, "s", S.TRITON_SCORES, load)

    grad_func, grad_call = "", ""
    if d_inputs:
        g = _ScoreFn(reserved)
        for name in dict.fromkeys(x.input for x, _ in d_inputs):
            with g.e.block() as inner:
                for x, d in d_inputs:
                    if x.input != name:
                        continue
                    dx = S.render(g, d, env, "s", S.TRITON_SCORES, load)
                    at = _flat(g.e, floats[name][0], [pred(g, i, env) for i in x.index], name)
                    contrib = "ds" if dx == "1.0" else f"ds * {w(dx)}"
                    buf = floats[name][1]
                    g.e.note(f"d score / d {pretty_score(x)}")
                    if tile_constant(x):   # one entry for the whole tile: one atomic
                        g.e.line(f"tl.atomic_add({buf} + {w(at)}, tl.sum(tl.sum("
                                 f"tl.where(ds != 0.0, {contrib}, 0.0), 1), 0))")
                    else:
                        g.e.line(f"tl.atomic_add({buf} + ({at} + 0 * P + 0 * K), {contrib}, "
                                 "mask=ds != 0.0)")
            g.e.line(f"if {floats[name][1]}_on != 0:  # {name} requires grad")
            g.e.lines.extend(f"    {line}" for line in inner)
        grad_func = GRAD_FUNC.format(grad_body=body(g), **names)
        grad_call = GRAD_CALL.format(**names)
    slots["score_funcs"] = SCORE_FUNCS.format(
        grad_func=grad_func, score_body=body(fwd), score_expr=value, dscore_body=body(bwd),
        score_expr2=value2, dscore_expr=dvalue, **names)
    for k, text in SCORE_LINES.items():
        slots[k] = text.format(grad_call=grad_call, **names)
    return slots
