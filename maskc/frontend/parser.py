"""Parse `.mask` text into surface syntax (:mod:`maskc.frontend.syntax`).

The grammar lives in ``grammar/mask.lark`` and is loaded once. A Lark ``Transformer``
builds syntax nodes with spans directly; no ``lark.Tree`` leaves this module, and every
Lark exception becomes a located :class:`~maskc.errors.MaskSyntaxError`.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from lark import Lark, Token, Transformer_NonRecursive, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from maskc.frontend import syntax as S
from maskc.errors import MaskError, MaskSizeError, MaskSyntaxError, MaskValueError, Source, Span

__all__ = ["grammar_path", "lark_parser", "parse", "parse_expr"]


def grammar_path() -> Path:
    """Where ``mask.lark`` is: inside the package when installed, beside it in a checkout."""
    here = Path(__file__).resolve().parent.parent  # the maskc package
    for candidate in (here / "grammar" / "mask.lark", here.parent / "grammar" / "mask.lark"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("maskc's grammar file mask.lark is missing from the installation")


@functools.cache
def lark_parser(start: str = "start") -> Lark:
    """The LALR parser for ``start`` (``"start"`` for files, ``"expr"`` for one value)."""
    return Lark.open(str(grammar_path()), parser="lalr", start=start, propagate_positions=True,
                     maybe_placeholders=True)


# Human names for the terminals Lark reports as expected.
_TOKEN_NAMES = {
    "NAME": "a name", "INT": "an integer", "CMP": "a comparison", "LPAR": "'('", "RPAR": "')'",
    "LSQB": "'['", "RSQB": "']'", "LBRACE": "'{'", "RBRACE": "'}'", "COMMA": "','",
    "EQUAL": "'='", "COLON": "':'", "VBAR": "'|'", "AMPERSAND": "'&'", "PLUS": "'+'",
    "MINUS": "'-'", "STAR": "'*'", "PERCENT": "'%'", "TILDE": "'~'", "DOT": "'.'",
    "$END": "end of input",
}


def _describe(expected) -> str:
    names = sorted({_TOKEN_NAMES.get(t, repr(t.lower()) if t.isupper() and not t.startswith("__")
                                     else t) for t in expected})
    names = [n for n in names if not n.startswith("__")]
    if not names:
        return ""
    if len(names) > 8:
        names = names[:8] + ["..."]
    return "; expected " + ", ".join(names)


def _span(src: Source, meta) -> Span | None:
    if getattr(meta, "empty", False) or not hasattr(meta, "line"):
        return None
    return Span(src, meta.line, meta.column, meta.end_line, meta.end_column)


def _tok_span(src: Source, tok: Token) -> Span:
    return Span(src, tok.line, tok.column, tok.end_line, tok.end_column)


# NOTE: no literal may exceed MAX_INT (the checker says so where it is used); one this long
# is rejected here, before ``int()`` (Python refuses strings over 4300 digits, and the
# message would otherwise print the whole number).
MAX_LITERAL_DIGITS = 20


def _int(src: Source, tok: Token) -> int:
    digits = str(tok).lstrip("0")
    if len(digits) > MAX_LITERAL_DIGITS:
        raise MaskValueError(f"integer literal is too large ({len(digits)} digits; integers "
                             f"are at most {S.MAX_INT})", _tok_span(src, tok))
    return int(digits or "0")


class _ToSyntax(Transformer_NonRecursive):
    """Lark tree -> :mod:`maskc.frontend.syntax` nodes, each with its span.

    NOTE: the non-recursive transformer builds trees of any depth without Python's recursion
    limit; :func:`maskc.frontend.syntax.too_deep` then rejects what is nested past ``MAX_NESTING``.
    """

    def __init__(self, src: Source):
        super().__init__()
        self.src = src

    def _s(self, meta) -> Span | None:
        return _span(self.src, meta)

    # ---- items ----
    @v_args(meta=True)
    def start(self, meta, items):
        # NOTE: an empty file still gets a span (line 1) so errors about it name the file
        return S.Module(tuple(items), span=self._s(meta) or Span(self.src, 1, 1, 1, 2))

    @v_args(meta=True)
    def let_item(self, meta, ch):
        name, formals, body = ch
        return S.LetItem(str(name), formals, body, span=_tok_span(self.src, name))

    def formals(self, ch):
        return tuple(str(t) for t in ch if t is not None)

    @v_args(meta=True)
    def mask_item(self, meta, ch):
        name, params, grid, body, score = ch
        return S.MaskItem(str(name), params or (), grid, body, score,
                          span=_tok_span(self.src, name))

    def params(self, ch):
        return tuple(p for p in ch if p is not None)

    @v_args(meta=True)
    def param(self, meta, ch):
        name, default = ch
        return S.Param(str(name), default, span=_tok_span(self.src, name))

    @v_args(meta=True)
    def input_param(self, meta, ch):
        (name,) = ch
        return S.Param(str(name), None, is_input=True, span=_tok_span(self.src, name))

    def over(self, ch):
        return tuple(ch)

    # ---- expressions ----
    @v_args(meta=True)
    def range(self, meta, ch):
        return S.RangeLit(ch[0], ch[1], span=self._s(meta))

    def _bin(op):  # noqa: N805 - a rule factory used in the class body
        @v_args(meta=True)
        def rule(self, meta, ch):
            return S.BinOp(op, ch[0], ch[1], span=self._s(meta))
        return rule

    or_, and_ = _bin("|"), _bin("&")
    add, sub, mul, floordiv, mod = _bin("+"), _bin("-"), _bin("*"), _bin("//"), _bin("%")
    truediv = _bin("/")
    p_or, p_and = _bin("or"), _bin("and")
    p_add, p_sub, p_mul, p_floordiv, p_mod = _bin("+"), _bin("-"), _bin("*"), _bin("//"), _bin("%")

    def _un(op):  # noqa: N805
        @v_args(meta=True)
        def rule(self, meta, ch):
            return S.Unary(op, ch[-1], span=self._s(meta))
        return rule

    not_, neg, p_neg, p_not = _un("~"), _un("-"), _un("-"), _un("not")
    not_where = _un("~")
    del _bin, _un

    @v_args(meta=True)
    def int_(self, meta, ch):
        return S.Int(_int(self.src, ch[0]), span=_tok_span(self.src, ch[0]))

    p_int = int_

    @v_args(meta=True)
    def float_(self, meta, ch):
        value = float(str(ch[0]))
        if value != value or value in (float("inf"), float("-inf")):
            raise MaskValueError(f"float literal {ch[0]} is out of range",
                                 _tok_span(self.src, ch[0]))
        return S.Float(value, span=_tok_span(self.src, ch[0]))

    @v_args(meta=True)
    def axis_name(self, meta, ch):
        return S.Axis(str(ch[0]), str(ch[1]), span=self._s(meta))

    @v_args(meta=True)
    def index(self, meta, ch):
        return S.Index(str(ch[0]), tuple(ch[1:]), span=self._s(meta))

    @v_args(meta=True)
    def true(self, meta, ch):
        return S.Bool(True, span=self._s(meta))

    @v_args(meta=True)
    def false(self, meta, ch):
        return S.Bool(False, span=self._s(meta))

    p_true, p_false = true, false

    @v_args(meta=True)
    def name(self, meta, ch):
        return S.Name(str(ch[0]), span=_tok_span(self.src, ch[0]))

    p_name = name

    @v_args(meta=True)
    def call(self, meta, ch):
        func, *args = ch
        return S.Call(str(func), tuple(a for a in args if a is not None), span=self._s(meta))

    @v_args(meta=True)
    def p_call(self, meta, ch):
        func, *args = ch
        return S.Call(str(func), tuple(S.Arg(None, a, span=a.span) for a in args),
                      span=self._s(meta))

    @v_args(meta=True)
    def posarg(self, meta, ch):
        return S.Arg(None, ch[0], span=self._s(meta))

    @v_args(meta=True)
    def kwarg(self, meta, ch):
        return S.Arg(str(ch[0]), ch[1], span=self._s(meta))

    @v_args(meta=True)
    def tuple_(self, meta, ch):
        return S.TupleLit(tuple(ch), span=self._s(meta))

    @v_args(meta=True)
    def list_(self, meta, ch):
        return S.ListLit(tuple(c for c in ch if c is not None), span=self._s(meta))

    @v_args(meta=True)
    def heads(self, meta, ch):
        return S.HeadsLit(tuple(c for c in ch if c is not None), span=self._s(meta))

    @v_args(meta=True)
    def arm(self, meta, ch):
        return S.Arm(ch[0], ch[1], span=self._s(meta))

    @v_args(meta=True)
    def where_expr(self, meta, ch):
        return S.WhereLit(ch[0], span=self._s(meta))

    # ---- predicates ----
    @v_args(meta=True)
    def p_cmp(self, meta, ch):
        operands, ops = ch[0::2], ch[1::2]
        return S.Compare(tuple(str(o) for o in ops), tuple(operands), span=self._s(meta))

    @v_args(meta=True)
    def p_axis_name(self, meta, ch):
        return S.Axis(str(ch[0]), str(ch[1]), span=self._s(meta))

    @v_args(meta=True)
    def p_axis_index(self, meta, ch):
        return S.Axis(str(ch[0]), _int(self.src, ch[1]), span=self._s(meta))


def _syntax_error(src: Source, err: UnexpectedInput) -> MaskSyntaxError:
    # NOTE: lines end at "\n" only, as Lark counts them (not at "\r", "\f", "\x85", ...).
    lines = src.text.split("\n")
    if len(lines) > 1 and not lines[-1]:
        lines.pop()
    if isinstance(err, UnexpectedEOF) or (isinstance(err, UnexpectedToken)
                                          and err.token.type == "$END"):
        line = len(lines)
        col = len(lines[-1].rstrip("\r")) + 1
        span = Span(src, line, col, line, col + 1)
        expected = getattr(err, "expected", None) or getattr(err, "accepts", None) or ()
        return MaskSyntaxError("unexpected end of input" + _describe(expected), span)
    line, col = max(1, err.line), max(1, err.column)
    if isinstance(err, UnexpectedCharacters):
        ch = src.text[err.pos_in_stream] if err.pos_in_stream < len(src.text) else "?"
        return MaskSyntaxError(f"unexpected character {ch!r}", Span(src, line, col, line, col + 1))
    tok = err.token
    width = max(1, len(str(tok)))
    expected = err.accepts or err.expected or ()
    return MaskSyntaxError(f"unexpected {str(tok)!r}" + _describe(expected),
                           Span(src, line, col, line, col + width))


# what the lexer makes one token of (close enough to count them; comments are skipped)
_TOKEN = re.compile(r"#[^\n]*|\w+|//|\.\.|[<>=!]=|\S")


def _check_length(src: Source) -> None:
    """A located :class:`~maskc.MaskSizeError` at the first token past ``MAX_TOKENS``."""
    count = 0
    for m in _TOKEN.finditer(src.text):
        if m.group().startswith("#"):
            continue
        count += 1
        if count > S.MAX_TOKENS:
            line = src.text.count("\n", 0, m.start()) + 1
            col = m.start() - (src.text.rfind("\n", 0, m.start()) + 1) + 1
            raise MaskSizeError(f"the spec is too long: more than {S.MAX_TOKENS:,} tokens "
                                "(names, numbers and symbols; a layout literal takes two per "
                                "cell: pass a large layout as a parameter instead, "
                                "maskc.compile('mask m(M) = blocks(64, layout(M))', M=matrix))",
                                Span(src, line, col, line, col + len(m.group())))


def _run(src: Source, start: str):
    _check_length(src)
    try:
        tree = lark_parser(start).parse(src.text)
        out = _ToSyntax(src).transform(tree)
    except UnexpectedInput as err:
        raise _syntax_error(src, err) from None
    except VisitError as err:
        if isinstance(err.orig_exc, MaskError):
            raise err.orig_exc from None
        if isinstance(err.orig_exc, RecursionError):
            raise MaskSyntaxError("expression is nested too deeply",
                                  Span(src, 1, 1, 1, 2)) from None
        raise
    except RecursionError:
        raise MaskSyntaxError("expression is nested too deeply", Span(src, 1, 1, 1, 2)) from None
    deep = S.too_deep(out)
    if deep is not None:
        raise MaskSyntaxError(f"expression is nested too deeply (more than {S.MAX_NESTING} "
                              "levels of operators and calls)",
                              deep.span or Span(src, 1, 1, 1, 2))
    return out


def parse(text: str, filename: str = "<string>") -> S.Module:
    """Parse a whole `.mask` file into a :class:`~maskc.frontend.syntax.Module`."""
    return _run(Source(text, filename), "start")


def parse_expr(text: str, filename: str = "<string>") -> S.Syn:
    """Parse one expression (used for ``-p name=value`` on the command line)."""
    return _run(Source(text, filename), "expr")
