"""Bind: a mask at one size, with its runtime inputs (the pipeline's first stage).

Requires: a verified :class:`~maskc.ir.MaskDef`, lengths (``None`` for defaults), heads,
kv heads and the runtime inputs by name. Guarantees: a :class:`Bound` whose lengths, heads
and inputs are checked (every size- and input-dependent error of the back half is raised
here, once, the same for every backend); inputs are read-only ``int64`` copies of shape
``(B, kv_len)``; the host tables of ``within`` (segment starts and lengths) and of
``random``/``layout`` (the blocks each query block keeps) are built once. A ``random(r)``
or ``layout`` that no head reaches (an arm of ``heads { ... }`` no head takes) builds
nothing and cannot fail, as in the reference.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from maskc import ir
from maskc.analysis.rng import random_table
from maskc.analysis.sizes import check_elements, check_heads, prepare_inputs, resolve_lengths
from maskc.errors import MaskSizeError, MaskValueError

__all__ = ["Bound", "BlockTable", "bind", "check_coverage", "check_tables", "segment_runs",
           "digest"]


@dataclass(frozen=True, eq=False)
class BlockTable:
    """The host table of a ``random``/``layout`` node: ``table[i - first, j]`` is whether
    query block ``i`` keeps key block ``j`` (bool; rows outside keep nothing)."""

    first: int
    table: np.ndarray


@dataclass(frozen=True, eq=False)
class Bound:
    """What the back half knows once sizes and inputs are given; see the module docstring.

    ``segments[name]`` is ``(start, length)`` per key position of input ``name`` (for
    ``within``); ``blocks[id(node)]`` the :class:`BlockTable` of a ``random``/``layout`` node
    of ``mdef`` that some head reaches (keyed by identity: the plan keeps ``mdef``).
    """

    mdef: ir.MaskDef
    q_len: int
    kv_len: int
    heads: int
    kv_heads: int
    batch: int
    inputs: dict
    segments: dict
    blocks: dict


def segment_runs(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per position of ``(B, L)`` ids: the first index of its run of equal values, and the
    run's length."""
    B, L = x.shape
    idx = np.broadcast_to(np.arange(L), (B, L))
    starts = np.ones((B, L), dtype=bool)
    starts[:, 1:] = x[:, 1:] != x[:, :-1]
    ends = np.ones((B, L), dtype=bool)
    ends[:, :-1] = starts[:, 1:]
    start = np.maximum.accumulate(np.where(starts, idx, 0), axis=1)
    end = np.minimum.accumulate(np.where(ends, idx, L)[:, ::-1], axis=1)[:, ::-1]
    return start, end - start + 1


def digest(inputs: dict) -> tuple:
    """A key for runtime inputs by content (ids change per batch; tables follow them)."""
    out = []
    for name in sorted(inputs):
        x = inputs[name]
        if hasattr(x, "detach"):
            x = x.detach().cpu().numpy()
        x = np.ascontiguousarray(np.asarray(x))
        out.append((name, x.shape, x.dtype.str,
                    hashlib.blake2b(x.tobytes(), digest_size=16).hexdigest()))
    return tuple(out)


def _reached(body: ir.Node, heads: int):
    """``(node, block size above it, inside within)`` for each ``random``/``layout`` node
    that some head ``0..heads-1`` reaches, in walk order; a head that no arm of a
    ``heads { ... }`` it reaches covers is an error."""
    out = []

    def go(n, reach: frozenset, size: int, in_within: bool):
        if isinstance(n, (ir.Random, ir.Layout)):
            out.append((n, size, in_within))
            return
        if isinstance(n, ir.Heads):
            left = set(reach)
            for arm in n.arms:
                sel = set(left) if arm.heads is None else {h for h in left if h in arm.heads}
                left -= sel
                if sel:
                    go(arm.body, frozenset(sel), size, in_within)
            if left:
                raise MaskValueError(f"head {min(left)} is not covered by any arm of heads "
                                     f"{{...}} (with {heads} heads); add a '_: ...' arm", n.span)
            return
        for c in ir.children(n):
            go(c, reach, size * n.size if isinstance(n, ir.Blocks) else size,
               in_within or isinstance(n, ir.Within))
    go(body, frozenset(range(heads)), 1, False)
    return out


def check_coverage(body: ir.Node, heads: int) -> None:
    """Bind's error for a head that reaches a ``heads { ... }`` none of whose arms covers it
    (a :class:`~maskc.MaskValueError`), for callers that do not bind (the reference's dense)."""
    _reached(body, heads)


def check_tables(mdef: ir.MaskDef, q_len: int, kv_len: int, heads: int) -> None:
    """Bind's errors about the ``random``/``layout`` tables (too few key blocks, a table
    over the dense limit), without building them: for stages that build their own (block
    analysis), so they fail as bind does and before any work."""
    for node, size, in_within in _reached(mdef.body, heads):
        if isinstance(node, ir.Random):
            first, last, nkb = _random_rows(node, size, in_within, q_len, kv_len)
            check_elements((last - first + 1) * nkb, f"random()'s table of "
                           f"{last - first + 1:,} x {nkb:,} blocks (use larger blocks)",
                           node.span)


def _random_rows(node, size: int, in_within: bool, q_len: int, kv_len: int):
    """``(first, last, n_key_blocks)`` of a ``random`` node's table; too few key blocks is
    an error."""
    nkb = -(-kv_len // size)
    first, last = (kv_len - q_len) // size, (kv_len - 1) // size
    if in_within:
        first = 0  # segment-relative blocks; rows before a segment keep nothing anyway
    if node.r > nkb:
        raise MaskValueError(f"random({node.r}) needs at least {node.r} key blocks, but "
                             f"there are {nkb}", node.span)
    return first, last, nkb


def _block_table(node, size: int, in_within: bool, q_len: int, kv_len: int) -> BlockTable:
    if isinstance(node, ir.Random):
        first, last, nkb = _random_rows(node, size, in_within, q_len, kv_len)
        table = random_table(node.seed, np.arange(first, last + 1), nkb, node.r, node.span)
        return BlockTable(first, table)
    rows = node.rows
    table = np.array(rows, dtype=bool).reshape(len(rows), -1) if rows and rows[0] \
        else np.zeros((0, 0), dtype=bool)
    return BlockTable(0, table)


def bind(mdef: ir.MaskDef, q_len=None, kv_len=None, heads: int = 1, kv_heads=None,
         inputs: dict | None = None) -> Bound:
    """Check sizes and inputs and build the host tables; see the module docstring."""
    q_len, kv_len = resolve_lengths(mdef, q_len, kv_len)
    heads = check_heads(mdef, heads)
    kv_heads = heads if kv_heads is None else kv_heads
    if isinstance(kv_heads, (bool, np.bool_)) or not isinstance(kv_heads, (int, np.integer)) \
            or not 1 <= kv_heads <= heads or heads % kv_heads:
        raise MaskSizeError(f"query heads ({heads}) must be a multiple of key/value heads "
                            f"({kv_heads!r})", mdef.span)
    inputs = dict(inputs or {})
    # NOTE: copies: tables built later, for the backward, must see the inputs of the
    # forward even if the caller refills its buffer.
    xs = prepare_inputs(mdef, kv_len, inputs, copy=True, heads=heads)
    for x in xs.values():
        x.setflags(write=False)
    batch = max([x.shape[0] for x in xs.values()] or [1])
    within = {n.input for n in ir.walk(mdef.body) if isinstance(n, ir.Within)}
    segments = {name: segment_runs(xs[name]) for name in sorted(within)}
    blocks = {id(n): _block_table(n, size, w, q_len, kv_len)
              for n, size, w in _reached(mdef.body, heads)}
    return Bound(mdef, q_len, kv_len, heads, int(kv_heads), batch, xs, segments, blocks)
