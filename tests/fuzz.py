"""A fuzz harness for maskc: random specs, mutations and misuse, in sandboxed worker processes.

Run by hand from the checkout's root::

    python -m tests.fuzz --cases 3000 --jobs 2 [--seed S] [--kinds spec mutate ...]

Every case is generated deterministically from ``(seed, kind, index)`` and run in a
subprocess worker (one worker handles many cases) under a 4 GiB address-space limit
(``RLIMIT_AS``), so an allocation past it is a ``MemoryError`` the worker reports; a case that
runs past the 10 s watchdog is a hang (``maskc test``: 30 s per mask of the file, as it
tests one mask after another and prints a line for each case), and a worker that dies or hangs
is replaced. Kinds:

- ``spec`` (a): grammar-aware random specs, their dense masks checked against a brute-force
  evaluator written here from LANGUAGE.md section 2 (numpy over ``(h, q, k)``, not maskc's);
- ``mutate`` (b): byte flips, token deletions/duplications/insertions and number blow-ups of
  ``examples/*.mask``, through ``maskc.compile`` (text and path) and ``maskc check``;
- ``api`` (c): wrong argument types and values to every public entry;
- ``cli`` (d): ``maskc.cli.main`` with random flags and values (argparse's SystemExit is fine);
- ``backends`` (e): reference vs flex-eager vs Triton (interpreter) attention within 1e-5 in
  float32, or the same MaskError class from each;
- ``blocks`` (f): block maps against dense tiles: a full tile is all kept, an empty one none;
- ``sizes`` (g): size probes at and just past the dense limit (default and lowered).

Anything but a MaskError (or argparse's SystemExit) is a failure; each distinct failure
(exception type and location) is printed once with a reproducer. Exit status 1 on failures.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import re
import select
import subprocess
import sys
import tempfile
import time
import traceback
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["KINDS", "WEIGHTS", "split_cases", "run", "Summary", "make_case", "run_case"]

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("spec", "mutate", "api", "cli", "backends", "blocks", "sizes")
LETTERS = dict(zip("abcdefg", KINDS))
# Share of --cases per kind: cheap kinds take most, the Triton kind and the probes few.
WEIGHTS = {"spec": 0.60, "mutate": 0.20, "api": 0.09, "cli": 0.04, "backends": 0.01,
           "blocks": 0.0595, "sizes": 0.0005}
WATCHDOG_S = 10.0
MEMORY_LIMIT = 4 << 30
STATUSES = ("ok", "maskerror", "exception", "hang", "memory", "mismatch")


class Expected(Exception):
    """The brute-force evaluator's verdict that the spec must be refused (a MaskError)."""


class Mismatch(Exception):
    """maskc's answer differs from what the harness expects."""


# ================================================================ (a) specs and their meaning

@dataclass
class Env:
    """Broadcastable ``(H, Lq, Lk)`` index arrays seen by a (sub)expression."""

    p: np.ndarray
    k: np.ndarray
    q: np.ndarray | None
    h: np.ndarray
    Lq: int
    Lk: int
    inputs: dict
    qc: list | None = None  # grid coordinates per axis (top level only)
    kc: list | None = None


@dataclass
class Ctx:
    inputs: tuple = ()
    grid: tuple | None = None  # ((name or None, size), ...)
    in_blocks: bool = False
    in_within: bool = False

    def with_(self, **kw):
        return Ctx(**{**self.__dict__, **kw})


def _runs_start(x: np.ndarray) -> np.ndarray:
    start = np.zeros(len(x), dtype=np.int64)
    for i in range(1, len(x)):
        start[i] = start[i - 1] if x[i] == x[i - 1] else i
    return start


def _nbhd_axis(qa, ka, n, K, d, s, causal):
    """NATTEN's rule on one axis (LANGUAGE.md section 2), on broadcast coordinate arrays."""
    same_group = (ka % d) == (qa % d)
    qg, kg = qa // d, ka // d
    ng = -(-(n - qa % d) // d)
    if causal:
        leader = np.minimum((qg // s) * s + s - 1, ng - 1)
        return same_group & (kg <= qg) & (leader - kg < K)
    left, right = K // 2, K // 2 + K % 2 - 1
    leader = np.minimum((qg // s) * s + s // 2, ng - 1)
    center = np.maximum(left, np.minimum(leader, ng - 1 - right))
    return same_group & (center - left <= kg) & (kg <= center + right)


class SpecGen:
    """Draws a random spec as text plus a brute-force meaning (``None`` with ``random``)."""

    def __init__(self, rng: random.Random, random_ok: bool = False, max_depth: int = 3):
        self.rng = rng
        self.random_ok = random_ok
        self.max_depth = max_depth
        self.params: dict[str, int] = {}  # name -> default
        self.overrides: dict[str, int] = {}
        self.lets: list[str] = []
        self.evaluable = True
        self.can_fail = False  # a heads without `_` at the top

    # ---- integers (literals, parameters, sums)
    def num(self, lo: int, hi: int) -> tuple[str, int]:
        r = self.rng
        v = r.randint(lo, hi)
        x = r.random()
        if x < 0.08:
            name = f"n{len(self.params)}"
            self.params[name] = v
            if r.random() < 0.5:
                v = r.randint(lo, hi)
                self.overrides[name] = v
            return name, v
        if x < 0.12 and v >= 1:
            a = r.randint(0, v)
            return f"{a} + {v - a}", v
        return str(v), v

    # ---- predicates: (text, prec, fn)
    def iexpr(self, ctx: Ctx, depth: int):
        r = self.rng
        if depth <= 0 or r.random() < 0.35:
            c = r.random()
            if c < 0.3:
                v = r.randint(-5, 8)
                return str(v), (7 if v < 0 else 9), (lambda e, v=v: v)
            if ctx.grid and c < 0.5:
                of, i = r.choice("qk"), r.randrange(len(ctx.grid))
                name = ctx.grid[i][0]
                text = f"{of}.{name}" if name and r.random() < 0.8 else f"{of}[{i}]"
                return text, 9, (lambda e, of=of, i=i: (e.qc if of == "q" else e.kc)[i])
            var = r.choice(("q", "p", "k", "k", "p", "h", "Lq", "Lk"))
            return var, 9, (lambda e, var=var: getattr(e, var))
        kind = r.choice(("bin", "bin", "bin", "neg", "abs", "minmax"))
        if kind == "bin":
            op = r.choice(("+", "-", "*", "//", "%"))
            prec = 5 if op in "+-" else 6
            a = self.iexpr(ctx, depth - 1)
            if op in ("//", "%"):
                c = r.randint(1, 6)
                b = (str(c), 9, lambda e, c=c: c)
            else:
                b = self.iexpr(ctx, depth - 1)
            f = {"+": np.add, "-": np.subtract, "*": np.multiply, "//": np.floor_divide,
                 "%": np.mod}[op]
            text = f"{_paren(a, prec)} {op} {_paren(b, prec + 1)}"
            return text, prec, (lambda e, a=a[2], b=b[2], f=f: f(a(e), b(e)))
        if kind == "neg":
            a = self.iexpr(ctx, depth - 1)
            return f"-{_paren(a, 7)}", 7, (lambda e, a=a[2]: np.negative(a(e)))
        if kind == "abs":
            a = self.iexpr(ctx, depth - 1)
            return f"abs({a[0]})", 9, (lambda e, a=a[2]: np.abs(a(e)))
        fn = r.choice(("min", "max"))
        args = [self.iexpr(ctx, depth - 1) for _ in range(r.randint(2, 3))]
        npf = np.minimum if fn == "min" else np.maximum

        def ev(e, fs=[a[2] for a in args], npf=npf):
            out = fs[0](e)
            for f in fs[1:]:
                out = npf(out, f(e))
            return out
        return f"{fn}({', '.join(a[0] for a in args)})", 9, ev

    def bexpr(self, ctx: Ctx, depth: int):
        r = self.rng
        if depth <= 0 or r.random() < 0.4:
            if r.random() < 0.08:
                b = r.random() < 0.5
                return ("true" if b else "false"), 9, (lambda e, b=b: b)
            ops = {"<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal,
                   "==": np.equal, "!=": np.not_equal}
            n = 3 if r.random() < 0.12 else 2
            terms = [self.iexpr(ctx, 2) for _ in range(n)]
            cmps = [r.choice(list(ops)) for _ in range(n - 1)]
            text = _paren(terms[0], 5) + "".join(f" {c} {_paren(t, 5)}"
                                                 for c, t in zip(cmps, terms[1:]))

            def ev(e, fs=[t[2] for t in terms], cs=[ops[c] for c in cmps]):
                vals = [f(e) for f in fs]
                out = True
                for c, a, b in zip(cs, vals, vals[1:]):
                    out = np.logical_and(out, c(a, b))
                return out
            return text, 4, ev
        kind = r.choice(("and", "or", "not"))
        if kind == "not":
            a = self.bexpr(ctx, depth - 1)
            return f"not {_paren(a, 3)}", 3, (lambda e, a=a[2]: np.logical_not(a(e)))
        prec = 2 if kind == "and" else 1
        a, b = self.bexpr(ctx, depth - 1), self.bexpr(ctx, depth - 1)
        f = np.logical_and if kind == "and" else np.logical_or
        return (f"{_paren(a, prec)} {kind} {_paren(b, prec + 1)}", prec,
                (lambda e, a=a[2], b=b[2], f=f: f(a(e), b(e))))

    # ---- masks: (text, prec, fn)
    def leaf(self, ctx: Ctx):
        r = self.rng
        opts = ["const", "causal", "window", "window2", "windowd", "global", "sink", "prefix",
                "chunk", "strided", "fixed"]
        if not ctx.in_blocks and not ctx.in_within:
            opts += ["where", "where"]
        special = []
        if ctx.inputs and not ctx.in_blocks and not ctx.in_within:
            special.append("same")
        if ctx.in_blocks:
            special.append("layout")
            if self.random_ok:
                special.append("random")
        if ctx.grid and not ctx.in_blocks and not ctx.in_within:
            special += ["nbhd", "tile"]
        kind = r.choice(special) if special and r.random() < 0.5 else r.choice(opts)
        if kind == "const":
            b = r.random() < 0.5
            return ("all" if b else "none"), 9, (lambda e, b=b: np.full((1, 1, 1), b))
        if kind == "causal":
            return "causal", 9, (lambda e: e.k <= e.p)
        if kind == "window":
            t, w = self.num(0, 6)
            if r.random() < 0.15:
                name = f"f{len(self.lets)}"
                self.lets.append(f"let {name}(a) = window(a)")
                return f"{name}({t})", 9, (lambda e, w=w: np.abs(e.p - e.k) <= w)
            return f"window({t})", 9, (lambda e, w=w: np.abs(e.p - e.k) <= w)
        if kind == "window2":
            (ta, a), (tb, b) = self.num(0, 6), self.num(0, 6)
            return (f"window(before = {ta}, after = {tb})", 9,
                    lambda e, a=a, b=b: (e.p - a <= e.k) & (e.k <= e.p + b))
        if kind == "windowd":
            (tw, w), (td, d) = self.num(0, 4), self.num(1, 3)
            return (f"window({tw}, dilation = {td})", 9,
                    lambda e, w=w, d=d: (np.abs(e.p - e.k) <= w * d) & ((e.p - e.k) % d == 0))
        if kind == "global":
            if r.random() < 0.5:
                s = sorted({r.randint(0, 12) for _ in range(r.randint(0, 3))})
                text, S = "[" + ", ".join(map(str, s)) + "]", s
            else:
                a, b = r.randint(0, 10), r.randint(0, 12)
                text, S = f"{a}..{b}", list(range(a, b))
            return (f"global({text})", 9,
                    lambda e, S=S: np.isin(e.p, S) | np.isin(e.k, S))
        if kind in ("sink", "prefix"):
            t, n = self.num(0, 8)
            if kind == "sink":
                return f"sink({t})", 9, (lambda e, n=n: e.k < n)
            return f"prefix({t})", 9, (lambda e, n=n: (e.p < n) & (e.k < n))
        if kind == "chunk":
            t, n = self.num(1, 8)
            return f"chunk({t})", 9, (lambda e, n=n: e.p // n == e.k // n)
        if kind == "strided":
            t, s = self.num(1, 5)
            return f"strided({t})", 9, (lambda e, s=s: (e.p - e.k) % s == 0)
        if kind == "fixed":
            s = r.randint(1, 6)
            c = r.randint(0, s)
            return f"fixed({s}, {c})", 9, (lambda e, s=s, c=c: e.k % s >= s - c)
        if kind == "where":
            t, _, f = self.bexpr(ctx, 2)
            return f"where {t}", 2, (lambda e, f=f: np.asarray(f(e), dtype=bool))
        if kind == "same":
            x = r.choice(ctx.inputs)
            return f"same({x})", 9, (lambda e, x=x: _same(e, x))
        if kind == "layout":
            rows, cols = r.randint(0, 4), r.randint(1, 4)
            M = [[r.randint(0, 1) for _ in range(cols)] for _ in range(rows)]
            text = "[" + ", ".join("[" + ", ".join(map(str, row)) + "]" for row in M) + "]"

            def ev(e, M=np.array(M, dtype=bool).reshape(rows, cols)):
                i, j = np.broadcast_arrays(e.p, e.k)
                ok = (i >= 0) & (i < M.shape[0]) & (j >= 0) & (j < M.shape[1])
                out = np.zeros(i.shape, dtype=bool)
                out[ok] = M[i[ok], j[ok]]
                return out
            return f"layout({text})", 9, ev
        if kind == "random":
            self.evaluable = False
            return f"random({r.randint(0, 3)}, seed = {r.randint(0, 9)})", 9, None
        if kind == "tile":
            ts = [r.randint(1, 6) for _ in ctx.grid]

            def ev(e, ts=ts):
                out = True
                for qa, ka, t in zip(e.qc, e.kc, ts):
                    out = out & (qa // t == ka // t)
                return np.asarray(out)
            return f"tile({', '.join(map(str, ts))})", 9, ev
        # neighborhood
        Ks, ds, cs, ss = [], [], [], []
        for _, n in ctx.grid:
            K = r.randint(1, n)
            Ks.append(K)
            ds.append(r.randint(1, max(1, n // K)))
            cs.append(r.random() < 0.4)
            ss.append(r.randint(1, K))
        if r.random() < 0.05:  # out of the documented range: a MaskError is expected
            self.can_fail = True
            ds[0] = ctx.grid[0][1] + 1
        def tup(vals, fmt=str):
            if len(vals) == 1 or (len(set(vals)) == 1 and r.random() < 0.5):
                return fmt(vals[0])  # NOTE: the grammar has no 1-tuples
            return "(" + ", ".join(map(fmt, vals)) + ")"
        text = "neighborhood(" + tup(Ks)
        if any(d != 1 for d in ds) or r.random() < 0.2:
            text += f", dilation = {tup(ds)}"
        if any(cs) or r.random() < 0.2:
            text += f", causal = {tup(cs, lambda b: 'true' if b else 'false')}"
        if any(s != 1 for s in ss) or r.random() < 0.2:
            text += f", stride = {tup(ss)}"
        text += ")"
        sizes = [n for _, n in ctx.grid]

        def ev(e, Ks=Ks, ds=ds, cs=cs, ss=ss):
            if ds[0] * Ks[0] > sizes[0]:
                raise Expected("neighborhood larger than its axis")
            out = True
            for qa, ka, n, K, d, c, s in zip(e.qc, e.kc, sizes, Ks, ds, cs, ss):
                out = out & _nbhd_axis(qa, ka, n, K, d, s, c)
            return np.asarray(out)
        return text + "", 9, ev

    def mask(self, ctx: Ctx, depth: int, top: bool = False):
        r = self.rng
        if depth <= 0 or r.random() < 0.3:
            return self.leaf(ctx)
        kinds = ["not", "sub", "and", "and", "or", "or", "heads", "blocks"]
        if ctx.inputs and not ctx.in_blocks and not ctx.in_within:
            kinds.append("within")
        kind = r.choice(kinds)
        sub = lambda c=ctx: self.mask(c, depth - 1)  # noqa: E731
        if kind == "not":
            a = sub()
            return f"~{_paren(a, 5)}", 5, _lift(np.logical_not, a[2])
        if kind == "sub":
            a, b = sub(), sub()
            return (f"{_paren(a, 3)} - {_paren(b, 4)}", 3,
                    _lift(lambda x, y: x & ~y, a[2], b[2]))
        if kind in ("and", "or"):
            prec = 2 if kind == "and" else 1
            terms = [sub() for _ in range(r.randint(2, 3))]
            op = " & " if kind == "and" else " | "
            f = np.logical_and if kind == "and" else np.logical_or
            text = op.join([_paren(terms[0], prec)] + [_paren(t, prec + 1) for t in terms[1:]])

            def ev(e, fs=[t[2] for t in terms], f=f):
                out = fs[0](e)
                for g in fs[1:]:
                    out = f(out, g(e))
                return out
            return text, prec, (None if any(t[2] is None for t in terms) else ev)
        if kind == "heads":
            arms = []
            for _ in range(r.randint(0, 2)):
                c = r.random()
                if c < 0.3:
                    s = [r.randint(0, 4)]
                    st = str(s[0])
                elif c < 0.6:
                    s = sorted({r.randint(0, 4) for _ in range(r.randint(1, 3))})
                    st = "[" + ", ".join(map(str, s)) + "]"
                else:
                    a, b = r.randint(0, 3), r.randint(0, 5)
                    s, st = list(range(a, b)), f"{a}..{b}"
                arms.append((st, s, sub()))
            if not (top and arms and r.random() < 0.3):
                arms.append(("_", None, sub()))
            else:
                self.can_fail = True
            text = "heads { " + ", ".join(f"{st}: {a[0]}" for st, _, a in arms) + " }"

            def ev(e, arms=[(s, a[2]) for _, s, a in arms]):
                out = np.zeros((1, 1, 1), dtype=bool)
                taken = np.zeros(e.h.shape, dtype=bool)
                for s, f in arms:
                    sel = ~taken & (True if s is None else np.isin(e.h, s))
                    out = np.where(sel, f(e), out)
                    taken = taken | sel
                if not taken.all():
                    raise Expected("a head no arm holds")
                return out
            return text, 9, (None if any(a[2] is None for *_, a in arms) else ev)
        if kind == "blocks":
            tb, B = self.num(1, 6)
            a = self.mask(ctx.with_(in_blocks=True), depth - 1)

            def ev(e, B=B, f=a[2]):
                return f(Env(e.p // B, e.k // B, None, e.h, e.Lq, e.Lk, {}))
            return f"blocks({tb}, {a[0]})", 9, (None if a[2] is None else ev)
        x = r.choice(ctx.inputs)
        a = self.mask(ctx.with_(in_within=True), depth - 1)

        def ev(e, x=x, f=a[2]):
            xs = e.inputs[x]
            start = _runs_start(xs)
            pc = np.clip(e.p, 0, e.Lk - 1)
            inner = f(Env(e.p - start[pc], e.k - start[e.k], None, e.h, e.Lq, e.Lk, {}))
            return _same(e, x) & inner
        return f"within({x}, {a[0]})", 9, (None if a[2] is None else ev)


def _paren(node, need: int) -> str:
    return node[0] if node[1] >= need else f"({node[0]})"


def _lift(f, *fs):
    if any(g is None for g in fs):
        return None
    return lambda e: f(*(g(e) for g in fs))


def _same(e: Env, x: str) -> np.ndarray:
    xs = e.inputs[x]
    valid = (e.p >= 0) & (e.p < e.Lk)
    return valid & (xs[np.clip(e.p, 0, e.Lk - 1)] == xs[e.k])


@dataclass
class Spec:
    text: str
    params: dict  # compile-time overrides
    grid: tuple | None
    inputs: tuple
    fn: object  # Env -> bool array, or None (unevaluable: random)
    can_fail: bool

    def expected(self, q_len: int, kv_len: int, heads: int, inputs: dict) -> np.ndarray:
        """The brute-force dense mask ``(heads, q_len, kv_len)`` (raises :class:`Expected`)."""
        h = np.arange(heads)[:, None, None]
        q = np.arange(q_len)[None, :, None]
        k = np.arange(kv_len)[None, None, :]
        p = q + (kv_len - q_len)
        qc = kc = None
        if self.grid:
            sizes = [n for _, n in self.grid]
            qc = [(q // int(np.prod(sizes[i + 1:]))) % n for i, n in enumerate(sizes)]
            kc = [(k // int(np.prod(sizes[i + 1:]))) % n for i, n in enumerate(sizes)]
        env = Env(p, k, q, h, q_len, kv_len, {n: np.asarray(v) for n, v in inputs.items()},
                  qc, kc)
        return np.broadcast_to(np.asarray(self.fn(env), dtype=bool),
                               (heads, q_len, kv_len)).copy()


def gen_spec(rng: random.Random, random_ok: bool = False, max_grid: int = 40) -> Spec:
    g = SpecGen(rng, random_ok)
    inputs = rng.choice(((), (), ("doc",), ("doc",), ("doc", "seg")))
    grid = None
    if rng.random() < 0.25:
        nd = rng.randint(1, 3)
        named = rng.random() < 0.6
        sizes = []
        for _ in range(nd):
            room = max_grid // max(1, int(np.prod(sizes or [1])))
            sizes.append(rng.randint(1, max(1, min(6, room))))
        names = ("t", "y", "x")[3 - nd:] if named else (None,) * nd
        grid = tuple(zip(names, sizes))
    text, _, fn = g.mask(Ctx(inputs=inputs, grid=grid), g.max_depth, top=True)
    sig = [f"input {x}" for x in inputs] + [f"{n} = {v}" for n, v in g.params.items()]
    rng.shuffle(sig)
    head = "mask m" + (f"({', '.join(sig)})" if sig else "")
    if grid:
        head += " over grid(" + ", ".join(f"{n} = {s}" if n else str(s) for n, s in grid) + ")"
    src = "\n".join(g.lets + [f"{head} = {text}"]) + "\n"
    return Spec(src, dict(g.overrides), grid, inputs, fn if g.evaluable else None, g.can_fail)


def gen_sizes(rng: random.Random, spec: Spec, max_len: int = 24, max_heads: int = 3):
    if spec.grid:
        n = int(np.prod([s for _, s in spec.grid]))
        q_len = kv_len = n
    else:
        q_len, kv_len = rng.randint(1, max_len), rng.randint(1, max_len)
        if rng.random() < 0.4:
            kv_len = q_len
        elif rng.random() < 0.2:
            q_len = 1
    heads = rng.randint(1, max_heads)
    docs = {}
    for x in spec.inputs:
        ids = [rng.randint(0, 3) for _ in range(kv_len)]
        docs[x] = sorted(ids) if rng.random() < 0.6 else ids
    return q_len, kv_len, heads, docs


def _dense_call(spec: Spec, q_len, kv_len, heads, docs) -> str:
    args = f"heads={heads}" if spec.grid else f"{q_len}, {kv_len}, {heads}"
    args += "".join(f", {x}=np.array({v})" for x, v in docs.items())
    params = "".join(f", {k}={v}" for k, v in spec.params.items())
    return f"m = maskc.compile({spec.text!r}{params}); m.dense({args})"


def _dense(m, spec: Spec, q_len, kv_len, heads, docs):
    kw = {x: np.array(v, dtype=np.int64) for x, v in docs.items()}
    if spec.grid:
        return m.dense(heads=heads, **kw)
    return m.dense(q_len, kv_len, heads, **kw)


def case_spec(rng: random.Random, w: "Worker"):
    import maskc
    spec = gen_spec(rng)
    q_len, kv_len, heads, docs = gen_sizes(rng, spec)
    repro = _dense_call(spec, q_len, kv_len, heads, docs)

    def run():
        try:
            want = spec.expected(q_len, kv_len, heads, docs)
        except Expected as why:
            want = why
        m = maskc.compile(spec.text, **spec.params)
        try:
            got = _dense(m, spec, q_len, kv_len, heads, docs)
        except maskc.MaskError:
            if isinstance(want, Expected):
                return "maskerror"
            raise
        if isinstance(want, Expected):
            raise Mismatch(f"dense accepted a spec that must be refused ({want})")
        if got.shape != want.shape or not np.array_equal(got, want):
            bad = np.argwhere(got != want)[:3].tolist() if got.shape == want.shape else "shape"
            raise Mismatch(f"dense differs from the brute-force evaluator at (h, q, k) {bad}")
        if w.rng_flag(rng, 0.2):  # pretty() parses back to the same mask
            m2 = maskc.compile(m.pretty())
            if not np.array_equal(_dense(m2, spec, q_len, kv_len, heads, docs), got):
                raise Mismatch("compile(m.pretty()) gives a different dense mask")
        return "ok"
    return repro, run


# ================================================================ (b) mutations of examples

_TOKEN = re.compile(r"\d+|\w+|\.\.|//|\S", re.ASCII)
_VOCAB = ["(", ")", ",", "=", "..", "~", "|", "&", "-", "//", "%", "*", "{", "}", "[", "]",
          ":", "#", "\n", "heads", "where", "blocks", "let", "mask", "input", "over", "grid",
          "_", "q", "k", "p", "h", "true", "random", "layout", "same", "doc", ".", "not"]
_BIG = ["0", "1", "2147483647", "2147483648", "9223372036854775808", "1000000", "10" * 6,
        "1" + "0" * 400, "46340", "65537", "99999", "4096"]


def _examples() -> list[tuple[str, bytes]]:
    return [(p.name, p.read_bytes()) for p in sorted((ROOT / "examples").glob("*.mask"))]


def mutate(rng: random.Random, data: bytes, others: list[bytes]) -> bytes:
    for _ in range(rng.randint(1, 3)):
        op = rng.choice(("flip", "flip", "del", "dup", "ins", "num", "num", "splice"))
        if op == "flip" and data:
            i = rng.randrange(len(data))
            b = rng.choice((rng.randrange(256), data[i] ^ (1 << rng.randrange(8)), 0, 0x80))
            data = data[:i] + bytes([b]) + data[i + 1:]
            continue
        if op == "splice":
            o = rng.choice(others)
            data = data[:rng.randint(0, len(data))] + o[rng.randint(0, len(o)):]
            continue
        text = data.decode("utf-8", "replace")
        toks = list(_TOKEN.finditer(text))
        if not toks:
            continue
        if op == "num":
            nums = [t for t in toks if t.group().isdigit()] or toks
            t = rng.choice(nums)
            text = text[:t.start()] + rng.choice(_BIG) + text[t.end():]
        else:
            t = rng.choice(toks)
            new = {"del": "", "dup": t.group() + " " + t.group(),
                   "ins": t.group() + " " + rng.choice(_VOCAB) + " "}[op]
            text = text[:t.start()] + new + text[t.end():]
        data = text.encode("utf-8")
    return data


def case_mutate(rng: random.Random, w: "Worker"):
    import maskc
    examples = w.examples
    name, data = rng.choice(examples)
    data = mutate(rng, data, [d for _, d in examples])
    as_file = rng.random() < 0.4
    names = re.findall(rb"\bmask\s+([A-Za-z_]\w*)", data)
    names = [n.decode() for n in names][:4] or [None]
    check_cli = as_file and rng.random() < 0.3
    analyse = rng.random() < 0.25
    repro = (f"# mutated {name}\ndata = {data!r}\n" +
             ("open('f.mask', 'wb').write(data); src = Path('f.mask')" if as_file
              else "src = data.decode('utf-8', 'replace')") +
             f"\nfor n in {names!r}: m = maskc.compile(src, name=n)" +
             ("  # then, docs = zeros per input: without a grid m.dense(16, 64 if m.inputs "
              "else None, 2, **docs); m.block_map(64, heads=2, block_q=16, **docs); over a "
              "grid m.block_map(heads=2, block_q=16, **docs); m.dense(heads=2, **docs)"
              if analyse else "") + ("\nmaskc.cli.main(['check', 'f.mask'])" if check_cli else ""))

    def run():
        if as_file:
            path = w.tmp / "f.mask"
            path.write_bytes(data)
            src = path
        else:
            src = data.decode("utf-8", "replace")
        errors = 0
        for n in names:
            try:
                m = maskc.compile(src, name=n)
                if analyse:
                    docs = _zero_inputs(m)
                    if m.grid is None:
                        m.dense(16, 64 if m.inputs else None, 2, **docs)
                        m.block_map(64, heads=2, block_q=16, **docs)
                    else:
                        m.block_map(heads=2, block_q=16, **docs)
                        m.dense(heads=2, **docs)
            except maskc.MaskError:
                errors += 1
        if check_cli:
            w.cli(["check", str(w.tmp / "f.mask")])
        return "maskerror" if errors else "ok"
    return repro, run



def _zero_inputs(m) -> dict:
    """Zeros for each input of ``m`` in the shape its kind takes (document ids, a selection's
    rows, a list); past 2**24 entries one entry instead (a shape error maskc must report:
    the harness itself never allocates a mutated spec's size)."""
    from maskc.ir.inputs import input_kinds
    n = m.grid and int(np.prod(m.grid)) or 64
    out = {}
    for x, kind in input_kinds(m.ir).items():
        shape = (n,) if kind.kind == "ids" else \
            (kind.rows(n, m.ir.grid), 1) if kind.kind == "select" else (1,)
        out[x] = np.zeros(shape if np.prod(shape) <= 2**24 else (1,), dtype=np.int64)
    return out

# ================================================================ (c) API misuse

JUNK = ["None", "True", "False", "0", "-1", "1", "3", "2**31", "2**63", "10**30", "-10**30",
        "1.5", "float('nan')", "float('inf')", "'abc'", "''", "b'x'", "[1]", "[[1]]", "(2, 3)",
        "{}", "object()", "np.uint8(3)", "np.int64(-2)", "np.int64(4)", "np.array([4, 5])",
        "np.array(4)", "np.float64(2.0)", "torch.tensor(0.5)", "torch.tensor([1, 2])",
        "torch.tensor(4)", "Path('nope.mask')", "Path('a\\x00.mask')", "1j", "'cuda'", "'cpu'",
        "'meta'", "torch.device('cpu')", "np.array([[1, 2]])", "range(3)", "-0.0", "bytearray(b'm')",
        "'mask m = causal'", "'mask m = causal\\x00'", "np.nan", "[float('nan')]", "[0, float('inf')]",
        "['a']", "[object()]", "[10**10]", "np.array([1.5, 2.5])", "torch.zeros(3, dtype=torch.int32)"]
SPECS = ["mask m = causal & window(3)", "mask m(w = 2) = causal | window(w)",
         "mask m = heads { 0: causal, _: blocks(4, random(1)) }",
         "mask m over grid(y = 4, x = 4) = neighborhood(3)",
         "mask m(input doc) = causal & same(doc)",
         "mask m(input doc) = within(doc, causal & window(before = 2, after = 0))",
         "mask m = where (p - k) % 3 == 0 and k <= p", "mask m = blocks(2, layout([[1, 0], [1, 1]]))",
         "mask m over grid(4) = heads { 0: none, _: all } & tile(2)"]
GOOD = {"q_len": ["8", "5", "None"], "kv_len": ["None", "8", "11"], "heads": ["1", "2", "4"],
        "block_q": ["4", "16", "128"], "block_k": ["None", "4", "8"],
        "target": ["'triton'", "'flex'", "'reference'"], "backend": ["'reference'",
        "'flex-eager'", "'triton'"], "device": ["None", "'cpu'"], "block_size": ["16", "(8, 4)", "128"],
        "scale": ["None", "0.5"], "return_lse": ["False", "True"], "dtype": ["'float32'", "'bfloat16'"],
        "head_dim": ["8", "64"]}


def _pick(rng, name: str, p_junk: float) -> str:
    if name not in GOOD or rng.random() < p_junk:
        return rng.choice(JUNK)
    return rng.choice(GOOD[name])


def _tensor_code(rng, shape, dtype="float32", junk=False) -> str:
    if junk and rng.random() < 0.3:
        return rng.choice(["None", "np.zeros(" + str(tuple(shape)) + ")", "[1.0]",
                           f"torch.zeros({tuple(shape[:3])})", f"torch.zeros({tuple(shape)}, dtype=torch.int64)",
                           f"torch.zeros({tuple(shape[:2]) + (0,) + tuple(shape[3:])})",
                           f"torch.randn({tuple(shape)}).transpose(2, 3)"])
    if junk and rng.random() < 0.3:
        dtype = rng.choice(["float16", "bfloat16", "float64"])
    extra = ", requires_grad=True" if junk and rng.random() < 0.1 else ""
    return f"torch.randn({tuple(shape)}, dtype=torch.{dtype}, generator=g{extra})"


def gen_api(rng: random.Random) -> tuple[str, str]:
    """``(spec or '', python statement)``: one call to a public entry with some bad arguments."""
    pj = rng.choice((0.1, 0.3, 0.6))
    entry = rng.choice(("compile", "dense", "block_map", "plan", "mask_mod", "flex_block_mask",
                        "attention", "attention", "attention", "document_ids", "set_dense_limit",
                        "config"))
    spec = rng.choice(SPECS)
    grid = "grid" in spec
    doc = "doc" in spec
    L = 16 if grid else 8

    def kw(names):
        out = []
        for n in names:
            if rng.random() < 0.5 or n in ("q_len",):
                v = _pick(rng, n, pj)
                if grid and n in ("q_len", "kv_len") and v in ("8", "5", "11") and rng.random() < 0.8:
                    v = "None"
                out.append(f"{n}={v}")
        out += _doc_opt(rng, doc, pj)
        if rng.random() < 0.05:
            out.append(f"bogus={rng.choice(JUNK)}")
        return ", ".join(out)

    if entry == "compile":
        src = repr(spec) if rng.random() > pj else rng.choice(JUNK)
        args = [src]
        if rng.random() < 0.3:
            args.append("name=" + rng.choice(["'m'", "None"] + JUNK))
        if rng.random() < 0.3:
            args.append(rng.choice(["w", "n", "doc", "name2"]) + "=" + rng.choice(JUNK))
        return "", f"maskc.compile({', '.join(args)})"
    if entry == "document_ids":
        a = rng.choice(JUNK + ["[3, 5, 2]", "[0, 0]", "[]", "torch.tensor([2, 2])"])
        form = rng.choice(("lengths", "cu", "both", "none"))
        call = {"lengths": f"({a})", "cu": f"(cu_seqlens={a})", "both": f"({a}, cu_seqlens={a})",
                "none": "()"}[form]
        return "", f"maskc.document_ids{call}"
    if entry == "set_dense_limit":
        return "", f"maskc.set_dense_limit({rng.choice(JUNK + ['1000', 'None'])}); maskc.dense_limit()"
    if entry == "config":
        vals = [rng.choice(JUNK + ["16", "32", "4"]) for _ in range(4)]
        layout = rng.choice(JUNK + ["'tiled'", "'auto'"])
        cfg = rng.choice([f"maskc.KernelConfig.uniform({vals[0]}, {vals[1]})",
                          f"maskc.KernelConfig(maskc.Tiles({vals[0]}, {vals[1]}, {vals[2]}, "
                          f"{vals[3]}), maskc.Tiles(16, 16), maskc.Tiles(16, 16), layout={layout})",
                          f"maskc.Tiles({vals[0]}, {vals[1]}, {vals[2]}, {vals[3]})",
                          rng.choice(JUNK)])
        sh = (1, 2, L, 8)
        opts = [f"config={cfg}", "backend='triton'"] + _doc_opt(rng, doc, pj)
        return spec, _attention_stmt(rng, [sh, sh, sh], "float32", False, opts)
    if entry == "dense":
        return spec, f"m.dense({kw(['q_len', 'kv_len', 'heads'])})"
    if entry == "block_map":
        return spec, f"m.block_map({kw(['q_len', 'kv_len', 'heads', 'block_q', 'block_k'])})"
    if entry == "plan":
        return spec, (f"m.plan({kw(['q_len', 'kv_len', 'heads', 'target'])}"
                      + rng.choice(["", ", dtype=" + _pick(rng, "dtype", pj),
                                    ", head_dim=" + _pick(rng, "head_dim", pj),
                                    ", block_size=" + _pick(rng, "block_size", pj),
                                    ", device='cpu'", ", kv_heads=" + rng.choice(JUNK)]) + ")")
    if entry == "mask_mod":
        return spec, (f"mm = m.mask_mod({kw(['q_len', 'kv_len', 'heads', 'device'])}); "
                      "mm(torch.tensor(0), torch.tensor(0), torch.tensor(1), torch.tensor(0))")
    if entry == "flex_block_mask":
        return spec, f"m.flex_block_mask({kw(['q_len', 'kv_len', 'heads', 'block_size', 'device'])})"
    # attention
    B, Hkv = rng.randint(1, 2), rng.randint(1, 2)
    Hq = Hkv * rng.randint(1, 2)
    Lq = L if grid or rng.random() < 0.5 else rng.randint(1, 12)
    Lk = L if grid or doc else rng.randint(1, 12)
    D = rng.choice((4, 8, 16))
    junk = rng.random() < pj
    shapes = [(B, Hq, Lq, D), (B, Hkv, Lk, D), (B, Hkv, Lk, D)]
    if junk and rng.random() < 0.3:
        i = rng.randrange(3)
        shapes[i] = tuple(max(1, s + rng.choice((-1, 1, 2))) for s in shapes[i])
    dt = rng.choice(("float32", "float32", "float64", "float16", "bfloat16")) if junk else "float32"
    opts = ["backend=" + _pick(rng, "backend", pj / 3)]
    opts += [f"{n}={_pick(rng, n, pj)}" for n in ("scale", "return_lse") if rng.random() < 0.4]
    opts += _doc_opt(rng, doc, pj)
    if rng.random() < 0.3:  # serving arguments (LANGUAGE.md section 10), right or wrong
        for n in rng.sample(["q_lens", "kv_lens", "q_offset", "kv_offset", "kv_valid",
                             "page_table"], rng.randint(1, 3)):
            good = {"q_lens": f"torch.full(({B},), {rng.randint(0, Lq)})",
                    "kv_lens": f"torch.full(({B},), {rng.randint(0, Lk)})",
                    "q_offset": str(rng.randint(-3, 9)), "kv_offset": str(rng.randint(0, 9)),
                    "kv_valid": f"torch.rand({B}, {Lk}) < 0.7",
                    "page_table": f"torch.zeros({B}, 1, dtype=torch.long)"}[n]
            opts.append(f"{n}={good if rng.random() > pj else rng.choice(JUNK + SEQ_JUNK)}")
    return spec, _attention_stmt(rng, shapes, dt, junk, opts)


SEQ_JUNK = ["torch.tensor([1])", "torch.tensor([0, 1, 2])", "torch.tensor([-1, 5])", "3",
            "torch.ones(1, 5, dtype=torch.bool)", "torch.tensor([[0, 99]])",
            "torch.tensor([1.5])", "[1, 2]", "torch.zeros(2, 3)"]


def _doc_opt(rng, doc: bool, pj: float) -> list[str]:
    if not doc or rng.random() < 0.05:
        return [f"doc={rng.choice(JUNK)}"] if rng.random() < 0.05 else []
    return ["doc=" + (rng.choice(JUNK) if rng.random() < pj else
                      rng.choice(["np.array([0, 0, 0, 1, 1, 1, 1, 2])", "torch.tensor([0] * 8)",
                                  "torch.tensor([[0] * 8, [1] * 8])"]))]


def _attention_stmt(rng, shapes, dt, junk, opts) -> str:
    tens = [f"_{n} = {_tensor_code(rng, s, dt, junk)}" for n, s in zip("qkv", shapes)]
    return "; ".join(tens) + f"; _call = dict({', '.join(opts)}); m.attention(_q, _k, _v, **_call)"


def case_api(rng: random.Random, w: "Worker"):
    import maskc
    import torch
    spec, stmt = gen_api(rng)
    repro = ((f"m = maskc.compile({spec!r}); " if spec else "")
             + ("g = torch.Generator().manual_seed(0); " if "generator=g" in stmt else "") + stmt)

    def run():
        ns = {"maskc": maskc, "np": np, "torch": torch, "Path": Path,
              "g": torch.Generator().manual_seed(0)}
        try:
            if spec:
                ns["m"] = w.compiled(spec)
            try:
                with w.quiet():
                    out = eval_stmt(stmt, ns)
            except maskc.MaskError:
                return "maskerror"
            if "m.attention(" in stmt:
                w.check_attention(ns, out)
            return "ok"
        finally:
            maskc.set_dense_limit(None)
    return repro, run


def eval_stmt(stmt: str, ns: dict):
    *pre, last = stmt.split("; ")
    for s in pre:
        exec(s, ns)
    return eval(last, ns)


# ================================================================ (d) CLI misuse

_INTS = ["0", "-1", "1", "2", "3", "7", "16", "64", "65537", "1000000000", "99999999999999999999",
         "abc", "1.5", ""]


def gen_cli(rng: random.Random, files: list[str]) -> list[str]:
    sub = rng.choice(("check", "check", "show", "show", "show", "compile", "compile", "test", "bogus"))
    if sub == "test" and rng.random() < 0.7:
        sub = "show"
    f = rng.choice(files + ["nope.mask", "/dev/null", "{tmp}/junk.mask", "{tmp}", "-"])
    if rng.random() < 0.003:
        f = "/dev/zero"
    argv = ["--debug"] if rng.random() < 0.1 else []
    argv += [sub, f]
    if sub == "check" and rng.random() < 0.3:
        argv.append(rng.choice(files))
    flags = {"check": ["-p"], "show": ["--name", "--q-len", "--kv-len", "--heads", "--kv-heads", "-p",
                                      "-i", "--block", "--width", "--target", "--dtype", "--head-dim",
                                      "--device"],
             "compile": ["--name", "--backend", "-o", "--arch", "--dtype", "--head-dim", "-p"],
             "test": ["--name", "--q-len", "--heads", "-p"], "bogus": ["--x"]}[sub]
    for _ in range(rng.randint(0, 4)):
        flag = rng.choice(flags + ["--nope"] if rng.random() < 0.05 else flags)
        if flag in ("--q-len", "--kv-len", "--heads", "--kv-heads", "--block", "--width", "--head-dim"):
            if sub == "test" and flag in ("--q-len", "--heads") and rng.random() < 0.9:
                v = str(rng.randint(8, 12) if flag == "--q-len" else rng.randint(1, 2))
            else:
                v = rng.choice(_INTS[:9]) if rng.random() < 0.7 else rng.choice(_INTS)
            if flag in ("--q-len", "--kv-len") and v.isdigit() and int(v) > 4096 and rng.random() < 0.7:
                v = str(rng.randint(1, 300))
        elif flag == "-p":
            name = rng.choice(["w", "n", "height", "width", "kernel", "d", "g", "b", "r", "seed", "s",
                               "c", "frames", "x", ""])
            v = name + rng.choice(["=", "=", "=", ""]) + rng.choice(
                ["3", "7", "0", "-1", "[0, 1]", "(3, 3)", "true", "40000", "1000000000", "(", "x",
                 "1..4", "2**3", "3 +", "10" * 30, ""])
        elif flag == "-i":
            v = rng.choice(["doc=4,4", "doc=", "doc", "doc=1,x", "doc=0,64", "x=3", "doc=-1,65"])
        elif flag == "--name":
            v = rng.choice(["mistral", "natten2d", "m", "", "x" * 3, "natten3d", "bigbird"])
        elif flag == "--target":
            v = rng.choice(["triton", "flex", "reference", "cuda"])
        elif flag == "--dtype":
            v = rng.choice(["float32", "bfloat16", "float16", "int8", "x"])
        elif flag == "--device":
            v = rng.choice(["cpu", "cuda", "meta", "nope", "cuda:7"])
        elif flag == "--backend":
            v = rng.choice(["triton", "flex", "x"])
        elif flag == "-o":
            v = rng.choice(["{tmp}/out.py", "-", "{tmp}", "/nonexistent/dir/out.py"])
        elif flag == "--arch":
            v = rng.choice(["sm_90", "80", "sm_x", "sm_1"])
        else:
            v = rng.choice(_INTS)
        argv += [flag, v]
    if sub == "show" and "--q-len" not in argv and rng.random() < 0.8:
        argv += ["--q-len", str(rng.randint(1, 512))]  # the default, 4096, is slow to draw
    return argv


def case_cli(rng: random.Random, w: "Worker"):
    files = [f"examples/{n}" for n, _ in w.examples]
    argv = gen_cli(rng, files)
    repro = f"maskc.cli.main({argv!r})  # {{tmp}}: a scratch folder with junk.mask"

    def run():
        real = [a.replace("{tmp}", str(w.tmp)) for a in argv]
        (w.tmp / "junk.mask").write_bytes(b"mask m = causal &\xff\n")
        return w.cli(real)
    return repro, run


# ================================================================ (e) backend agreement

def gen_score(rng: random.Random, depth: int = 3) -> str:
    """A random score expression (LANGUAGE.md section 9) whose values stay finite."""
    leaves = ["s", "0.5", "-1.25", "(p - k) * 0.1", "bias[h, abs(p - k)]", "q * 0.05"]
    kind = rng.choice(["leaf", "bin", "bin", "fn"]) if depth else "leaf"
    if kind == "leaf":
        return rng.choice(leaves)
    a = gen_score(rng, depth - 1)
    if kind == "bin":
        return f"({a} {rng.choice('+-*')} {gen_score(rng, depth - 1)})"
    fn = rng.choice(["tanh", "sigmoid", "abs", "min", "max", "clamp", "softcap", "exp"])
    if fn in ("min", "max"):
        return f"{fn}({a}, {gen_score(rng, depth - 1)})"
    if fn == "clamp":
        return f"clamp({a}, -2.0, 1.5)"
    if fn == "softcap":
        return f"softcap({rng.choice(['2.0', '30.0'])})"
    if fn == "exp":
        return f"exp(tanh({a}))"
    return f"{fn}({a})"


def with_score(text: str, expr: str) -> str:
    """``text`` (one mask) with ``with expr``, and the float input ``bias`` declared if read."""
    depth, eq = 0, None
    for i, ch in enumerate(text):
        depth += ch in "([{"
        depth -= ch in ")]}"
        if depth == 0 and text.startswith(" = ", i):
            eq = i
            break
    header, body = text[:eq], text[eq + 3:].rstrip()
    if "bias[" in expr:
        head, _, rest = header.partition(" over ")
        head = head[:-1] + ", input bias)" if head.endswith(")") else head + "(input bias)"
        header = head + (f" over {rest}" if rest else "")
    return f"{header} = {body} with {expr}\n"


def case_backends(rng: random.Random, w: "Worker"):
    import maskc
    import torch
    spec = gen_spec(rng, random_ok=True, max_grid=24)
    scored = rng.random() < 0.4
    if scored:  # a score composed with the random mask, on every backend
        spec = dataclasses.replace(spec, text=with_score(spec.text, gen_score(rng)))
    q_len, kv_len, heads, docs = gen_sizes(rng, spec, max_len=20)
    B, Hkv = rng.randint(1, 2), rng.randint(1, 2)
    Hq = Hkv * rng.randint(1, 2)
    D, Dv = rng.choice((8, 16)), None
    Dv = D if rng.random() < 0.85 else rng.choice((8, 16))
    lse = rng.random() < 0.3
    params = "".join(f", {k}={v}" for k, v in spec.params.items())
    ins = "".join(f", {x}=torch.tensor({v})" for x, v in docs.items())
    bias = scored and "input bias" in spec.text
    if bias:
        ins += f", bias=torch.randn(({Hq}, 7), generator=torch.Generator().manual_seed(1))"
    seqs = {}   # per-sequence lengths, offsets and valid keys (LANGUAGE.md section 10)
    if not spec.grid and rng.random() < 0.5:
        seqs["q_lens"] = [rng.randint(0, q_len) for _ in range(B)]
        seqs["kv_lens"] = [rng.randint(0, kv_len) for _ in range(B)]
        if rng.random() < 0.5:
            seqs["kv_offset"] = [rng.randint(0, 30) for _ in range(B)]
            seqs["q_offset"] = [o + lk - lq + rng.randint(-2, 2) for o, lk, lq in
                                zip(seqs["kv_offset"], seqs["kv_lens"], seqs["q_lens"])]
        if rng.random() < 0.5:
            seqs["kv_valid"] = [[rng.random() < 0.8 for _ in range(kv_len)] for _ in range(B)]
    ins += "".join(f", {n}=torch.tensor({v})" for n, v in seqs.items())
    repro = (f"m = maskc.compile({spec.text!r}{params}); g = torch.Generator().manual_seed(0)\n"
             f"q = torch.randn(({B}, {Hq}, {q_len}, {D}), generator=g); "
             f"k = torch.randn(({B}, {Hkv}, {kv_len}, {D}), generator=g); "
             f"v = torch.randn(({B}, {Hkv}, {kv_len}, {Dv}), generator=g)\n"
             f"for b in ('reference', 'flex-eager', 'triton'): "
             f"m.attention(q, k, v, backend=b, return_lse={lse}{ins})")

    def run():
        try:
            m = maskc.compile(spec.text, **spec.params)
        except maskc.MaskError:
            return "maskerror"
        g = torch.Generator().manual_seed(0)
        q = torch.randn((B, Hq, q_len, D), generator=g)
        k = torch.randn((B, Hkv, kv_len, D), generator=g)
        v = torch.randn((B, Hkv, kv_len, Dv), generator=g)
        outs = {}
        for b in ("reference", "flex-eager", "triton"):
            try:
                with w.quiet():
                    extra = {"bias": torch.randn((Hq, 7), generator=torch.Generator()
                                                 .manual_seed(1))} if bias else {}
                    outs[b] = m.attention(q, k, v, backend=b, return_lse=lse, **extra,
                                          **{x: torch.tensor(d) for x, d in docs.items()},
                                          **{x: torch.tensor(d) for x, d in seqs.items()})
            except maskc.MaskError as err:
                outs[b] = type(err).__name__ + ": " + str(err).splitlines()[0]
                if b == "flex-eager" and "FlexAttention with per-sequence lengths does " \
                        "not take" in outs[b]:
                    del outs[b]   # a documented gap of that backend, not a disagreement
        kinds = {b: isinstance(o, str) for b, o in outs.items()}
        if all(kinds.values()):
            names = {o.split(":")[0] for o in outs.values()}
            if len(names) > 1:
                raise Mismatch(f"backends raise different errors: {outs}")
            return "maskerror"
        if any(kinds.values()):
            raise Mismatch("backends disagree on errors: " +
                           ", ".join(f"{b}: {o if isinstance(o, str) else 'ok'}"
                                     for b, o in outs.items()))
        ref = outs["reference"]
        for b in ("flex-eager", "triton"):
            if b not in outs:
                continue
            got = outs[b]
            pairs = zip(ref, got) if lse else [(ref, got)]
            for name, (x, y) in zip(("out", "lse"), pairs):
                if x.shape != y.shape:
                    raise Mismatch(f"{b} {name} shape {tuple(y.shape)} != {tuple(x.shape)}")
                x64, y64 = x.double(), y.double()
                if not torch.allclose(x64, y64, atol=1e-5, rtol=1e-5, equal_nan=False):
                    fin = torch.isfinite(x64) & torch.isfinite(y64)
                    err = (x64 - y64)[fin].abs().max().item() if fin.any() else float("nan")
                    raise Mismatch(f"{b} {name} differs from reference by {err:.3g} "
                                   f"(or in inf/nan placement)")
        return "ok"
    return repro, run


# ================================================================ (f) block maps vs dense tiles

def case_blocks(rng: random.Random, w: "Worker"):
    import maskc
    spec = gen_spec(rng, random_ok=True)
    q_len, kv_len, heads, docs = gen_sizes(rng, spec, max_len=40)
    bq, bk = rng.randint(1, 12), rng.randint(1, 12)
    batched = bool(docs) and rng.random() < 0.3
    if batched:
        docs = {x: [v, sorted(v)] for x, v in docs.items()}
    params = "".join(f", {k}={v}" for k, v in spec.params.items())
    lens = "" if spec.grid else f"{q_len}, {kv_len}, "
    ins = "".join(f", {x}=np.array({v})" for x, v in docs.items())
    repro = (f"m = maskc.compile({spec.text!r}{params})\n"
             f"bm = m.block_map({lens}heads={heads}, block_q={bq}, block_k={bk}{ins}); "
             f"d = m.dense({lens}heads={heads}{ins})")

    def run():
        try:
            m = maskc.compile(spec.text, **spec.params)
            kw = {x: np.array(v, dtype=np.int64) for x, v in docs.items()}
            ln = () if spec.grid else (q_len, kv_len)
            dense = m.dense(*ln, heads=heads, **kw)
            states = m.block_map(*ln, heads=heads, block_q=bq, block_k=bk, **kw).states()
        except maskc.MaskError:
            return "maskerror"
        if spec.fn is not None and not batched:
            try:
                want = spec.expected(q_len, kv_len, heads, docs)
            except Expected as why:
                raise Mismatch(f"dense and block_map accepted a spec that must be refused ({why})")
            if not np.array_equal(dense, want):
                raise Mismatch("dense differs from the brute-force evaluator")
        d = dense if dense.ndim == 4 else dense[None]
        Bn, H, Lq, Lk = d.shape
        nq, nk = -(-Lq // bq), -(-Lk // bk)
        if states.shape != (Bn, H, nq, nk):
            raise Mismatch(f"states shape {states.shape} != {(Bn, H, nq, nk)}")
        for i in range(nq):
            for j in range(nk):
                tile = d[:, :, i * bq:(i + 1) * bq, j * bk:(j + 1) * bk]
                allk, anyk = tile.all(axis=(2, 3)), tile.any(axis=(2, 3))
                st = states[:, :, i, j]
                if ((st == 2) & ~allk).any():
                    raise Mismatch(f"tile ({i}, {j}) called full but not all kept")
                if ((st == 0) & anyk).any():
                    raise Mismatch(f"tile ({i}, {j}) called empty but some kept")
        return "ok"
    return repro, run


# ================================================================ (g) size probes

PROBE_SPECS = ["mask m = causal", "mask m = window(3, dilation = 2)",
               "mask m = where (p - k) % 3 == 0 and k <= p", "mask m = blocks(1, random(1))",
               "mask m = heads { 0: causal, _: window(2) }", "mask m(input doc) = causal & same(doc)",
               "mask m = causal & (window(before = 7, after = 0) | strided(8))",
               "mask m(input doc) = within(doc, causal & window(before = 3, after = 0))",
               "mask m = blocks(4, window(1) | global([0]) | random(2, seed = 7))"]


def gen_probe(rng: random.Random):
    """``(spec, limit or None, call, (heads, q, k), over)``: one call near the dense limit."""
    small = rng.random() < 0.7  # with a lowered limit: cheap, many
    limit = rng.choice((1000, 4096, 65536, 1 << 20)) if small else 1 << 28
    spec = rng.choice(PROBE_SPECS)
    over = rng.random() < 0.5
    heads = rng.choice((1, 1, 2, 4))
    per_head = limit // heads
    shape = rng.choice(("square", "row", "col"))
    if shape == "square":
        q = int(np.sqrt(per_head))
        k = per_head // q
    elif shape == "row":
        q, k = 1, per_head
    else:
        q, k = per_head, 1
    if over:
        k += 1
    call = rng.choice(("dense", "dense", "dense", "block_map", "attention") if small else
                      ("dense", "dense", "block_map"))
    return spec, (None if limit == 1 << 28 else limit), call, (heads, q, k), over


def case_sizes(rng: random.Random, w: "Worker"):
    import maskc
    import torch
    spec, limit, call, (heads, q_len, kv_len), over = gen_probe(rng)
    doc = "doc" in spec
    # NOTE: int8 ids (2 documents): the input itself must not take the 4 GiB at 2**28 keys
    # (built by np.repeat: an arange and a comparison took 3.5 s and 1.5 GiB at 2**28 keys,
    # which on a loaded 2-core CI machine ran past the watchdog before maskc was called)
    ins = (f", doc=np.repeat(np.array([0, 1], np.int8), [{kv_len // 2}, {kv_len - kv_len // 2}])"
           if doc else "")
    stmt = {"dense": f"m.dense({q_len}, {kv_len}, {heads}{ins})",
            "block_map": f"m.block_map({q_len}, {kv_len}, {heads}, block_q=128{ins})",
            "attention": (f"m.attention(torch.zeros(1, {heads}, {q_len}, 1), "
                          f"torch.zeros(1, 1, {kv_len}, 1), torch.zeros(1, 1, {kv_len}, 1), "
                          f"backend='reference'{ins})")}[call]
    setl = f"maskc.set_dense_limit({limit}); " if limit else ""
    repro = f"{setl}m = maskc.compile({spec!r}); {stmt}  # {heads * q_len * kv_len:,} elements"

    def run():
        ns = {"maskc": maskc, "torch": torch, "np": np}
        try:
            if limit:
                maskc.set_dense_limit(limit)
            ns["m"] = w.compiled(spec)
            try:
                eval(stmt, ns)
            except maskc.MaskSizeError:
                if call == "block_map" or over:
                    return "maskerror"
                raise Mismatch("a size within the dense limit was refused")
            except maskc.MaskError:
                return "maskerror"
            if over and call in ("dense", "attention"):
                raise Mismatch("a size over the dense limit was accepted")
            return "ok"
        finally:
            maskc.set_dense_limit(None)
    return repro, run


CASES = {"spec": case_spec, "mutate": case_mutate, "api": case_api, "cli": case_cli,
         "backends": case_backends, "blocks": case_blocks, "sizes": case_sizes}


def make_case(kind: str, seed: int, index: int):
    """``(repro, run)`` of case ``index`` of ``kind``; generation is deterministic."""
    rng = random.Random(f"{seed}/{kind}/{index}")
    return CASES[kind](rng, _WORKER)


# ================================================================ the worker process

class Worker:
    """State a worker keeps across cases: compiled masks, examples, a scratch folder."""

    def __init__(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="maskc-fuzz-"))
        self._examples = None
        self._masks: dict = {}

    @property
    def examples(self):
        if self._examples is None:
            self._examples = _examples()
        return self._examples

    @staticmethod
    def rng_flag(rng, p):
        return rng.random() < p

    def compiled(self, spec: str):
        import maskc
        if spec not in self._masks:
            if len(self._masks) > 64:
                self._masks.clear()
            self._masks[spec] = maskc.compile(spec)
        return self._masks[spec]

    @contextlib.contextmanager
    def quiet(self):
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield

    def cli(self, argv) -> str:
        import maskc.cli
        with self.quiet():
            try:
                rc = maskc.cli.main(argv)
            except SystemExit:
                return "maskerror"
        return "ok" if rc == 0 else "maskerror"

    def check_attention(self, ns, out):
        """A call that succeeded matches attention computed here from ``m.dense`` in float64."""
        import torch
        m, q, k, v = ns["m"], ns["_q"], ns["_k"], ns["_v"]
        lse = isinstance(out, tuple)
        o = out[0] if lse else out
        if not isinstance(o, torch.Tensor) or o.shape[:-1] != q.shape[:-1]:
            raise Mismatch(f"attention returned {type(o).__name__} "
                           f"{tuple(getattr(o, 'shape', ()))} for q {tuple(q.shape)}")
        call = ns["_call"]
        kw = {"doc": call["doc"]} if "doc" in call else {}
        scale = call.get("scale")
        if call.get("backend") not in ("flex-eager", "triton"):
            return
        serving = ("q_lens", "kv_lens", "q_offset", "kv_offset", "kv_valid", "page_table")
        if any(a in call for a in serving):
            # NOTE: per-sequence calls against the float64 reference on the same arguments
            # (itself checked against per-sequence formulas in tests/test_sequences.py); the
            # dense attention below knows nothing of lengths, offsets or valid keys
            ref = m.attention(q.double(), k.double(), v.double(),
                              **{**call, "backend": "reference", "return_lse": False})
            tol = {torch.float64: 1e-8, torch.float32: 1e-4}.get(q.dtype, 5e-2)
            err = (o.double() - ref).abs().max().item()
            if not err <= tol:
                raise Mismatch(f"{q.dtype} per-sequence attention differs from the float64 "
                               f"reference by {err:.3g} (tol {tol})")
            return
        ln = () if m.grid else (q.shape[2], k.shape[2])
        dense = torch.from_numpy(np.asarray(m.dense(*ln, heads=q.shape[1], **kw)))
        if dense.ndim == 3:
            dense = dense[None]
        rep = q.shape[1] // k.shape[1]
        kk = k.double().repeat_interleave(rep, 1)
        vv = v.double().repeat_interleave(rep, 1)
        s = (q.double() @ kk.transpose(-1, -2)) * (q.shape[-1] ** -0.5 if scale is None
                                                   else float(scale))
        s = s.masked_fill(~dense, float("-inf"))
        p = torch.softmax(s, -1).nan_to_num(0.0)
        want = p @ vv
        tol = {torch.float64: 1e-8, torch.float32: 1e-4}.get(q.dtype, 5e-2)
        err = (o.double() - want).abs().max().item()
        if not err <= tol:
            raise Mismatch(f"{q.dtype} attention differs from float64 by {err:.3g} (tol {tol})")


_WORKER = Worker()


def _location(tb) -> str:
    frames = traceback.extract_tb(tb)
    here = Path(__file__).resolve()
    inside = [f for f in frames if str(ROOT) in f.filename and Path(f.filename).resolve() != here]
    f = (inside or frames)[-1]
    name = os.path.relpath(f.filename, ROOT) if str(ROOT) in f.filename else f.filename
    return f"{name}:{f.lineno} in {f.name}"


def _is_memory(err: BaseException) -> bool:
    if isinstance(err, MemoryError):
        return True
    text = str(err)
    return any(s in text for s in ("can't allocate memory", "Unable to allocate", "bad_alloc",
                                   "out of memory", "not enough memory"))


def run_case(kind: str, seed: int, index: int) -> dict:
    """Run one case here; a dict with ``status`` (one of :data:`STATUSES`), ``key``, ``detail``."""
    t0 = time.perf_counter()
    repro = None
    try:
        repro, run = make_case(kind, seed, index)
        status = run()
        res = {"status": status}
    except Mismatch as err:
        res = {"status": "mismatch", "key": f"mismatch in {kind}: {str(err)[:60]}",
               "detail": str(err)}
    except BaseException as err:  # noqa: BLE001 - everything but a MaskError is a finding
        import maskc
        if isinstance(err, maskc.MaskError):
            res = {"status": "maskerror", "msg": f"{type(err).__name__}: "
                   + re.sub(r"^.*?error: ", "", str(err).splitlines()[0])[:90]}
        elif isinstance(err, KeyboardInterrupt):
            raise
        else:
            status = "memory" if _is_memory(err) else "exception"
            res = {"status": status,
                   "key": f"{type(err).__name__} at {_location(err.__traceback__)}",
                   "detail": f"{type(err).__name__}: {str(err)[:300]}"}
    res.update(kind=kind, index=index, seconds=time.perf_counter() - t0)
    if res["status"] not in ("ok", "maskerror"):
        res["repro"] = repro
    return res


def worker_main() -> None:
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # library output (and C-level prints) never reaches the protocol
    import warnings
    warnings.simplefilter("ignore")
    import maskc  # noqa: F401
    import torch
    torch.set_num_threads(1)
    import maskc.backends.flex  # noqa: F401
    import maskc.backends.triton  # noqa: F401
    proto.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        job = json.loads(line)
        proto.write(json.dumps(run_case(job["kind"], job["seed"], job["index"])) + "\n")


# ================================================================ the driver

@dataclass
class Summary:
    rows: dict = field(default_factory=lambda: {k: dict.fromkeys(STATUSES, 0) | {"cases": 0,
                                                "seconds": 0.0} for k in KINDS})
    failures: dict = field(default_factory=dict)  # key -> (count, first result)
    errors: dict = field(default_factory=dict)  # (kind, MaskError message shape) -> count
    wall: float = 0.0

    def add(self, res: dict) -> None:
        row = self.rows[res["kind"]]
        row["cases"] += 1
        row[res["status"]] += 1
        row["seconds"] += res["seconds"]
        if res.get("msg"):
            shape = (res["kind"], re.sub(r"\d+", "N", res["msg"])[:70])
            self.errors[shape] = self.errors.get(shape, 0) + 1
        if res["status"] not in ("ok", "maskerror"):
            key = res.get("key") or res["status"]
            n, first = self.failures.get(key, (0, res))
            self.failures[key] = (n + 1, first)

    @property
    def n_failures(self) -> int:
        return sum(r[s] for r in self.rows.values() for s in ("exception", "hang", "memory",
                                                               "mismatch"))

    def table(self) -> str:
        head = ("| kind | cases | ok | MaskError | other exceptions | hangs (>10 s) | "
                "memory (> 4 GiB) | mismatches | seconds |")
        lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        tot = dict.fromkeys(STATUSES, 0) | {"cases": 0, "seconds": 0.0}
        for kind, r in self.rows.items():
            if not r["cases"]:
                continue
            for k in tot:
                tot[k] += r[k]
            lines.append(_row(kind, r))
        lines.append(_row("**total**", tot))
        return "\n".join(lines)

    def top_errors(self, n: int = 6) -> str:
        """The most frequent MaskError messages per kind (to see what the generators hit)."""
        out = []
        for kind in KINDS:
            mine = sorted(((c, m) for (k, m), c in self.errors.items() if k == kind), reverse=True)
            out += [f"{kind:>8} {c:6,}  {m}" for c, m in mine[:n]]
        return "\n".join(out)

    def report(self) -> str:
        out = [self.table(), f"\nwall time {self.wall:.0f} s; "
               f"{self.n_failures} failing cases in {len(self.failures)} distinct classes"]
        for key, (n, res) in sorted(self.failures.items(), key=lambda kv: -kv[1][0]):
            out.append(f"\n--- [{res['status']}] {key}  ({n} case{'s' if n > 1 else ''}; first: "
                       f"{res['kind']} #{res['index']})\n{res.get('detail', '')}\n"
                       f"reproducer:\n{res.get('repro')}")
        return "\n".join(out)


def _row(kind, r) -> str:
    return (f"| {kind} | {r['cases']:,} | {r['ok']:,} | {r['maskerror']:,} | {r['exception']:,} | "
            f"{r['hang']:,} | {r['memory']:,} | {r['mismatch']:,} | {r['seconds']:,.0f} |")


def split_cases(total: int, kinds=KINDS) -> dict[str, int]:
    """Cases per kind for ``total`` cases, by :data:`WEIGHTS` (at least one per kind)."""
    w = {k: WEIGHTS[k] for k in kinds}
    s = sum(w.values())
    out = {k: max(1, int(total * v / s)) for k, v in w.items()}
    out[max(w, key=w.get)] += max(0, total - sum(out.values()))
    return out


def watchdog_s(job) -> float:
    """The watchdog of one case: :data:`WATCHDOG_S`, or three times that per mask for
    ``maskc test``, which runs each mask of a file in turn, four shapes each at lengths that
    fit the mask, and prints a line per case as it goes (measured: 6-12 s per example mask
    through the interpreter, up to 37 s for a file of several)."""
    if job["kind"] != "cli":
        return WATCHDOG_S
    rng = random.Random(f"{job['seed']}/cli/{job['index']}")  # as make_case draws it
    argv = gen_cli(rng, [f"examples/{n}" for n, _ in _WORKER.examples])
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] != "test":
        return WATCHDOG_S
    if "--name" in argv or not argv[1].startswith("examples/"):
        return 3 * WATCHDOG_S
    masks = len(re.findall(r"^mask ", (ROOT / argv[1]).read_text(), flags=re.M))
    return 3 * WATCHDOG_S * max(1, masks)


class _Proc:
    def __init__(self, log_dir: Path, n: int):
        env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                   PYTHONHASHSEED="0")
        env.setdefault("MASKC_LINT", "1")
        self.log = log_dir / f"worker-{n}.log"
        self.p = subprocess.Popen([sys.executable, "-m", "tests.fuzz", "--worker"], cwd=ROOT,
                                  env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=open(self.log, "wb"), text=True, bufsize=1)
        self.buf = ""
        self.job = None
        self.deadline = time.monotonic() + 180  # imports
        self.ready = False

    def send(self, job):
        self.job = job
        self.deadline = time.monotonic() + watchdog_s(job)
        self.p.stdin.write(json.dumps(job) + "\n")
        self.p.stdin.flush()

    def lines(self):
        data = os.read(self.p.stdout.fileno(), 1 << 16).decode()
        if not data:
            return None
        self.buf += data
        *done, self.buf = self.buf.split("\n")
        return [json.loads(x) for x in done if x]

    def kill(self):
        self.p.kill()
        self.p.wait()

    def tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-600:]
        except OSError:
            return ""


def run(counts: dict[str, int], jobs: int = 2, seed: int = 0, progress: bool = False) -> Summary:
    """Run ``counts[kind]`` cases of each kind on ``jobs`` workers; the :class:`Summary`."""
    todo = [{"kind": k, "seed": seed, "index": i} for k, n in counts.items() for i in range(n)]
    random.Random(seed).shuffle(todo)  # mix kinds so every worker sees all of them
    todo.reverse()
    summary = Summary()
    t0 = time.monotonic()
    log_dir = Path(tempfile.mkdtemp(prefix="maskc-fuzz-logs-"))
    procs = [_Proc(log_dir, i) for i in range(jobs)]
    spawned = jobs
    done = 0

    def fail(pr, status, detail):
        job = pr.job
        repro, _ = make_case(job["kind"], job["seed"], job["index"])
        summary.add({**job, "status": status, "seconds": WATCHDOG_S if status == "hang" else 0.0,
                     "key": f"{status} in {job['kind']}", "detail": detail, "repro": repro})

    while todo or any(p.job for p in procs):
        for i, pr in enumerate(procs):
            if pr.ready and pr.job is None and todo:
                pr.send(todo.pop())
        fds = {pr.p.stdout.fileno(): pr for pr in procs if pr.job or not pr.ready}
        timeout = max(0.0, min((pr.deadline for pr in fds.values()), default=t0) - time.monotonic())
        ready, _, _ = select.select(list(fds), [], [], timeout)
        now = time.monotonic()
        for i, pr in enumerate(procs):
            replace_it = False
            if pr.p.stdout.fileno() in ready:
                msgs = pr.lines()
                if msgs is None:  # the worker died
                    if pr.job:
                        fail(pr, "exception", f"worker died (exit {pr.p.wait()}): {pr.tail()}")
                        done += 1
                    elif not pr.ready:
                        raise RuntimeError(f"fuzz worker failed to start:\n{pr.tail()}")
                    replace_it = True
                else:
                    for msg in msgs:
                        if msg.get("ready"):
                            pr.ready = True
                        else:
                            summary.add(msg)
                            pr.job = None
                            done += 1
            elif (pr.job or not pr.ready) and now > pr.deadline:
                if not pr.ready:
                    raise RuntimeError(f"fuzz worker did not start:\n{pr.tail()}")
                fail(pr, "hang", f"no result within {WATCHDOG_S:.0f} s")
                done += 1
                pr.kill()
                replace_it = True
            if replace_it:
                procs[i] = _Proc(log_dir, spawned)
                spawned += 1
        if progress and done and done % 500 == 0:
            print(f"  {done:,} cases, {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
    for pr in procs:
        pr.p.stdin.close()
        pr.p.wait(timeout=30)
    summary.wall = time.monotonic() - t0
    return summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=1000, help="total cases, split by kind")
    ap.add_argument("--jobs", type=int, default=2, help="worker processes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kinds", nargs="+", default=list(KINDS),
                    help="kinds to run (names or letters a-g): " + ", ".join(KINDS))
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--errors", action="store_true",
                    help="also list the most frequent MaskError messages per kind")
    ap.add_argument("--one", metavar="KIND:INDEX", help="run one case here and print it")
    args = ap.parse_args(argv)
    if args.worker:
        worker_main()
        return 0
    kinds = [LETTERS.get(k, k) for k in args.kinds]
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        ap.error(f"unknown kind {bad[0]!r}; kinds: {', '.join(KINDS)}")
    if args.one:
        kind, _, index = args.one.partition(":")
        os.environ.setdefault("TRITON_INTERPRET", "1")
        res = run_case(LETTERS.get(kind, kind), args.seed, int(index))
        print(json.dumps(res, indent=1))
        return 0 if res["status"] in ("ok", "maskerror") else 1
    import platform
    counts = split_cases(args.cases, kinds)
    print(f"maskc fuzz: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}; command: python -m tests.fuzz "
          f"{' '.join(argv if argv is not None else sys.argv[1:])}")
    print("cases per kind: " + ", ".join(f"{k} {n:,}" for k, n in counts.items()), flush=True)
    summary = run(counts, args.jobs, args.seed, progress=True)
    print(summary.report())
    if args.errors:
        print("\nmost frequent MaskErrors:\n" + summary.top_errors())
    return 1 if summary.n_failures else 0


if __name__ == "__main__":
    sys.exit(main())
