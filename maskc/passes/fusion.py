"""Block fusion: consecutive key tiles become runs; query tiles with identical rows share one.

Requires: a :class:`~maskc.analysis.blocktable.BlockMap`. Guarantees: expanding the runs of row
``row_of[b, g, i]`` gives exactly the full and partial key tiles (and, for partial tiles,
the live-predicate variants) of query tile ``i``; a run never mixes variants.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from maskc.analysis.blocktable import BlockMap

__all__ = ["Runs", "fuse", "expand"]


@dataclass(frozen=True, eq=False)
class Runs:
    """Distinct rows as runs. ``full[r]``: ``(start, length)`` pairs; ``partial[r]``: ``(start, length, variant)``."""

    row_of: np.ndarray                 # (B, G, n_q_tiles) -> distinct row
    full: tuple[np.ndarray, ...]       # per distinct row, int32 (n_runs, 2)
    partial: tuple[np.ndarray, ...]    # per distinct row, int32 (n_runs, 3)

    @property
    def n_rows(self) -> int:
        return len(self.full)


def _runs(tiles: np.ndarray, variants: np.ndarray | None) -> np.ndarray:
    if len(tiles) == 0:
        return np.zeros((0, 2 if variants is None else 3), dtype=np.int32)
    brk = np.flatnonzero(np.diff(tiles) != 1) + 1
    if variants is not None:
        brk = np.union1d(brk, np.flatnonzero(np.diff(variants) != 0) + 1)
    starts = np.concatenate([[0], brk])
    lengths = np.diff(np.concatenate([starts, [len(tiles)]]))
    cols = [tiles[starts], lengths] + ([variants[starts]] if variants is not None else [])
    return np.stack(cols, axis=1).astype(np.int32)


def fuse(bm: BlockMap) -> Runs:
    """Runs of key tiles per query tile, with identical rows stored once."""
    B, G, nq = bm.kv_num_blocks.shape
    seen: dict[bytes, int] = {}
    full, partial = [], []
    row_of = np.zeros((B, G, nq), dtype=np.int32)
    for b in range(B):
        for g in range(G):
            for i in range(nq):
                n, m = bm.kv_num_blocks[b, g, i], bm.full_kv_num_blocks[b, g, i]
                p = _runs(bm.kv_indices[b, g, i, :n], bm.variant[b, g, i, :n])
                f = _runs(bm.full_kv_indices[b, g, i, :m], None)
                key = p.tobytes() + b"|" + f.tobytes()
                if key not in seen:
                    seen[key] = len(full)
                    full.append(f)
                    partial.append(p)
                row_of[b, g, i] = seen[key]
    return Runs(row_of, tuple(full), tuple(partial))


def expand(runs: Runs, row: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(partial tiles, their variants, full tiles)`` of one distinct row."""
    p, f = runs.partial[row], runs.full[row]
    ptiles = np.concatenate([np.arange(s, s + n) for s, n, _ in p]) if len(p) else np.zeros(0, int)
    pvars = np.concatenate([np.full(n, v) for _, n, v in p]) if len(p) else np.zeros(0, int)
    ftiles = np.concatenate([np.arange(s, s + n) for s, n in f]) if len(f) else np.zeros(0, int)
    return ptiles, pvars, ftiles
