"""A memoizing emitter of straight-line source, shared by the Triton kernels and the
FlexAttention ``mask_mod`` (one way to name, fold and share values in generated code).

Values are Python constants (``int``/``bool``, folded at render time) or source text.
:meth:`Emitter.let` binds an expression to a name once per scope: the expression's text,
made of names that are bound once each, is its structural key, so asking twice for
``P - K`` gives the same name and writes one line. Names come from a deterministic
:class:`Namespace` that takes a hint saying what the value is (``qy``, ``doc_k``) and adds
``_2``, ``_3``... on a clash: equal IR gives byte-equal source. The arithmetic helpers fold
constants (``x % 1`` is 0, ``x // 1`` and ``x + 0`` are ``x``) and spell operators through
:class:`maskc.ir.Op` and a :class:`Dialect`.
"""

from __future__ import annotations

import keyword
from contextlib import contextmanager
from dataclasses import dataclass

from maskc.ir import Op

__all__ = ["Namespace", "Dialect", "TRITON", "TORCH", "Emitter", "Expr"]

Expr = "int | bool | str"


class Namespace:
    """Deterministic names: the hint if free, else ``hint_2``, ``hint_3``, ... (fx's
    ``_Namespace``). ``reserved`` names (parameters, the template's own) are never given."""

    def __init__(self, reserved=()):
        self._used = set(reserved)

    def fresh(self, hint: str) -> str:
        base = hint if hint.isidentifier() and not keyword.iskeyword(hint) else "t"
        name, i = base, 1
        while name in self._used:
            i += 1
            name = f"{base}_{i}"
        self._used.add(name)
        return name


@dataclass(frozen=True)
class Dialect:
    """How one target spells what :class:`Op` does not: min/max against a tensor or a
    constant, ``where``, ``abs``, and floor ``//``/``%`` on possibly negative values."""

    name: str
    minimum: str          # two tensors
    maximum: str
    min_const: str        # a tensor and a Python int
    max_const: str
    where: str
    abs: str
    floordiv: str         # Python's floor rule (the operand may be negative)
    mod: str

    def op(self, op: Op) -> str:
        return getattr(op, self.name)


TRITON = Dialect("triton", "tl.minimum({}, {})", "tl.maximum({}, {})", "tl.minimum({}, {})",
                 "tl.maximum({}, {})", "tl.where({}, {}, {})", "tl.abs({})",
                 "_floordiv({}, {})", "_mod({}, {})")
# NOTE: torch.minimum/maximum take tensors only; a constant bound is a clamp. On integer
# tensors torch's // floors and % takes the divisor's sign, as Python does.
TORCH = Dialect("torch", "torch.minimum({}, {})", "torch.maximum({}, {})", "{}.clamp(max={})",
                "{}.clamp(min={})", "torch.where({}, {}, {})", "{}.abs()", "{} // {}",
                "{} % {}")


def _atomic(s: str) -> bool:
    """No operator outside brackets: a name, a number, a call, a subscript, ``(...)``."""
    depth = 0
    for ch in s:
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif depth == 0 and not (ch.isalnum() or ch in "_."):
            return False
    return bool(s)


_PREC = {Op.OR: 2, Op.AND: 3, Op.ADD: 4, Op.SUB: 4, Op.MUL: 5, Op.FLOORDIV: 5, Op.MOD: 5,
         Op.NEG: 6, Op.NOT: 6}   # Python's binding powers; comparisons are 1


def _prec(s: str) -> int:
    """The binding power of the loosest operator of ``s`` outside brackets (9: none)."""
    depth, low, i = 0, 9, 0
    while i < len(s):
        ch = s[i]
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif depth == 0:
            two = s[i:i + 2]
            if two in ("<=", ">=", "==", "!=") or ch in "<>":
                low, i = min(low, 1), i + len(two) - 1 if two in ("<=", ">=", "==", "!=") else i
            elif ch == "|":
                low = min(low, 2)
            elif ch == "&":
                low = min(low, 3)
            elif ch in "+-" and i > 0 and s[i - 1] == " ":
                low = min(low, 4)
            elif ch in "*%/" and i > 0 and s[i - 1] in " /":
                low = min(low, 5)
            elif ch in "-~" and i == 0:
                low = min(low, 6)
        i += 1
    return low


def operand(x, prec: int, right: bool = False) -> str:
    """``x`` as an operand of an operator of binding power ``prec`` (parenthesized if needed)."""
    s = x if isinstance(x, str) else w(x)
    p = _prec(s)
    return f"({s})" if p < prec or (right and p == prec and prec > 1) else s


def w(x) -> str:
    """``x`` as an operand: constants and atoms as they are, anything else in parentheses."""
    if isinstance(x, bool):
        return "True" if x else "False"
    if isinstance(x, int):
        return str(x)  # NOTE: unary minus binds tighter than every binary operator used
    return x if _atomic(x) else f"({x})"


def _unwrap(s: str) -> str:
    """``s`` without parentheses that enclose all of it."""
    while s.startswith("(") and _close(s) == len(s) - 1:
        s = s[1:-1]
    return s


def _split(x, sep: str) -> list:
    """The operands of a top-level chain of ``sep`` in ``x`` (``[x]`` if there is none)."""
    if not isinstance(x, str) or _prec(x) != {" & ": 3, " | ": 2}[sep]:
        return [x]
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(x):
        depth += 1 if ch in "([" else -1 if ch in ")]" else 0
        if depth == 0 and x.startswith(sep, i):
            parts.append(_unwrap(x[start:i]))
            start = i + len(sep)
    return parts + [_unwrap(x[start:])]


def _close(s: str) -> int:
    depth = 0
    for i, ch in enumerate(s):
        depth += 1 if ch in "([" else -1 if ch in ")]" else 0
        if depth == 0:
            return i
    return -1


class Emitter:
    """Straight-line statements of one generated function, with scopes for ``if`` blocks.

    A value bound inside :meth:`block` is visible there only (a later block binds it again,
    under the same name); values of enclosing scopes are reused.
    """

    def __init__(self, dialect: Dialect, reserved=()):
        self.d = dialect
        self.ns = Namespace(reserved)
        self.lines: list[str] = []
        self._scopes: list[dict[str, str]] = [{}]
        self._names: dict[str, str] = {}   # key -> name, for the whole function
        self._note: str | None = None

    # ------------------------------------------------------------ statements
    def note(self, text: str) -> None:
        """A ``# comment`` written before the next line (dropped if none follows)."""
        self._note = text

    def line(self, text: str) -> None:
        if self._note is not None:
            self.lines.append(f"# {self._note}")
            self._note = None
        self.lines.append(text)

    def let(self, expr, hint: str):
        """``expr`` bound to a name, once per scope; constants and atoms stay as they are."""
        if not isinstance(expr, str) or expr.isidentifier() or expr.isdigit():
            return expr
        key = _unwrap(expr)
        for scope in reversed(self._scopes):
            if key in scope:
                return scope[key]
        name = self._names.get(key) or self.ns.fresh(hint)
        self._names[key] = name
        self._scopes[-1][key] = name
        self.line(f"{name} = {key}")
        return name

    @contextmanager
    def block(self):
        """A nested scope; yields the list its lines go to (indent them where they go)."""
        outer, note = self.lines, self._note
        self.lines, self._note = [], None
        self._scopes.append({})
        try:
            yield self.lines
        finally:
            self._scopes.pop()
            self.lines, self._note = outer, note

    # ------------------------------------------------------------ arithmetic
    def bin(self, op: Op, a, b):
        """``a op b`` for an :class:`Op`, folded when it can be (Python's semantics)."""
        fold = _FOLDS.get(op)
        out = fold(self, a, b) if fold else None
        if out is not None:
            return out
        if not isinstance(a, str) and not isinstance(b, str):
            return _PY[op](a, b)
        fmt = self.d.op(op)
        if fmt[0].isalpha() or fmt[0] == "_":  # a call: its arguments need no parentheses
            return fmt.format(_unwrap(w(a)), _unwrap(w(b)))
        prec = _PREC.get(op, 1)
        return fmt.format(operand(a, prec), operand(b, prec, right=True))

    def add(self, a, b):
        return self.bin(Op.ADD, a, b)

    def sub(self, a, b):
        return self.bin(Op.SUB, a, b)

    def mul(self, a, b):
        return self.bin(Op.MUL, a, b)

    def floordiv(self, a, c: int, nonneg: bool):
        """``a // c`` (``c > 0``): the plain operator when ``a >= 0``, else the floor rule."""
        if c == 1:
            return a
        if not isinstance(a, str):
            return a // c
        return f"{operand(a, 5)} // {c}" if nonneg else self.d.floordiv.format(a, c)

    def mod(self, a, c: int, nonneg: bool):
        if c == 1:
            return 0
        if not isinstance(a, str):
            return a % c
        return f"{operand(a, 5)} % {c}" if nonneg else self.d.mod.format(a, c)

    def cmp(self, op: Op, a, b):
        return self.bin(op, a, b)

    def and_(self, *xs):
        xs = [p for x in xs if x is not True for p in _split(x, " & ")]
        if any(x is False for x in xs):
            return False
        xs = list(dict.fromkeys(xs))
        return xs[0] if len(xs) == 1 else True if not xs else " & ".join(operand(x, 3) for x in xs)

    def or_(self, *xs):
        xs = [p for x in xs if x is not False for p in _split(x, " | ")]
        if any(x is True for x in xs):
            return True
        xs = list(dict.fromkeys(xs))
        return xs[0] if len(xs) == 1 else False if not xs else " | ".join(operand(x, 4) for x in xs)

    def not_(self, x):
        return (not x) if isinstance(x, bool) else self.d.op(Op.NOT).format(operand(x, 7))

    def neg(self, x):
        return -x if not isinstance(x, str) else self.d.op(Op.NEG).format(operand(x, 7))

    def minimum(self, a, b):
        if not isinstance(a, str) and not isinstance(b, str):
            return min(a, b)
        if a == b:
            return a
        if isinstance(a, str) and isinstance(b, str):
            return self.d.minimum.format(a, b)
        t, c = (a, b) if isinstance(a, str) else (b, a)
        return self.d.min_const.format(w(t) if self.d is TORCH else t, c)

    def maximum(self, a, b):
        if not isinstance(a, str) and not isinstance(b, str):
            return max(a, b)
        if a == b:
            return a
        if isinstance(a, str) and isinstance(b, str):
            return self.d.maximum.format(a, b)
        t, c = (a, b) if isinstance(a, str) else (b, a)
        return self.d.max_const.format(w(t) if self.d is TORCH else t, c)

    def clamp(self, x, lo, hi):
        """``min(max(x, lo), hi)``; one ``clamp`` call in torch when both bounds are ints."""
        if self.d is TORCH and isinstance(x, str) and isinstance(lo, int) and \
                isinstance(hi, int) and not isinstance(lo, bool):
            return f"{w(x)}.clamp({lo}, {hi})"
        return self.minimum(self.maximum(x, lo), hi)

    def where(self, c, a, b):
        if isinstance(c, bool):
            return a if c else b
        if a == b:
            return a
        return self.d.where.format(c, a, b)

    def abs(self, x):
        return abs(x) if not isinstance(x, str) else self.d.abs.format(w(x))


def _fold_add(e, a, b):
    if b == 0 and not isinstance(b, str):
        return a
    if a == 0 and not isinstance(a, str):
        return b
    if isinstance(b, int) and not isinstance(b, bool) and b < 0 and isinstance(a, str):
        return e.sub(a, -b)
    return None


def _fold_sub(e, a, b):
    if b == 0 and not isinstance(b, str):
        return a
    if isinstance(a, str) and a == b:
        return 0
    if isinstance(b, int) and not isinstance(b, bool) and b < 0 and isinstance(a, str):
        return e.add(a, -b)
    return None


def _fold_mul(e, a, b):
    for x, y in ((a, b), (b, a)):
        if not isinstance(x, str) and x == 1:
            return y
    return None


def _fold_div(e, a, b):
    return e.floordiv(a, b, False) if isinstance(b, int) else None


def _fold_mod(e, a, b):
    return e.mod(a, b, False) if isinstance(b, int) else None


_FOLDS = {Op.ADD: _fold_add, Op.SUB: _fold_sub, Op.MUL: _fold_mul, Op.FLOORDIV: _fold_div,
          Op.MOD: _fold_mod}

import operator as _operator  # noqa: E402

_PY = {op: getattr(_operator, op.python) for op in Op}
