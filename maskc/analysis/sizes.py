"""Sizes and runtime inputs: defaults, checks and limits shared by every stage and backend."""

from __future__ import annotations

import math
import os

import numpy as np

from maskc import ir
from maskc.errors import MaskError, MaskInputError, MaskSizeError
from maskc.ir.inputs import input_kinds
from maskc.validate import integer, length

__all__ = ["dense_limit", "set_dense_limit", "prepare_inputs", "prepare_chosen", "listed",
           "check_batches", "resolve_lengths", "check_size",
           "check_heads", "check_tiles", "check_elements", "check_batch", "document_ids", "is_batched",
           "MAX_HEADS"]

MAX_HEADS = 1 << 16  # more heads than any model has; per-head masks are analysed per head

_DEFAULT_LIMIT = 1 << 28
_limit: int | None = None


def dense_limit() -> int:
    """Most elements ``dense()`` will build (default 2**28, or ``$MASKC_DENSE_LIMIT``)."""
    if _limit is not None:
        return _limit
    env = os.environ.get("MASKC_DENSE_LIMIT")
    return int(env) if env and env.isdigit() else _DEFAULT_LIMIT


def set_dense_limit(n: int | None) -> None:
    """Set the most elements a dense mask may have (``None`` restores the default)."""
    global _limit
    if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1):
        raise MaskSizeError(f"the dense limit must be a positive integer or None, got {n!r}")
    _limit = None if n is None else int(n)


def prepare_inputs(mdef: ir.MaskDef, kv_len: int, inputs: dict, copy: bool = False,
                   heads: int | None = None) -> dict[str, np.ndarray]:
    """Check runtime inputs and return them as signed integer arrays of one shape per kind
    (:mod:`maskc.ir.inputs`): ids ``(B, kv_len)``; a selection ``(Bx, Hx, NB, r)``; keys
    and diagonals ``(Bx, Hx, r)``, padding entries (``< 0``) made ``-1``. Ids are the
    caller's own arrays where they already are, unless ``copy``; ``Hx`` is checked to be 1
    or ``heads`` when ``heads`` is given, every batch size to be 1 or the largest."""
    span = mdef.span
    unknown = sorted(set(inputs) - set(mdef.inputs))
    if unknown:
        known = ", ".join(mdef.inputs) or "none"
        raise MaskInputError(f"mask '{mdef.name}' has no runtime input '{unknown[0]}'; its "
                             f"inputs are: {known}", span)
    kinds = input_kinds(mdef)
    out = {}
    for name in mdef.inputs:
        kind = kinds[name]
        if name not in inputs:
            example = (f"document ids of shape ({kv_len},)" if kind.kind == "ids" else
                       f"chosen {kind.unit()} of shape ({kind.rows(kv_len, mdef.grid)}, r)"
                       if kind.kind == "select" else "a list of shape (r,)")
            raise MaskInputError(f"mask '{mdef.name}' needs the runtime input '{name}' "
                                 f"(e.g. {name}={example})", span)
        x = _array(inputs[name], name, kind, span)
        if kind.kind == "ids":
            out[name] = _ids(x, name, kv_len, copy, span, inputs[name])
        else:
            rows = kind.rows(kv_len, mdef.grid) if kind.kind == "select" else kv_len
            out[name] = _chosen(x, name, kind, rows, heads, span)
    check_batches(mdef, {name: x.shape[0] for name, x in out.items()})
    return out


def split_score_inputs(mdef: ir.MaskDef, inputs: dict, device=None) -> tuple[dict, dict]:
    """``(mask inputs, score inputs)``: the float inputs of the score (docs/language.md section 11)
    checked -- each a floating torch tensor with one axis per index the score reads it with,
    no axis empty, on ``device`` (q's) when given -- and the rest left for
    :func:`prepare_inputs`."""
    import torch

    from maskc.ir.scores import float_inputs
    ranks = float_inputs(mdef.score) if mdef.score is not None else {}
    out = {}
    for name, rank in ranks.items():
        if name not in inputs:
            raise MaskInputError(f"mask '{mdef.name}' needs the runtime input '{name}' (a float "
                                 f"tensor with {rank} ax{'is' if rank == 1 else 'es'}, read by "
                                 "the score)", mdef.span)
        x = inputs[name]
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(x)
        if not isinstance(x, torch.Tensor):
            raise MaskInputError(f"input '{name}' must be a float tensor, got "
                                 f"{type(x).__name__}", mdef.span)
        if not x.is_floating_point():
            raise MaskInputError(f"input '{name}' is read by the score as floats, so it must be "
                                 f"a float tensor; got {str(x.dtype).removeprefix('torch.')}",
                                 mdef.span)
        if x.dim() != rank or 0 in x.shape:
            raise MaskInputError(f"input '{name}' is read with {rank} ind"
                                 f"{'ex' if rank == 1 else 'ices'}, so it must have {rank} "
                                 f"non-empty ax{'is' if rank == 1 else 'es'}; got shape "
                                 f"{tuple(x.shape)}", mdef.span)
        if device is not None and x.device != torch.device(device):
            raise MaskInputError(f"input '{name}' is on {x.device}, but q is on {device}",
                                 mdef.span)
        out[name] = x
    return {k: v for k, v in inputs.items() if k not in ranks}, out


def check_batches(mdef: ir.MaskDef, sizes: dict[str, int]) -> None:
    """Every input's batch size is 1 or the largest of them."""
    batch = max(sizes.values(), default=1)
    for name, size in sizes.items():
        if size not in (1, batch):
            raise MaskInputError(f"runtime inputs disagree on the batch size: input '{name}' "
                                 f"has {size}, another {batch}", mdef.span)


def prepare_chosen(mdef: ir.MaskDef, kv_len: int, inputs: dict, heads: int | None
                   ) -> dict[str, np.ndarray]:
    """:func:`prepare_inputs` for some of the selections, keys and diagonals only."""
    kinds = input_kinds(mdef)
    return {name: _chosen(_array(x, name, kinds[name], mdef.span), name, kinds[name],
                          kinds[name].rows(kv_len, mdef.grid) if kinds[name].kind == "select"
                          else kv_len, heads, mdef.span) for name, x in inputs.items()}


def _array(x, name, kind, span) -> np.ndarray:
    """``x`` as a numpy array of integers (a torch tensor copied to the host)."""
    try:
        if hasattr(x, "detach"):  # a torch tensor; the core does not import torch
            x = x.detach().cpu().numpy()
        x = np.asarray(x)
    except (TypeError, ValueError, RuntimeError, NotImplementedError) as e:
        raise MaskInputError(f"input '{name}' is not an array of integers: "
                             f"{str(e).splitlines()[0]}", span) from None
    if x.dtype.kind not in "iub" or (kind.kind != "ids" and x.dtype.kind == "b"):
        raise MaskInputError(f"input '{name}' must hold integers, got dtype {x.dtype}", span)
    return x


def is_batched(mdef: ir.MaskDef, inputs: dict) -> bool:
    """Whether some input was given with a batch axis (``dense`` then returns one)."""
    full = {"ids": 2, "select": 4, "keys": 3}
    kinds = input_kinds(mdef)
    return any(_ndim(x) == full[kinds[name].kind] for name, x in inputs.items()
               if name in kinds)


def _ndim(x) -> int:
    ndim = getattr(x, "ndim", None)  # arrays and tensors; np.ndim for lists
    return ndim if isinstance(ndim, int) else np.ndim(x)


def _ids(x, name, kv_len, copy, span, given):
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] != kv_len or x.shape[0] == 0:
        raise MaskInputError(f"input '{name}' must have shape ({kv_len},) or (B, {kv_len}) "
                             f"with B >= 1, got {tuple(np.shape(given))}", span)
    # NOTE: ids are only compared, so a signed dtype serves as given (an int64 copy of
    # int8 ids at 2**28 tokens is 2 GiB); unsigned ones widen to a signed dtype
    if x.dtype == np.uint64:
        if x.size and int(x.max()) >= 1 << 63:
            raise MaskInputError(f"input '{name}' holds ids of 2**63 or more", span)
        x = x.astype(np.int64)
    elif x.dtype.kind in "ub":
        x = x.astype({1: np.int16, 2: np.int32, 4: np.int64}[x.dtype.itemsize]
                     if x.dtype.kind == "u" else np.int8)
    elif copy:
        x = x.copy()
    return np.ascontiguousarray(x)


def _chosen(x, name, kind, kv_len, heads, span):
    """A selection ``(Bx, Hx, NB, r)`` or a key/diagonal list ``(Bx, Hx, r)``, as int32
    (``kv_len``: ``NB`` for a selection)."""
    shape = tuple(x.shape)
    if kind.kind == "select":
        nb = kv_len
        lead, want = 2, f"({nb}, r), (Hx, {nb}, r) or (Bx, Hx, {nb}, r)"
        ok = 2 <= x.ndim <= 4 and shape[-2] == nb
        what = "tiles" if kind.tiles is not None else "key blocks"
        limit, what = nb, f"the number of {what} ({nb} {kind.unit()})"
    else:
        lead, want = 1, "(r,), (Hx, r) or (Bx, Hx, r)"
        ok = 1 <= x.ndim <= 3
        limit, what = kv_len, f"kv_len ({kv_len})"
    if not ok or 0 in shape[:-1]:
        raise MaskInputError(f"input '{name}' must have shape {want}, got {shape}", span)
    x = x.reshape((1,) * (lead + 2 - x.ndim) + shape)
    if heads is not None and x.shape[1] not in (1, heads):
        raise MaskInputError(f"input '{name}' lists {x.shape[1]} heads, but there are {heads} "
                             "(give 1 row for every head, or one per head)", span)
    if x.size and x.dtype != np.int64:
        x = x.astype(np.int64)
    bad = np.flatnonzero(x.reshape(-1) >= limit) if x.size else []
    if len(bad):
        where = tuple(int(i) for i in np.unravel_index(bad[0], x.shape))
        raise MaskInputError(f"input '{name}' has entry {int(x.reshape(-1)[bad[0]]):,} at "
                             f"{_index(where, shape)}, not below {what}", span)
    return np.ascontiguousarray(np.where(x < 0, -1, x).astype(np.int32))


def listed(x: np.ndarray, width: int) -> np.ndarray:
    """Bool ``(..., width)``: whether each value ``0..width-1`` is listed in the last axis of
    ``x`` (entries ``< 0`` are padding; duplicates are allowed)."""
    lead = x.shape[:-1]
    table = np.zeros((int(np.prod(lead, dtype=np.int64)), width + 1), dtype=bool)
    flat = x.reshape(len(table), -1)
    table[np.arange(len(table))[:, None], np.where((flat < 0) | (flat >= width), width, flat)] \
        = True
    return table[:, :width].reshape(*lead, width)


def _index(where: tuple, given: tuple) -> str:
    """The index of an entry in the caller's own shape (before the leading 1s were added)."""
    return str(list(where[len(where) - len(given):]))


def resolve_lengths(mdef: ir.MaskDef, q_len, kv_len) -> tuple[int, int]:
    """Default and check ``(q_len, kv_len)``; a grid fixes both to its number of tokens."""
    span = mdef.span
    # NOTE: types first: a numpy array compared with the grid's size is an array of bools
    q_len = None if q_len is None else length(q_len, "q_len", span)
    kv_len = None if kv_len is None else length(kv_len, "kv_len", span)
    if mdef.grid is not None:
        n = mdef.grid.numel
        for what, v in (("q_len", q_len), ("kv_len", kv_len)):
            if v is not None and v != n:
                raise MaskSizeError(f"mask '{mdef.name}' is over a grid of {n} tokens, but "
                                    f"{what} = {v}", mdef.grid.span or mdef.span)
        return n, n
    if q_len is None:
        raise MaskSizeError(f"mask '{mdef.name}' needs q_len (it has no grid)", mdef.span)
    return q_len, q_len if kv_len is None else kv_len


def check_heads(mdef: ir.MaskDef, heads) -> int:
    """``heads`` as an int in ``1..MAX_HEADS``, or a :class:`MaskSizeError`."""
    return integer(heads, "heads", 1, MAX_HEADS, mdef.span)


def check_tiles(mdef: ir.MaskDef, q_len: int, kv_len: int, block_q, block_k) -> tuple[int, int]:
    """``(block_q, block_k)`` as ints from 1 to 2**31 - 1, once the tile grid's rows and
    columns are known to stay within what per-row tables can hold (``dense_limit() // 16``
    each)."""
    block_q = length(block_q, "block_q", mdef.span)
    block_k = length(block_k, "block_k", mdef.span)
    nq, nk = -(-q_len // block_q), -(-kv_len // block_k)
    if max(nq, nk) > dense_limit() // 16:
        raise MaskSizeError(f"{q_len} x {kv_len} tokens in tiles of {block_q} x {block_k} make "
                            f"{nq:,} x {nk:,} tiles, more than the limit of "
                            f"{dense_limit() // 16:,} per side: use larger tiles", mdef.span)
    return block_q, block_k


def check_elements(n: int, what: str, span=None, hint: str = "") -> None:
    """A :class:`MaskSizeError` when an array of ``n`` elements would exceed the limit."""
    if n > dense_limit():
        raise MaskSizeError(f"{what} would hold {n:,} elements, more than the limit of "
                            f"{dense_limit():,} (raise it with maskc.set_dense_limit() or "
                            f"$MASKC_DENSE_LIMIT{hint})", span)


def check_batch(mdef: ir.MaskDef, inputs_batch: int, q_batch: int) -> None:
    """Runtime inputs of batch 1 serve every row of q; any other batch must equal q's."""
    if inputs_batch not in (1, q_batch):
        raise MaskSizeError(f"batched inputs have batch {inputs_batch} but q has {q_batch}",
                            mdef.span)


def check_size(mdef: ir.MaskDef, shape: tuple[int, ...], what: str = "dense mask") -> None:
    dims = " x ".join(str(x) for x in shape)
    check_elements(math.prod(shape), f"a {what} of {dims}", mdef.span,
                   ", or use a block-sparse backend")




def document_ids(lengths=None, *, cu_seqlens=None):
    """Document ids for ``same(doc)``/``within(doc, ...)`` from sequence lengths.

    Give the lengths of the packed sequences (``[3, 5, 2]`` -> ``[0,0,0,1,1,1,1,1,2,2]``) or
    FlashAttention-style cumulative offsets ``cu_seqlens`` (``[0, 3, 8, 10]``). A torch
    tensor in gives a torch tensor out (on its device); anything else gives numpy int64.
    """
    if (lengths is None) == (cu_seqlens is None):
        raise MaskInputError("give exactly one of lengths and cu_seqlens")
    what = "lengths" if lengths is not None else "cu_seqlens"
    given = lengths if lengths is not None else cu_seqlens
    is_torch = hasattr(given, "detach")
    arr = _integers(given.detach().cpu().numpy() if is_torch else given, what)
    if cu_seqlens is not None:
        if len(arr) < 1 or arr[0] != 0 or np.any(np.diff(arr) < 0):
            raise MaskInputError("cu_seqlens must start at 0 and never decrease")
        total = int(arr[-1])
        arr = np.diff(arr)
    else:
        if np.any(arr < 0):
            raise MaskInputError("sequence lengths must be >= 0")
        total = int(arr.sum(dtype=object)) if len(arr) else 0  # exact: no int64 wrap-around
    # NOTE: checked before np.repeat allocates 8 bytes per token
    if total > 2**31 - 1:
        raise MaskSizeError(f"{what} describe {total:,} tokens; lengths must stay below 2**31")
    check_elements(total, f"document ids for {total:,} tokens")
    ids = np.repeat(np.arange(len(arr), dtype=np.int64), arr)
    if is_torch:
        import torch
        return torch.from_numpy(ids).to(given.device)
    return ids


def _integers(given, what: str) -> np.ndarray:
    """``given`` as a 1-D int64 array of whole numbers below 2**63, or a
    :class:`MaskInputError` naming ``what`` (bools, strings, NaN, infinities, fractions and
    objects that are not numbers are refused)."""
    if isinstance(given, (str, bytes)):
        raise MaskInputError(f"{what} must be a 1-D sequence of integers, got a "
                             f"{type(given).__name__}")
    try:
        arr = np.asarray(given)
    except (TypeError, ValueError, OverflowError) as err:
        raise MaskInputError(f"{what} must be a 1-D sequence of integers: "
                             f"{str(err).splitlines()[0]}") from None
    if arr.ndim != 1:
        raise MaskInputError(f"{what} must be a 1-D sequence of integers, got shape "
                             f"{arr.shape}")
    # NOTE: numpy reads [True, 2] as integers; a list's entries are looked at one by one
    values = arr.tolist() if arr.dtype.kind in "fO" or isinstance(given, (list, tuple)) \
        else None
    if values is None and arr.dtype.kind not in "iu":
        raise MaskInputError(f"{what} must be a 1-D sequence of integers, got dtype "
                             f"{arr.dtype}")
    if values is None:
        if arr.dtype == np.uint64 and len(arr) and arr.max() > np.iinfo(np.int64).max:
            raise MaskInputError(f"{what} has an entry of 2**63 or more")
        return arr.astype(np.int64)
    originals = list(given) if isinstance(given, (list, tuple)) else values
    bad = [y for x, y in zip(values, originals) if _not_whole(x) or _not_whole(y)][:1]
    if bad:
        bad = bad[0]
        shown = repr(bad) if len(repr(bad)) <= 40 else f"a {type(bad).__name__}"
        raise MaskInputError(f"{what} must be whole numbers below 2**63, got {shown}")
    return np.array([int(x) for x in values], dtype=np.int64)


def _not_whole(x) -> bool:
    return isinstance(x, (bool, np.bool_)) or not isinstance(
        x, (int, float, np.integer, np.floating)) or not math.isfinite(x) or x != int(x) \
        or abs(x) >= 2**63


def check_qkv(mdef: ir.MaskDef, q, k, v) -> None:
    """q, k and v are 4-D floating-point tensors of one dtype and device with compatible
    shapes (GQA: query heads a multiple of kv heads), or a :class:`MaskError`."""
    span = mdef.span
    for t, n in ((q, "q"), (k, "k"), (v, "v")):
        if not all(hasattr(t, a) for a in ("shape", "device", "dtype", "is_floating_point")):
            raise MaskError(f"{n} must be a torch tensor, got {type(t).__name__}")
        if len(t.shape) != 4:
            raise MaskSizeError(f"{n} must have shape (B, H, L, D), got {tuple(t.shape)}",
                                span)
        if not t.is_floating_point():
            raise MaskError(f"{n} must hold floating-point numbers, got {t.dtype}")
        if min(t.shape) < 1:
            raise MaskSizeError(f"{n} has an empty dimension: shape {tuple(t.shape)}",
                                span)
    if not q.dtype == k.dtype == v.dtype:
        raise MaskError(f"q, k and v must have one dtype, got {q.dtype}, {k.dtype}, "
                        f"{v.dtype}")
    if not q.device == k.device == v.device:
        raise MaskError(f"q, k and v must be on one device, got {q.device}, {k.device}, "
                        f"{v.device}")
    (B, Hq, _, D), (Bk, Hkv, Lk, Dk), (Bv, Hv, Lv, _) = q.shape, k.shape, v.shape
    if not (B == Bk == Bv and Hkv == Hv and Lk == Lv and D == Dk):
        raise MaskSizeError(f"incompatible shapes q {tuple(q.shape)}, k {tuple(k.shape)}, "
                            f"v {tuple(v.shape)}", span)
    if Hkv == 0 or Hq % Hkv:
        raise MaskSizeError(f"query heads ({Hq}) must be a multiple of key/value heads "
                            f"({Hkv})", span)
