"""Every error of a file at once, for ``maskc check``.

:func:`maskc.compile` stops at the first error; :func:`check_all` goes on. Parsing resumes
after a syntax error at the next item (:func:`parse_items`), so the error hides nothing
after it, and each mask is checked on its own, so an error in one does not stop the next.
The names a broken item defines count as defined: using them is not an error of its own,
and the mask using them is not checked further.
"""

from __future__ import annotations

import re

from maskc.errors import MaskError, MaskNameError, MaskParamError, Source, Span
from maskc.frontend import syntax as S
from maskc.frontend.check import Checker, Unchecked, check_mask
from maskc.frontend.parser import ITEM_KEYWORDS, parse_until_error
from maskc.ir.simplify import simplify
from maskc.ir.verify import verify

__all__ = ["check_all", "parse_items"]

_WORD = re.compile(r"#[^\n]*|\w+|\S")
_ITEM_NAME = re.compile(r"(?:%s)\s+([A-Za-z_][A-Za-z0-9_]*)" % "|".join(ITEM_KEYWORDS))
# words after which a name is expected, so an item keyword there is more likely a name
_BEFORE_A_NAME = frozenset({*ITEM_KEYWORDS, "input", "where", "with", "over", "and", "or",
                            "not", "heads", "grid"})


def parse_items(text: str, filename: str = "<string>") -> list[tuple[str | None, object]]:
    """The top-level items of a file, in order: ``(name, item)``, or ``(name, error)`` for
    one that does not parse (its name read from its first words, ``None`` if it has none).

    The first error is the one :func:`~maskc.frontend.parser.parse` raises; parsing then
    resumes at the next item keyword that begins a line or follows a value (the parser
    knows where items begin only up to an error), and so on. A file over the token limit
    raises, as :func:`~maskc.frontend.parser.parse` does.
    """
    src = Source(text, filename)
    out: list[tuple[str | None, object]] = []
    begin: int | None = 0
    while begin is not None:
        items, error, broken = parse_until_error(src, begin)
        out += items
        if error is None:
            break
        named = _ITEM_NAME.match(text, broken)
        out.append((named.group(1) if named else None, error))
        begin = _resume(text, broken)
    return out


def _resume(text: str, broken: int) -> int | None:
    """Where to parse again after the item at ``broken`` failed: the next item keyword that
    begins a line, or follows a value (a name, a number, a closing bracket)."""
    prev = None
    for m in _WORD.finditer(text, broken):
        word = m.group()
        if word.startswith("#"):
            continue
        if word in ITEM_KEYWORDS and m.start() > broken:
            line_start = text.rfind("\n", 0, m.start()) + 1
            after_value = prev is not None and (prev in ")]}" or (
                (prev[0].isalnum() or prev[0] == "_") and prev not in _BEFORE_A_NAME))
            if not text[line_start:m.start()].strip() or after_value:
                return m.start()
        prev = word
    return None


def check_all(text: str, filename: str = "<string>", /, **params) -> list[MaskError]:
    """Every error in the `.mask` source ``text``, in source order (``[]`` when it is clean).

    ``params`` override parameters of the masks that declare them (as ``maskc check -p``;
    one that no mask declares is an error); a mask with a parameter that has no default and
    is not given is not checked. Each error
    is the one :func:`maskc.compile` would raise for it, with the same line and column; an
    error inside a macro used by several masks is reported once.
    """
    try:
        parsed = parse_items(text, filename)
    except MaskError as err:  # the file as a whole: over the token limit
        return [err]
    errors: list[MaskError] = [x for _, x in parsed if isinstance(x, MaskError)]
    items = tuple(x for _, x in parsed if not isinstance(x, MaskError))
    broken = frozenset(name for name, x in parsed if isinstance(x, MaskError) and name)
    module = S.Module(items, span=Span(Source(text, filename), 1, 1, 1, 2))
    declared = {p.name for x in items for p in (getattr(x, "params", None) or ())}
    unknown = [k for k in params if k not in declared]
    if unknown and not broken:  # (a mask that did not parse may declare it)
        errors.append(MaskError(f"{filename}: no mask in the file has a parameter "
                                f"'{unknown[0]}'"))
    checker = Checker(module, errors=errors, broken=broken)
    # NOTE: a mask the checker refused (defined twice, a reserved name) is still a mask of
    # the file: only a file with none at all is told it defines none, as compile() says
    if not any(isinstance(x, S.MaskItem) for x in items) and \
            not any(isinstance(x, MaskError) for _, x in parsed):
        span = items[0].span if items else module.span
        errors.append(MaskNameError("the file defines no mask (add 'mask NAME = ...')", span))
    for item in checker.masks.values():
        declared = {p.name for p in item.params}
        try:
            verify(simplify(verify(check_mask(
                checker, item.name, {k: v for k, v in params.items() if k in declared}))))
        except Unchecked:
            continue
        except MaskParamError as err:
            if "has no default" not in err.message:
                errors.append(err)
        except MaskError as err:
            errors.append(err)
    return _in_order(errors)


def _in_order(errors: list[MaskError]) -> list[MaskError]:
    """By position, each once: an error in a macro body is the same error at every use
    (only the note naming the use differs)."""
    seen, out = set(), []
    for err in errors:
        s = err.span
        key = (s.line, s.column, s.end_line, s.end_column, err.message.split(" (in '")[0]) \
            if s is not None else (id(err),)
        if key not in seen:
            seen.add(key)
            out.append(err)
    return sorted(out, key=lambda e: (e.span is None, e.line or 0, e.column or 0))
