"""Head grouping: heads with the same tile structure share one table (networkx components).

Requires: a :class:`~maskc.analysis.blocktable.BlockMap` (one table row per head, or one shared).
Guarantees: ``structure[h] == structure[h2]`` iff the two heads visit the same full and
partial tiles; ``predicate[h] == predicate[h2]`` iff, in addition, every partial tile has
the same live predicate; the returned map stores one table per predicate group, and
``kv_groups`` lists, per kv head (GQA), its query heads split by predicate group so a
kernel can load K/V once for each list. Groups are numbered by their smallest head.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

import networkx as nx
import numpy as np

from maskc.analysis.blocktable import BlockMap
from maskc.errors import MaskSizeError

__all__ = ["HeadGroups", "group_heads"]


@dataclass(frozen=True, eq=False)
class HeadGroups:
    structure: np.ndarray                       # (H,) structure group of each head
    predicate: np.ndarray                       # (H,) predicate group (= table row) of each head
    kv_groups: tuple[tuple[int, tuple[int, ...]], ...]  # (kv head, query heads sharing a table)


def _components(keys: list[bytes]) -> np.ndarray:
    graph = nx.Graph()
    graph.add_nodes_from(range(len(keys)))
    first: dict[bytes, int] = {}
    for h, key in enumerate(keys):
        if key in first:
            graph.add_edge(first[key], h)
        else:
            first[key] = h
    comps = sorted((sorted(c) for c in nx.connected_components(graph)), key=lambda c: c[0])
    out = np.zeros(len(keys), dtype=np.int32)
    for i, comp in enumerate(comps):
        out[comp] = i
    return out


def group_heads(bm: BlockMap, kv_heads: int | None = None) -> tuple[BlockMap, HeadGroups]:
    """Merge identical per-head tables; see the module docstring."""
    H = bm.heads
    kv_heads = kv_heads or H
    if H % kv_heads:
        raise MaskSizeError(f"{H} query heads cannot share {kv_heads} kv heads")

    # NOTE: tables are compared per table row (a digest of each), not per head: a
    # head-independent mask has one row however many heads, and rows can be large.
    def digest(g, with_variants) -> bytes:
        parts = [bm.kv_num_blocks[:, g], bm.kv_indices[:, g], bm.full_kv_num_blocks[:, g],
                 bm.full_kv_indices[:, g]]
        if with_variants:  # what a partial tile evaluates: its live predicate and terms
            parts += [bm.variant[:, g]] + ([] if bm.live is None else [bm.live[:, g]])
        h = hashlib.blake2b(digest_size=32)
        for p in parts:
            h.update(str(p.shape).encode())
            h.update(np.ascontiguousarray(p).tobytes())
        return h.digest()

    G = bm.kv_num_blocks.shape[1]
    # NOTE: one table row has nothing to compare with (hashing it cost 1.5 s for causal
    # attention at 1M tokens, 268 MB of tables)
    keys = {with_v: [digest(g, with_v) if G > 1 else b"" for g in range(G)]
            for with_v in (False, True)}
    structure = _components([keys[False][g] for g in bm.head_group])
    predicate = _components([keys[True][g] for g in bm.head_group])
    rows = [int(bm.head_group[np.flatnonzero(predicate == g)[0]]) for g in range(predicate.max() + 1)]
    if rows == list(range(G)):  # already one row per group: no copy of the tables
        merged = replace(bm, head_group=predicate)
    else:
        merged = replace(bm, head_group=predicate, kv_num_blocks=bm.kv_num_blocks[:, rows],
                         kv_indices=bm.kv_indices[:, rows],
                         full_kv_num_blocks=bm.full_kv_num_blocks[:, rows],
                         full_kv_indices=bm.full_kv_indices[:, rows],
                         variant=bm.variant[:, rows],
                         live=None if bm.live is None else bm.live[:, rows])
    per_kv = H // kv_heads
    kv_groups = []
    for kv in range(kv_heads):
        heads = range(kv * per_kv, (kv + 1) * per_kv)
        for g in sorted({int(predicate[h]) for h in heads}):
            kv_groups.append((kv, tuple(h for h in heads if predicate[h] == g)))
    return merged, HeadGroups(structure, predicate, tuple(kv_groups))
