"""Per-sequence lengths, offsets, key validity and paged caches (docs/language.md section 13):
the arguments of ``Mask.attention`` checked once, before any backend runs.

:func:`bind_sequences` turns ``q_lens``, ``kv_lens``, ``q_offset``, ``kv_offset``,
``kv_valid`` and ``page_table`` into one :class:`Sequences` of plain host values (ints per
sequence), or raises a :class:`~maskc.MaskError` naming the argument and its first bad
entry. Sequence ``b`` is the mask at lengths ``(Lq_b, Lk_b)`` with its query at absolute
position ``q + q_offset_b`` and its key at ``k + kv_offset_b`` (the defaults, ``q_offset =
Lk_b - Lq_b`` and ``kv_offset = 0``, are the bottom-right alignment of section 3).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from maskc import ir
from maskc.errors import MaskError, MaskInputError, MaskSizeError

__all__ = ["Sequences", "bind_sequences", "ARGUMENTS"]

ARGUMENTS = ("q_lens", "kv_lens", "q_offset", "kv_offset", "kv_valid", "page_table")


@dataclass(frozen=True)
class Sequences:
    """What each sequence of a batch is: lengths, absolute offsets, valid keys, pages."""

    q_lens: tuple[int, ...]
    kv_lens: tuple[int, ...]
    q_offset: tuple[int, ...]
    kv_offset: tuple[int, ...]
    kv_valid: object = None      # bool torch tensor (B, Lk), on the caller's device, or None
    page_table: object = None    # int64 numpy (B, P) or None
    page_size: int | None = None

    @property
    def batch(self) -> int:
        return len(self.q_lens)

    def info(self) -> np.ndarray:
        """``(B, 4)`` int32 rows ``(q_len, kv_len, q_offset, kv_offset)``: what the kernels
        and the generated mask_mods read per sequence (32-bit, as ``bind_sequences`` checked)."""
        return np.ascontiguousarray(np.array(
            [self.q_lens, self.kv_lens, self.q_offset, self.kv_offset], dtype=np.int32
        ).T.reshape(-1, 4))


def _ints(x, name: str, B: int, span, scalar_ok: bool):
    """``x`` as ``B`` Python ints: an int (if ``scalar_ok``) or an integer tensor/array
    ``(B,)``."""
    import torch
    if isinstance(x, (bool, np.bool_)):
        raise MaskInputError(f"{name} must hold integers, got {x!r}", span)
    if isinstance(x, (int, np.integer)):
        if not scalar_ok:
            raise MaskInputError(f"{name} must be an integer tensor of shape ({B},), got the "
                                 f"int {int(x)}", span)
        _fits((int(x),), name, span)
        return (int(x),) * B
    if isinstance(x, torch.Tensor):
        if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
            raise MaskInputError(f"{name} must hold integers, got {x.dtype}", span)
        x = x.detach().cpu().numpy()
    if not isinstance(x, np.ndarray) or x.dtype.kind not in "iu":
        raise MaskInputError(f"{name} must be an integer tensor of shape ({B},), got "
                             f"{type(x).__name__}", span)
    if x.shape != (B,):
        raise MaskInputError(f"{name} must have shape ({B},) (one entry per sequence), got "
                             f"{tuple(x.shape)}", span)
    out = tuple(int(v) for v in x)
    _fits(out, name, span)
    return out


def _fits(values, name: str, span) -> None:
    """Positions and lengths are 32-bit in the kernels: every backend refuses larger ones."""
    for b, v in enumerate(values):
        if not -(1 << 31) <= v < 1 << 31:
            raise MaskInputError(f"{name}[{b}] = {v} does not fit in 32 bits (positions and "
                                 "lengths are 32-bit integers)", span)


def bind_sequences(mdef: ir.MaskDef, q, k, *, q_lens=None, kv_lens=None, q_offset=None,
                   kv_offset=None, kv_valid=None, page_table=None) -> Sequences | None:
    """The checked :class:`Sequences` of one call, or ``None`` when none of the section 10
    arguments is given (the batch is one length, as before)."""
    import torch
    given = {n: v for n, v in zip(ARGUMENTS, (q_lens, kv_lens, q_offset, kv_offset, kv_valid,
                                              page_table)) if v is not None}
    if not given:
        return None
    span = mdef.span
    if mdef.grid is not None:
        raise MaskError(f"mask '{mdef.name}' is over a grid: its tokens are the grid's, so "
                        f"{', '.join(given)} (per-sequence lengths and offsets) do not apply",
                        span)
    B, _, Lq, _ = q.shape
    page_size = None
    if page_table is not None:
        if kv_lens is None:
            raise MaskInputError("a page_table needs kv_lens (how many keys each sequence "
                                 "has in its pages)", span)
        if k.dim() != 4:
            raise MaskSizeError(f"with a page_table, k and v are paged caches (num_pages, Hkv, "
                                f"page_size, D); got k of shape {tuple(k.shape)}", span)
        num_pages, page_size = k.shape[0], k.shape[2]
        if isinstance(page_table, torch.Tensor):
            if page_table.is_floating_point() or page_table.dtype == torch.bool:
                raise MaskInputError(f"page_table must hold integers, got {page_table.dtype}",
                                     span)
            table = page_table.detach().cpu().numpy()
        else:
            table = np.asarray(page_table)
        if table.dtype.kind not in "iu" or table.ndim != 2 or table.shape[0] != B:
            raise MaskInputError(f"page_table must be an integer tensor (B, pages) = ({B}, P), "
                                 f"got {tuple(table.shape)} {table.dtype}", span)
        Lk = table.shape[1] * page_size
    else:
        table, Lk = None, k.shape[2]
    lq = _ints(q_lens, "q_lens", B, span, False) if q_lens is not None else (Lq,) * B
    lk = _ints(kv_lens, "kv_lens", B, span, False) if kv_lens is not None else (Lk,) * B
    for name, lens, top in (("q_lens", lq, Lq), ("kv_lens", lk, Lk)):
        for b, n in enumerate(lens):
            if not 0 <= n <= top:
                what = "the page table's pages hold" if name == "kv_lens" and table is not None \
                    else "the tensors have"
                raise MaskInputError(f"{name}[{b}] = {n}: a sequence has 0 to {top} "
                                     f"{'queries' if name == 'q_lens' else 'keys'} ({what} "
                                     f"{top})", span)
    if table is not None:
        for b, n in enumerate(lk):
            used = table[b, :-(-n // page_size)]
            bad = np.flatnonzero((used < 0) | (used >= num_pages))
            if bad.size:
                j = int(bad[0])
                raise MaskInputError(f"page_table[{b}, {j}] = {int(used[j])} is outside the "
                                     f"cache's {num_pages} pages", span)
    qo = _ints(q_offset, "q_offset", B, span, True) if q_offset is not None else \
        tuple(b - a for a, b in zip(lq, lk))
    ko = _ints(kv_offset, "kv_offset", B, span, True) if kv_offset is not None else (0,) * B
    for b, o in enumerate(ko):
        if o < 0:
            raise MaskInputError(f"kv_offset[{b}] = {o}: a key's absolute position is never "
                                 "negative", span)
    if kv_valid is not None:
        if not isinstance(kv_valid, torch.Tensor):
            arr = np.asarray(kv_valid) if isinstance(kv_valid, (np.ndarray, list, tuple)) \
                else None
            if arr is None or arr.dtype != np.bool_:
                raise MaskInputError(f"kv_valid must be a bool tensor (B, Lk), got "
                                     f"{type(kv_valid).__name__}", span)
            kv_valid = torch.from_numpy(arr)
        if kv_valid.dtype != torch.bool:
            raise MaskInputError(f"kv_valid must be a bool tensor, got {kv_valid.dtype}", span)
        if tuple(kv_valid.shape) != (B, Lk):
            raise MaskInputError(f"kv_valid must have shape (B, Lk) = ({B}, {Lk}), got "
                                 f"{tuple(kv_valid.shape)}", span)
        # NOTE: kept where it is: the kernels read it on its device, and the tables need
        # only which key tiles hold a valid key (passes.sequences.tiles_of_valid)
        kv_valid = kv_valid.detach()
    return Sequences(lq, lk, qo, ko, kv_valid, table, page_size)
