"""Token layout for grid masks: a permutation that makes N-D neighborhoods block-dense.

A mask ``over grid(n1, ..., nd)`` numbers its tokens in row-major order (the last axis
varies fastest), so the keys of a 2-D or 3-D neighborhood are scattered over many rows of
a kernel's ``(BLOCK_Q, BLOCK_K)`` tiles. Reordering the tokens tile by tile -- every
spatial tile of shape ``(t1, ..., td)`` made contiguous, tiles in row-major order, tokens
row-major inside each tile -- turns a neighborhood into a few nearly full blocks, as
NATTEN's token permutation does (choose ``prod(t)`` equal to the kernel's tile size).

Requires: a grid shape of positive sizes and a tile shape of positive sizes, one per axis.
Guarantees: ``perm`` is a permutation of ``0..N-1`` with ``N = prod(grid_shape)``, pad-free:
a grid size that the tile does not divide gives smaller last tiles along that axis, never
padding tokens. Attention is equivariant under it: attending with permuted ``q``/``k``/``v``
and :func:`permuted_dense` of the mask, then unpermuting the output, gives the original
attention exactly (each row sees the same keys with the same scores, only reordered).

Everything here is a pure function of its arguments; no IR is changed. NumPy arrays and
torch tensors are both accepted by :func:`permute` / :func:`unpermute` (torch is never
imported by this module: a tensor can only exist if torch is already loaded).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field

import numpy as np

from maskc.errors import MaskValueError

__all__ = ["TokenLayout", "choose_tile_shape", "make_layout", "permute", "unpermute",
           "permuted_dense"]


def _shape(values, what: str) -> tuple[int, ...]:
    """``values`` as a non-empty tuple of positive ints, or a :class:`MaskValueError`."""
    try:
        values = tuple(values)
        out = tuple(int(v) for v in values)
    except (TypeError, ValueError):
        raise MaskValueError(f"{what} must be a sequence of integers, got {values!r}") from None
    if not out or any(v < 1 or v != w for v, w in zip(out, values)):
        raise MaskValueError(f"{what} must be one or more positive integers, got {values!r}")
    return out


def choose_tile_shape(grid_shape, tokens_per_tile: int, kernel=None) -> tuple[int, ...]:
    """A spatial tile shape for :func:`make_layout`.

    Requires: ``grid_shape`` positive sizes, ``tokens_per_tile >= 1``, and ``kernel`` (a
    neighborhood's kernel size per axis, or ``None``) of the same length as the grid.
    Guarantees: ``1 <= t[i] <= grid_shape[i]`` and ``prod(t) <= tokens_per_tile``, with the
    largest product the grid allows (exactly ``tokens_per_tile`` whenever some shape
    reaches it); among those, the shape whose aspect ratio best matches ``kernel`` (by the
    spread of ``log(t[i] / kernel[i])``; balanced axes when no kernel is given), then the
    one dividing the most axes evenly (fewer ragged tiles), then the lexicographically
    largest. Deterministic.
    """
    shape = _shape(grid_shape, "grid_shape")
    if int(tokens_per_tile) != tokens_per_tile or tokens_per_tile < 1:
        raise MaskValueError(f"tokens_per_tile must be a positive integer, got "
                             f"{tokens_per_tile!r}")
    T = int(tokens_per_tile)
    target = (1,) * len(shape) if kernel is None else _shape(kernel, "kernel")
    if len(target) != len(shape):
        raise MaskValueError(f"kernel {tuple(target)} has {len(target)} axes but the grid "
                             f"{shape} has {len(shape)}")
    logs = [math.log(k) for k in target]

    def key(t: tuple[int, ...]):
        dev = [math.log(ti) - lk for ti, lk in zip(t, logs)]
        mean = sum(dev) / len(dev)
        spread = round(sum((x - mean) ** 2 for x in dev), 9)  # NOTE: rounded so ties are ties
        even = sum(n % ti == 0 for n, ti in zip(shape, t))
        return (-math.prod(t), spread, -even, tuple(-ti for ti in t))

    # NOTE: for a fixed choice of the leading axes, the largest last entry that fits wins on
    # the first key, so only the leading axes need enumerating (about T log T candidates in
    # 3-D instead of T log^2 T).
    best = None
    for lead in _leading(shape[:-1], T):
        t = lead + (min(shape[-1], T // math.prod(lead)),)
        if best is None or key(t) < key(best):
            best = t
    return best


def _leading(shape: tuple[int, ...], budget: int):
    """Every tuple ``t`` with ``1 <= t[i] <= shape[i]`` and ``prod(t) <= budget``."""
    if not shape:
        yield ()
        return
    for t0 in range(1, min(shape[0], budget) + 1):
        for rest in _leading(shape[1:], budget // t0):
            yield (t0,) + rest


@dataclass(frozen=True, slots=True)
class TokenLayout:
    """A tile-by-tile token order for a grid; build with :func:`make_layout`.

    ``perm[i]`` is the original (row-major) token at new position ``i``; ``inv`` is its
    inverse (``inv[perm[i]] == i``). Both are read-only ``int64`` arrays. Equality and
    hashing go by ``(grid_shape, tile_shape)``, which determine the arrays.
    """

    grid_shape: tuple[int, ...]
    tile_shape: tuple[int, ...]
    perm: np.ndarray = field(compare=False, repr=False)
    inv: np.ndarray = field(compare=False, repr=False)

    @property
    def numel(self) -> int:
        """The number of tokens, ``prod(grid_shape)``."""
        return int(self.perm.shape[0])


def make_layout(grid_shape, tile_shape) -> TokenLayout:
    """The tile-major token order of ``grid_shape`` for tiles of ``tile_shape``.

    Requires: positive sizes, one tile size per grid axis (a tile size larger than its axis
    acts as the axis size). Guarantees: tiles appear in row-major order of their tile
    coordinates ``c // t``; each tile's tokens are contiguous and in row-major order inside
    it; a tile at the far end of an axis that ``t`` does not divide is just smaller there
    (``n % t`` wide), so ``perm`` is a permutation of ``0..N-1`` with no padding. With every
    ``t[i] == 1`` (or a single tile covering the grid) ``perm`` is the identity.
    """
    shape = _shape(grid_shape, "grid_shape")
    tile = _shape(tile_shape, "tile_shape")
    if len(tile) != len(shape):
        raise MaskValueError(f"tile_shape {tile} has {len(tile)} axes but the grid {shape} "
                             f"has {len(shape)}")
    tile = tuple(min(t, n) for t, n in zip(tile, shape))
    ntiles = tuple(-(-n // t) for n, t in zip(shape, tile))
    coords = np.indices(shape, dtype=np.int64).reshape(len(shape), -1)
    # NOTE: sort by (tile index, position inside the tile), each row-major. Inside-tile
    # positions are numbered as if every tile were full, so ragged last tiles keep their
    # order with no gaps in the result: argsort only needs the keys to be distinct.
    tile_id = np.ravel_multi_index(tuple(coords // np.array(tile)[:, None]), ntiles)
    inner_id = np.ravel_multi_index(tuple(coords % np.array(tile)[:, None]), tile)
    perm = np.argsort(tile_id * math.prod(tile) + inner_id, kind="stable").astype(np.int64)
    inv = np.empty_like(perm)
    inv[perm] = np.arange(perm.shape[0], dtype=np.int64)
    perm.setflags(write=False)
    inv.setflags(write=False)
    return TokenLayout(shape, tile, perm, inv)


def _take(x, index: np.ndarray, dim: int, what: str):
    """``x`` reindexed by ``index`` along ``dim``: ``np.take`` or ``Tensor.index_select``."""
    # NOTE: torch can only be needed if it is already loaded (x would not be a tensor
    # otherwise), so look it up instead of importing it: `import maskc` stays torch-free.
    torch = sys.modules.get("torch")
    is_tensor = torch is not None and isinstance(x, torch.Tensor)
    if not is_tensor:
        x = np.asarray(x)
    ndim = len(x.shape)
    if not -ndim <= dim < ndim:
        raise MaskValueError(f"{what}: dim {dim} is out of range for a {ndim}-D array")
    size = x.shape[dim]
    if size != index.shape[0]:
        raise MaskValueError(f"{what}: dim {dim} has {size} tokens but the layout has "
                             f"{index.shape[0]}")
    if is_tensor:
        # NOTE: index_select keeps autograd, dtype and device; the index must live there too
        # (copied: torch.from_numpy warns on the layout's read-only arrays).
        return x.index_select(dim, torch.from_numpy(np.array(index)).to(x.device))
    return np.take(x, index, axis=dim)


def permute(x, layout: TokenLayout, dim: int):
    """``x`` with axis ``dim`` in the layout's order: ``out[..., i, ...] = x[..., perm[i], ...]``.

    Requires: ``x.shape[dim] == prod(layout.grid_shape)``; ``x`` a NumPy array (or array-like)
    or a torch tensor. Guarantees: a new array/tensor of the same type, dtype, device and
    shape; differentiable for tensors. :func:`unpermute` undoes it.
    """
    return _take(x, layout.perm, dim, "permute")


def unpermute(x, layout: TokenLayout, dim: int):
    """The inverse of :func:`permute`: ``out[..., perm[i], ...] = x[..., i, ...]``."""
    return _take(x, layout.inv, dim, "unpermute")


def permuted_dense(mask_dense, layout: TokenLayout):
    """The mask in the permuted token order: ``M'[..., i, j] = M[..., perm[i], perm[j]]``.

    Requires: the last two axes of ``mask_dense`` (queries, keys) both hold the grid's
    tokens, as ``Mask.dense()`` of a mask over the grid returns (``(H, N, N)`` or
    ``(B, H, N, N)``). Guarantees: same type and shape; attention on permuted q/k/v with
    this mask equals the permuted attention with the original mask.
    """
    return permute(permute(mask_dense, layout, -2), layout, -1)
