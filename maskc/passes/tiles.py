"""Tile choice: the tiles each kernel of a target runs with (the pipeline's one tile rule).

Requires: a mask IR and the target's options (device type, dtype name, head dim, an optional
user :class:`KernelConfig`). Guarantees: per kernel a :class:`Tiles` whose sides are powers
of two (at least 16 on a GPU); the same inputs always give the same tiles.

The rule, for the Triton target: the user's ``config`` if given; otherwise tiles by device,
dtype and head dim (on Hopper close to FlexAttention's defaults, measured in
``bench/README.md``), then on a GPU capped at the mask's block alignment
(:func:`block_alignment`), so that every visited tile of a ``blocks(B, ...)`` mask is full.
FlexAttention runs one block size (default 128, its own default). The reference has no tiles.

The decode kernel (a few queries per sequence, forward only: :func:`use_decode`) reads tables
whose query tile is :data:`DECODE_QUERIES` queries and whose key tile is its own (64 keys on a
GPU, the keys one program loads at a time; FlashDecoding's and FlexDecoding's size); a
program packs the queries of the query heads that share a kv head (:func:`decode_packing`)
and the key tiles of a row are split across programs (:func:`decode_splits`).
Torch-free: dtypes are named (``"bfloat16"``), as torch prints them without the prefix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from maskc import ir
from maskc.errors import MaskError, MaskSizeError

__all__ = ["Tiles", "KernelConfig", "default_config", "block_alignment", "aligned",
           "check_block", "dtype_name", "kernel_tiles", "KERNELS", "DTYPES", "DECODE_QUERIES",
           "use_decode", "decode_packing", "decode_splits"]

# the kernels of each target, in the order they run
KERNELS = {"triton": ("fwd", "dq", "dkdv", "decode"), "flex": ("fwd",), "reference": ()}
DECODE_QUERIES = 16  # the most queries per sequence the decode kernel takes
DTYPES = ("float16", "bfloat16", "float32")


@dataclass(frozen=True)
class Tiles:
    """One kernel's tile (``block_q`` x ``block_k``) and launch options."""

    block_q: int
    block_k: int
    num_warps: int = 4
    num_stages: int = 3

    def __post_init__(self):
        from maskc.validate import integer
        # NOTE: ints from here on (numpy scalars converted): tiles key plan caches
        for what in ("block_q", "block_k"):
            object.__setattr__(self, what, integer(getattr(self, what), what))
        w, st = self.num_warps, self.num_stages
        if isinstance(w, bool) or not isinstance(w, int) or w < 1 or w & (w - 1) or w > 32:
            raise MaskError(f"num_warps must be a power of two from 1 to 32, got {w!r}")
        if isinstance(st, bool) or not isinstance(st, int) or st < 1:
            raise MaskError(f"num_stages must be a positive integer, got {st!r}")

    def smaller(self) -> "Tiles | None":
        """A configuration that needs fewer resources (``None`` at the smallest)."""
        if self.num_stages > 1:
            return replace(self, num_stages=1)
        if max(self.block_q, self.block_k) > 16:
            big = "block_q" if self.block_q >= self.block_k else "block_k"
            return replace(self, **{big: getattr(self, big) // 2})
        return None

    def __str__(self) -> str:
        return f"{self.block_q} x {self.block_k} ({self.num_warps} warps, {self.num_stages} stages)"


@dataclass(frozen=True)
class KernelConfig:
    """Tiles of the three generated kernels: forward, dq and dk/dv.

    Each kernel walks block tables built at its own tile size (the dk/dv kernel their
    transpose), so the three may differ, as they do in FlexAttention's defaults.
    """

    fwd: Tiles
    dq: Tiles
    dkdv: Tiles
    # token order of a grid mask: "auto" (tiled when that visits fewer tiles), "row-major",
    # or "tiled" (see maskc.passes.layout)
    layout: str = "auto"
    # the decode kernel's tiles (block_q: its tables' query tile, DECODE_QUERIES); None:
    # the forward kernel's key tile
    decode: Tiles | None = None

    @classmethod
    def uniform(cls, block_q: int, block_k: int) -> "KernelConfig":
        t = Tiles(block_q, block_k)
        return cls(t, t, t)

    def decode_tiles(self) -> Tiles:
        if self.decode is not None:
            return self.decode
        return Tiles(DECODE_QUERIES, self.fwd.block_k, 4, min(self.fwd.num_stages, 2))


def dtype_name(dtype) -> str:
    """``"bfloat16"`` for ``torch.bfloat16`` or ``"bfloat16"``; a :class:`MaskError` otherwise."""
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise MaskError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return name


def default_config(device_type: str, dtype, head_dim: int) -> KernelConfig:
    """Tiles by device, dtype and head dim (on Hopper close to FlexAttention's defaults).

    On the CPU (Triton's interpreter) the tiles are small and unequal, so that the tests
    walk several tiles and tables of different shapes for each kernel.
    """
    if str(device_type) != "cuda":
        return KernelConfig(Tiles(32, 16), Tiles(16, 32), Tiles(16, 32))
    decode = Tiles(DECODE_QUERIES, 64, 4, 2) if dtype_name(dtype) != "float32" or \
        head_dim <= 128 else Tiles(DECODE_QUERIES, 32, 4, 2)
    return replace(_gpu_config(dtype, head_dim), decode=decode)


def _gpu_config(dtype, head_dim: int) -> KernelConfig:
    if dtype_name(dtype) == "float32":  # no tensor-core tiles
        if head_dim <= 64:
            return KernelConfig(Tiles(64, 32), Tiles(32, 32, 4, 1), Tiles(32, 32, 4, 1))
        return KernelConfig(Tiles(32, 32), Tiles(32, 16, 4, 1), Tiles(16, 32, 4, 1))
    if head_dim <= 32:
        return KernelConfig(Tiles(64, 64), Tiles(64, 64), Tiles(64, 64))
    if head_dim <= 64:
        return KernelConfig(Tiles(128, 128), Tiles(128, 64, 8), Tiles(64, 128, 8))
    if head_dim <= 128:
        return KernelConfig(Tiles(128, 64, 8), Tiles(128, 64, 8), Tiles(64, 128, 8))
    return KernelConfig(Tiles(64, 32), Tiles(64, 32, 4, 2), Tiles(32, 64, 4, 2))


def block_alignment(mdef: ir.MaskDef) -> int | None:
    """The tile size that lines up with the mask's blocks, if it is made of ``blocks(B, ...)``
    only (through ``& | - ~`` and ``heads``): the largest power of two dividing every ``B``
    (at least 16). Tiles no larger than that are each inside one block, so when
    ``kv_len - q_len`` is a multiple of it (queries are aligned to the end of the keys) every
    tile the kernels visit is full and none evaluates the mask (``None``: no such size)."""
    sizes = []

    def walk(n) -> bool:
        if isinstance(n, ir.Blocks):
            sizes.append(n.size)
            return True
        if isinstance(n, ir.Const):
            return True
        if isinstance(n, ir.Heads):
            return all(walk(arm.body) for arm in n.arms)
        if isinstance(n, (ir.And, ir.Or, ir.Not)):
            return all(walk(c) for c in ir.children(n))
        return False
    if not walk(mdef.body) or not sizes:
        return None
    g = math.gcd(*sizes)
    align = g & -g  # its largest power-of-two divisor
    return align if align >= 16 else None


def aligned(config: KernelConfig, align: int | None) -> KernelConfig:
    """``config`` with every tile at most ``align`` (see :func:`block_alignment`)."""
    if align is None:
        return config

    def cap(t: Tiles) -> Tiles:
        if max(t.block_q, t.block_k) <= align:
            return t
        return replace(t, block_q=min(t.block_q, align), block_k=min(t.block_k, align),
                       num_warps=4 if align <= 64 else t.num_warps)
    return replace(config, fwd=cap(config.fwd), dq=cap(config.dq), dkdv=cap(config.dkdv),
                   decode=None if config.decode is None else
                   replace(config.decode, block_k=min(config.decode.block_k, align)))


def check_block(size, what: str, mdef: ir.MaskDef, on_gpu: bool) -> None:
    """A Triton tile side is a power of two (at least 16 on a GPU)."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1 or size & (size - 1) or \
            (on_gpu and size < 16):
        raise MaskSizeError(f"{what} must be a power of two (>= 16 on a GPU), got {size!r}",
                            mdef.span)


def score_stages(config: KernelConfig, mdef: ir.MaskDef) -> KernelConfig:
    """One pipeline stage fewer for the forward and dq kernels when the score gathers a float
    input that varies within a tile (``rel[h, p - k]``): Triton pipelines that gather through
    shared memory like the key tiles (a (128, 64) float32 tile per stage), and at Hopper's
    bfloat16 tiles for D = 128 the dq kernel then needs 256 KiB, more than the GPU has
    (measured with ``maskc compile --arch sm_90``: 196 KiB at 2 stages)."""
    from maskc.ir.scores import expand, tile_constant
    if mdef.score is None or all(tile_constant(n) for n in ir.walk(expand(mdef.score))
                                 if isinstance(n, ir.SIndex)):
        return config
    less = lambda t: replace(t, num_stages=max(1, t.num_stages - 1))  # noqa: E731
    return replace(config, fwd=less(config.fwd), dq=less(config.dq))


def kernel_tiles(mdef: ir.MaskDef, target: str, device: str, dtype: str, head_dim: int,
                 config: KernelConfig | None = None, block_size=(128, 128)) -> dict:
    """Per kernel of ``target`` (:data:`KERNELS`), its :class:`Tiles`; see the module docstring."""
    if target == "reference":
        return {}
    if target == "flex":
        return {"fwd": Tiles(*block_size)}
    gpu = device == "cuda"
    if config is None:
        config = default_config(device, dtype, head_dim)
        if gpu:
            config = score_stages(aligned(config, block_alignment(mdef)), mdef)
    tiles = {"fwd": config.fwd, "dq": config.dq, "dkdv": config.dkdv,
             "decode": config.decode_tiles()}
    for t in tiles.values():
        for what in ("block_q", "block_k"):
            check_block(getattr(t, what), what, mdef, gpu)
    if tiles["decode"].block_q < DECODE_QUERIES:
        raise MaskSizeError(f"the decode kernel's block_q must be at least {DECODE_QUERIES} "
                            f"(its tables' query tile holds every query of a sequence), got "
                            f"{tiles['decode'].block_q}", mdef.span)
    return tiles


def use_decode(q_len: int, grad: bool, grid: bool, chosen: bool) -> bool:
    """Whether a Triton call runs the decode kernel: at most :data:`DECODE_QUERIES` queries
    per sequence, no gradient, not a grid mask (its tokens are reordered) and no selection
    merged on the device."""
    return q_len <= DECODE_QUERIES and not grad and not grid and not chosen


def decode_packing(head_rows, kv_heads: int, q_len: int, most: int = 128) -> int:
    """How many query heads one decode program holds (GQA packing): the heads that share a
    kv head, when they read one table row (``head_rows``: per query head), at most ``most``
    tile rows (heads x queries); else fewer (a divisor), down to one."""
    import numpy as np
    rows = np.asarray(head_rows).reshape(kv_heads, -1)
    rep = rows.shape[1]
    for gp in range(rep, 0, -1):
        if rep % gp == 0 and gp * q_len <= most and \
                (rows.reshape(kv_heads, rep // gp, gp) == rows.reshape(
                    kv_heads, rep // gp, gp)[..., :1]).all():
            return gp
    return 1


def decode_splits(visited: int, programs: int, gpu: bool, processors: int = 132) -> tuple:
    """``(splits, tiles per split)`` for a decode call whose longest row visits ``visited``
    key tiles with ``programs`` (sequence, head pack) programs: on a GPU enough splits for
    about two programs per streaming multiprocessor (``processors``), each at least 4 tiles;
    through the interpreter up to 3 splits (so tests walk the combine)."""
    visited = max(visited, 1)
    if gpu:
        want = max(1, -(-2 * processors // max(programs, 1)))
        splits = max(1, min(want, visited // 4 or 1))
    else:
        splits = min(3, visited)
    per = -(-visited // splits)
    return -(-visited // per), per
