"""Argument checks shared by every public entry (the API and the CLI), run before any work.

Each returns the value normalized (a Python ``int``, a ``float``) or raises a
:class:`~maskc.MaskError` naming the argument: :class:`~maskc.MaskTypeError` (also a
``TypeError``) for a value of the wrong kind, :class:`~maskc.MaskSizeError` or
:class:`~maskc.MaskValueError` (also ``ValueError``\\ s) for one out of range. Callers then
use the returned value, never the original: a ``numpy.uint8`` length would wrap around in
later arithmetic, a ``numpy`` array would be compared elementwise.
"""

from __future__ import annotations

import math
import numbers
import re

import numpy as np

from maskc.errors import MaskError, MaskSizeError, MaskTypeError, MaskValueError

__all__ = ["MAX_LENGTH", "integer", "length", "real", "name"]

MAX_LENGTH = 2**31 - 1  # positions and tile sizes fit the kernels' int32 index arithmetic


def _is_int(value) -> bool:
    # NOTE: bool is an int to Python, but `dense(q_len=True)` is a mistake, not a length of 1
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def integer(value, what: str, lo: int = 1, hi: int = MAX_LENGTH, span=None,
            error: type[MaskError] = MaskSizeError) -> int:
    """``value`` as a Python ``int`` in ``lo..hi``: ints and numpy integer scalars (and 0-d
    integer arrays or tensors) are accepted, bools, floats, strings and arrays refused."""
    item = value
    if not _is_int(item) and getattr(item, "ndim", None) == 0:  # a 0-d array or tensor
        dtype = str(getattr(item, "dtype", ""))
        if re.fullmatch(r"(torch\.)?u?int\d+", dtype):
            item = item.item()
    if not _is_int(item):
        message = f"{what} must be an integer from {lo:,} to {hi:,}, got {_show(value)}"
        raise error(message, span)
    if not lo <= item <= hi:
        raise error(f"{what} must be an integer from {lo:,} to {hi:,}, got {int(item):,}", span)
    return int(item)


def length(value, what: str, span=None) -> int:
    """A sequence length or tile size: an integer from 1 to ``MAX_LENGTH``."""
    return integer(value, what, 1, MAX_LENGTH, span)


def real(value, what: str, span=None) -> float:
    """A finite real number as a ``float``: Python and numpy scalars, 0-d real arrays and
    tensors (``torch.tensor(0.5)``); bools, complex numbers and larger arrays are refused."""
    item = value
    if not isinstance(item, numbers.Real) and getattr(item, "ndim", None) == 0:
        if re.fullmatch(r"(torch\.)?(u?int\d+|float\d+|bfloat16|half|double)",
                        str(getattr(item, "dtype", ""))):
            item = item.item()  # a 0-d real array or tensor
    if isinstance(item, (bool, np.bool_)) or not isinstance(item, numbers.Real):
        raise MaskTypeError(f"{what} must be a finite real number, got {_show(value)}", span)
    item = float(item)
    if not math.isfinite(item):
        raise MaskValueError(f"{what} must be a finite real number, got {item!r}", span)
    return item


def name(value, what: str) -> str:
    """A string argument (a mask name, a backend, a target)."""
    if not isinstance(value, str):
        raise MaskTypeError(f"{what} must be a string, got {_show(value)}")
    return value


def _show(value) -> str:
    """A short description of a bad value: its repr when short, else its type and shape."""
    shape = getattr(value, "shape", None)
    if shape is not None and tuple(shape) != ():
        return f"an array of shape {tuple(shape)}"
    text = repr(value)
    return text if len(text) <= 60 else f"a value of type {type(value).__name__}"
