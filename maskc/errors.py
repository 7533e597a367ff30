"""User-facing errors: one hierarchy rooted at :class:`MaskError`.

Every error carries a :class:`Span` into the user's source so its message reads
``file:line:col: error: ...`` followed by the source line and a caret, like a C compiler.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "Span", "Source", "MaskError", "MaskSyntaxError", "MaskNameError", "MaskTypeError",
    "MaskValueError", "MaskParamError", "MaskInputError", "MaskSizeError",
]


@dataclass(frozen=True, slots=True)
class Source:
    """The text of one `.mask` file (or string) and the name used in messages."""

    text: str
    filename: str = "<string>"

    def line_text(self, line: int) -> str:
        r"""Line ``line`` (1-based) as it is shown under a message, one character per column.

        NOTE: lines end at "\n" only, as Lark counts them; ``str.splitlines`` would also split
        at "\r", "\f", "\x1c".."\x1e", "\x85", "\u2028" and "\u2029" and so show the wrong
        line. A trailing "\r" (CRLF files) is dropped and any other unprintable character but a
        tab shows as a space, so the caret stays under the reported column.
        """
        lines = self.text.split("\n")
        if not 1 <= line <= len(lines):
            return ""
        text = lines[line - 1]
        text = text[:-1] if text.endswith("\r") else text
        if text.isprintable():  # the usual case, at C speed (a line may be megabytes long)
            return text
        return "".join(ch if ch == "\t" or ch.isprintable() else " " for ch in text)


@dataclass(frozen=True, slots=True)
class Span:
    """A region of a source: 1-based line/column of its start and end (end exclusive)."""

    source: Source
    line: int
    column: int
    end_line: int
    end_column: int

    def __repr__(self) -> str:
        return f"Span({self.source.filename}:{self.line}:{self.column})"


class MaskError(Exception):
    """Base of every error maskc reports to a user.

    ``.line`` and ``.column`` are 1-based (``None`` only when no source position applies);
    ``str(err)`` is ``file:line:col: error: message`` plus the source line and a caret.
    """

    def __init__(self, message: str, span: Span | None = None):
        self.message = message
        self.span = span
        super().__init__(self._format())

    @property
    def line(self) -> int | None:
        return self.span.line if self.span else None

    @property
    def column(self) -> int | None:
        return self.span.column if self.span else None

    @property
    def filename(self) -> str | None:
        return self.span.source.filename if self.span else None

    def _format(self) -> str:
        if self.span is None:
            return f"error: {self.message}"
        s = self.span
        text = s.source.line_text(s.line)
        width = (s.end_column - s.column) if s.end_line == s.line else len(text) - s.column + 1
        width = max(1, min(width, max(1, len(text) - s.column + 1)))
        # NOTE: tabs in the prefix are kept so the caret lines up under the same characters.
        prefix = text[: s.column - 1]
        pad = "".join("\t" if ch == "\t" else " " for ch in prefix) if "\t" in prefix \
            else " " * len(prefix)
        return (f"{s.source.filename}:{s.line}:{s.column}: error: {self.message}\n"
                f"    {text}\n    {pad}{'^' * width}")


class MaskSyntaxError(MaskError):
    """The text does not follow the grammar."""


class MaskNameError(MaskError):
    """A name is undefined, redefined or used where it is reserved."""


class MaskTypeError(MaskError, TypeError):
    """A value of the wrong kind: a mask where an integer is needed, and so on (also a
    ``TypeError``, so ``except TypeError`` catches it as Python's convention expects)."""


class MaskValueError(MaskError, ValueError):
    """A value out of range: a negative window, a zero stride, a kernel larger than its axis
    (also a ``ValueError``)."""


class MaskParamError(MaskError):
    """A compile-time parameter is missing, unknown or of the wrong type."""


class MaskInputError(MaskError):
    """A runtime input (``input x``) is missing or malformed when the mask is used."""


class MaskSizeError(MaskError, ValueError):
    """The requested sizes do not fit: a grid mismatch, or a dense mask over the limit (also
    a ``ValueError``)."""
