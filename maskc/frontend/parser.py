"""Parse `.mask` text into surface syntax (:mod:`maskc.frontend.syntax`).

The grammar lives in ``grammar/mask.lark`` and is loaded once. A Lark ``Transformer``
builds syntax nodes with spans directly; no ``lark.Tree`` leaves this module, and every
Lark exception becomes a located :class:`~maskc.errors.MaskSyntaxError` (a bracket an item
never closes is reported where it opens). :func:`parse_until_error` keeps the items before
the first error, for ``maskc check`` to go on after it (:mod:`maskc.frontend.report`).
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from lark import Lark, Token, Transformer_NonRecursive, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError
from lark.parsers.lalr_interactive_parser import InteractiveParser

from maskc.frontend import syntax as S
from maskc.errors import MaskError, MaskSizeError, MaskSyntaxError, MaskValueError, Source, Span

__all__ = ["grammar_path", "lark_parser", "parse", "parse_expr", "parse_until_error",
           "ITEM_KEYWORDS"]


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


def _position(text: str, offset: int) -> tuple[int, int]:
    """1-based ``(line, column)`` of ``offset``, lines ending at "\\n" as Lark counts them."""
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


def _at(src: Source, offset: int, width: int = 1) -> Span:
    line, col = _position(src.text, offset)
    return Span(src, line, col, line, col + width)


def _syntax_error(src: Source, err: UnexpectedInput, base: int = 0,
                  begin: int = 0) -> MaskSyntaxError:
    """The located error for Lark's ``err``: ``base`` maps the parsed text's offsets to the
    source's (see :func:`parse_until_error`), ``begin`` is where the failing item begins."""
    text = src.text
    at_end = isinstance(err, UnexpectedEOF) or (isinstance(err, UnexpectedToken)
                                                and err.token.type == "$END")
    accepts = getattr(err, "accepts", None) or getattr(err, "expected", None) or ()
    # NOTE: past the end of an item (the input ends, or the next item begins) with a bracket
    # the parser could still close, the bracket is the mistake: point where it opens
    if at_end or (isinstance(err, UnexpectedToken) and err.token.type in _KEYWORD_TERMINALS):
        stop = len(text) if at_end else err.token.start_pos + base
        opened = _unclosed(text, begin, stop, accepts)
        if opened is not None:
            return MaskSyntaxError(f"{text[opened]!r} is never closed", _at(src, opened))
    if at_end:
        # NOTE: lines end at "\n" only, as Lark counts them (not at "\r", "\f", "\x85", ...).
        lines = text.split("\n")
        if len(lines) > 1 and not lines[-1]:
            lines.pop()
        line = len(lines)
        col = len(lines[-1].rstrip("\r")) + 1
        span = Span(src, line, col, line, col + 1)
        expected = getattr(err, "expected", None) or accepts
        return MaskSyntaxError("unexpected end of input" + _describe(expected), span)
    line, col = max(1, err.line), max(1, err.column)
    if isinstance(err, UnexpectedCharacters):
        pos = err.pos_in_stream + base
        ch = text[pos] if pos < len(text) else "?"
        return MaskSyntaxError(f"unexpected character {ch!r}", Span(src, line, col, line, col + 1))
    tok = err.token
    width = max(1, len(str(tok)))
    return MaskSyntaxError(f"unexpected {str(tok)!r}" + _describe(accepts),
                           Span(src, line, col, line, col + width))


# what the lexer makes one token of (close enough to count them; comments are skipped)
_TOKEN = re.compile(r"#[^\n]*|\w+|//|\.\.|[<>=!]=|\S")

# NOTE: the keywords that begin a top-level item (`_item` in grammar/mask.lark). The lexer is
# contextual: where a name may stand (`let mask = ...`) they are names, so only the parser
# knows where an item begins (see _lalr).
ITEM_KEYWORDS = ("mask", "let")
_KEYWORD_TERMINALS = frozenset(k.upper() for k in ITEM_KEYWORDS)
_BRACKETS = {"(": ")", "[": "]", "{": "}"}
_CLOSER_TERMINALS = {")": "RPAR", "]": "RSQB", "}": "RBRACE"}


def _unclosed(text: str, begin: int, stop: int, accepts) -> int | None:
    """The offset of the innermost bracket that ``text[begin:stop]`` (an item, cut short at
    ``stop``) leaves open, when the parser stopped there would take its closing bracket."""
    stack: list[int] = []
    for m in _TOKEN.finditer(text, begin, stop):
        tok = m.group()
        if tok in _BRACKETS:
            stack.append(m.start())
        elif tok in _CLOSER_TERMINALS and stack and _BRACKETS[text[stack[-1]]] == tok:
            stack.pop()
    if stack and _CLOSER_TERMINALS[_BRACKETS[text[stack[-1]]]] in accepts:
        return stack[-1]
    return None


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


def _lalr(text: str, start: str):
    """Parse ``text`` as ``Lark.parse`` does, noting the offset of each item keyword the
    parser takes: ``(tree, None, keywords, True)``, or ``(None, error, keywords before it,
    whole)``, ``whole`` telling whether the text before the error parses (its last item is
    complete: the error is between items).

    NOTE: where a name may stand, the contextual lexer reads ``mask``/``let`` as one, so
    ``causal &`` and then ``mask b = ...`` on the next line fails at ``b``. When the token
    that fails follows such a name at the start of a line, the error is reported at that
    ``mask``/``let``, as what the parser expected there instead: the item before is cut short.
    """
    ip = lark_parser(start).parse_interactive(text)
    state, keywords, token, fed, before = ip.parser_state, [], None, None, None
    try:
        for token in ip.lexer_thread.lex(state):
            if token.type == "NAME" and token.value in ITEM_KEYWORDS and \
                    not text[text.rfind("\n", 0, token.start_pos) + 1:token.start_pos].strip():
                before = (state.copy(), token)
            state.feed_token(token)
            fed = token
            if token.type in _KEYWORD_TERMINALS:
                keywords.append(token.start_pos)
        end = Token.new_borrow_pos("$END", "", token) if token else Token("$END", "", 0, 1, 1)
        return state.feed_token(end, True), None, keywords, True
    except UnexpectedInput as err:
        if before is not None and before[1] is fed:
            old, word = before
            return None, UnexpectedToken(
                Token.new_borrow_pos(word.value.upper(), word.value, word), set(),
                interactive_parser=InteractiveParser(ip.parser, old, ip.lexer_thread)), \
                keywords, False
        err.interactive_parser = ip  # NOTE: as Lark.parse does, so err.accepts can be computed
        at_end = isinstance(err, UnexpectedToken) and err.token.type == "$END"
        return None, err, keywords, not at_end and "$END" in ip.accepts()


def _build(src: Source, tree, first: Span):
    """The syntax of Lark ``tree`` (a file, an item or an expression); ``first`` locates
    errors that have no place of their own."""
    try:
        out = _ToSyntax(src).transform(tree)
    except VisitError as err:
        if isinstance(err.orig_exc, MaskError):
            raise err.orig_exc from None
        if isinstance(err.orig_exc, RecursionError):
            raise MaskSyntaxError("expression is nested too deeply", first) from None
        raise
    except RecursionError:
        raise MaskSyntaxError("expression is nested too deeply", first) from None
    deep = S.too_deep(S.Module((out,)) if isinstance(out, (S.LetItem, S.MaskItem)) else out)
    if deep is not None:
        raise MaskSyntaxError(f"expression is nested too deeply (more than {S.MAX_NESTING} "
                              "levels of operators and calls)", deep.span or first)
    return out


def _run(src: Source, start: str):
    _check_length(src)
    try:
        tree, err, keywords, _ = _lalr(src.text, start)
    except RecursionError:
        raise MaskSyntaxError("expression is nested too deeply", _at(src, 0)) from None
    if err is not None:
        raise _syntax_error(src, err, 0, keywords[-1] if keywords else 0) from None
    return _build(src, tree, _at(src, 0))


def parse(text: str, filename: str = "<string>") -> S.Module:
    """Parse a whole `.mask` file into a :class:`~maskc.frontend.syntax.Module`."""
    return _run(Source(text, filename), "start")


def parse_expr(text: str, filename: str = "<string>") -> S.Syn:
    """Parse one expression (used for ``-p name=value`` on the command line)."""
    return _run(Source(text, filename), "expr")


def parse_until_error(src: Source, begin: int = 0):
    """Parse ``src.text`` from offset ``begin`` (0, or where an item begins) up to its first
    syntax error, lines and columns those of the whole source: ``(items, error, broken)``.

    ``items`` holds ``(name, item)`` for each item before the error (``(name, error)`` for
    one whose literals or nesting are refused); ``error`` is the
    :class:`~maskc.errors.MaskSyntaxError` :func:`parse` would raise for that text (``None``
    if it parses to the end), ``broken`` the offset where the item that fails begins. From
    offset 0 the whole source is first held to the token limit, as by :func:`parse`.
    """
    text = src.text
    if begin == 0:
        _check_length(src)
    line, col = _position(text, begin)
    pad = "\n" * (line - 1) + " " * (col - 1)  # NOTE: so Lark counts lines and columns as here
    base = begin - len(pad)
    try:
        tree, err, keywords, whole = _lalr(pad + text[begin:], "start")
    except RecursionError:
        return [], MaskSyntaxError("expression is nested too deeply", _at(src, begin)), begin
    if err is None:
        return _items(src, tree), None, None
    keywords = [k + base for k in keywords]
    first = next((m.start() for m in _TOKEN.finditer(text, begin)
                  if not m.group().startswith("#")), begin)
    broken = keywords[-1] if keywords else first
    error = _syntax_error(src, err, base, broken)
    if whole and isinstance(err, UnexpectedCharacters):
        # NOTE: a character the lexer refuses inside a word (`wíndow`) cuts the item short:
        # the text before it may parse (`mask b = w`) but is not what was written
        at = err.pos_in_stream + base
        whole = at == 0 or text[at - 1].isspace()
    if whole:  # the error is after a complete item: what is broken begins there
        broken = (err.pos_in_stream if isinstance(err, UnexpectedCharacters)
                  else err.token.start_pos) + base
    items = []
    if broken > first:  # the items before the broken one are whole
        tree, err, *_ = _lalr(pad + text[begin:broken], "start")
        items = _items(src, tree) if err is None else []
    return items, error, broken


def _items(src: Source, tree) -> list:
    out = []
    for child in tree.children:
        name = child.children[0]
        try:
            out.append((str(name), _build(src, child, _tok_span(src, name))))
        except MaskError as err:
            out.append((str(name), err))
    return out
