"""Tile states: what block analysis knows of a tile (a closed set, as an ``IntEnum``).

Arrays of states are ``int8``; the members compare and combine with them as plain ints.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

__all__ = ["State", "E", "P", "F", "U", "R", "from_bounds"]


class State(IntEnum):
    EMPTY = 0      # keeps no pair
    PARTIAL = 1    # keeps some pairs: the kernel evaluates the mask there
    FULL = 2       # keeps every pair: no mask evaluation
    UNPROVEN = 3   # partial as far as sound analysis can tell (``where``)
    RESOLVE = 4    # undecided by composition: evaluate the tile's pairs to settle it


E, P, F, U, R = State.EMPTY, State.PARTIAL, State.FULL, State.UNPROVEN, State.RESOLVE


def from_bounds(full, empty) -> np.ndarray:
    """``int8`` states from per-tile ``full``/``empty`` flags (neither: partial)."""
    return np.where(empty, E, np.where(full, F, P)).astype(np.int8)
