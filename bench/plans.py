"""What the first Triton call at a new size costs on the host: building the block tables.

For each pattern of ``bench/gpu.py``, a fresh process compiles the mask and builds what
``Mask.attention(backend="triton")`` builds before its first launch (the token layout
choice for grids, the forward and dq tables, the transposed dk/dv tables), with the tiles a
Hopper GPU gets in bfloat16. Nothing runs on a GPU, so this runs anywhere; FlexAttention's
counterpart is ``create_block_mask`` (``bench/blockmap.py``). Later calls at the same size
reuse the tables (cached on the Mask).

Side by side: grid masks decided on boxes (the default) and without them (per-query counts
in row-major order, evaluating each candidate tile under a layout: what maskc did before,
and still does for axes longer than ``gridboxes.AXIS_TABLE_LIMIT``); and per-head masks at
32 and 64 heads with head grouping (heads of one pattern analysed once, one table row per
group) and without it (every head analysed, one row per head: maskc before plans), their
table memory and first-call host time.

    python bench/plans.py [--repeats N] [PATTERN ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from gpu import PATTERNS, _docs  # noqa: E402


# Per-head masks (MoA / DuoAttention style): few patterns over many heads.
HEADS = {
    "moa2-32h-16K": ("mask m = heads { 0..4: causal & window(before = 255, after = 0), "
                     "_: causal }", 16384, 32),
    "moa2-64h-16K": ("mask m = heads { 0..4: causal & window(before = 255, after = 0), "
                     "_: causal }", 16384, 64),
    "moa3-64h-16K": ("mask m = heads { 0..8: causal & window(before = 127, after = 0), "
                     "8..16: causal & window(before = 1023, after = 0), _: causal }", 16384, 64),
}


def _plan_all(m, n, heads, head_dim, xs):
    """What the first attention call plans: the forward, dq and transposed dk/dv tables."""
    grid = m.grid is not None
    plan = m.plan(None if grid else n, None if grid else n, heads, device="cuda",
                  dtype="bfloat16", head_dim=head_dim, **xs)
    plan.block_map("dq")
    plan.transposed("dkdv")
    return plan


def _table_bytes(plan) -> int:
    total = 0
    for kernel in plan.kernels:
        bm = plan.block_map(kernel)
        total += sum(a.nbytes for a in (bm.kv_num_blocks, bm.kv_indices, bm.full_kv_num_blocks,
                                        bm.full_kv_indices, bm.variant, bm.live))
    return total + sum(a.nbytes for a in plan.transposed("dkdv"))


def _child(name: str, mode: str) -> dict:
    import numpy as np

    import maskc
    from maskc.analysis import blocktable, gridboxes
    from maskc import pipeline
    if mode == "no-boxes":
        gridboxes.AXIS_TABLE_LIMIT = 0
    if mode == "ungrouped":  # one table row per head, each head analysed: maskc before plans
        blocktable.head_patterns = lambda mdef, heads: np.arange(heads, dtype=np.int32)
        pipeline.group_heads = lambda bm, kv_heads: (bm, None)
    if name in HEADS:
        src, n, heads = HEADS[name]
        head_dim, xs = 128, {}
    else:
        src, n, heads, head_dim, inputs, _ = PATTERNS[name]
    t0 = time.perf_counter()
    m = maskc.compile(src)
    if name not in HEADS:
        n = n or int(np.prod(m.grid))
        xs = {"doc": _docs(n)} if inputs == "docs" else {}
    t1 = time.perf_counter()
    plan = _plan_all(m, n, heads, head_dim, xs)
    t2 = time.perf_counter()
    return {"compile": t1 - t0, "plan": t2 - t1, "total": t2 - t0,
            "tiled": plan.layout is not None, "bytes": _table_bytes(plan),
            "rows": int(plan.block_map("fwd").kv_num_blocks.shape[1])}


def _median(name: str, mode: str, repeats: int) -> dict:
    runs = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, __file__, "--child", name, mode], text=True,
                             capture_output=True)
        if out.returncode != 0:
            sys.exit(f"{name}: {out.stderr.strip()[-500:]}")
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    med = {k: statistics.median(r[k] for r in runs) for k in ("compile", "plan", "total")}
    return {**med, "tiled": runs[0]["tiled"], "bytes": runs[0]["bytes"], "rows": runs[0]["rows"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3, help="fresh processes per pattern")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("patterns", nargs="*")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(args.child[0], args.child[1])))
        return
    unknown = set(args.patterns) - set(PATTERNS) - set(HEADS)
    if unknown:
        ap.error(f"unknown patterns: {', '.join(sorted(unknown))}")
    print(f"# machine: {platform.machine()}, {os.cpu_count()} cores, {platform.system()}, "
          f"python {platform.python_version()}")
    print(f"# command: python bench/plans.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"# seconds, median of {args.repeats} fresh processes (first call at the size); "
          "Hopper bfloat16 tiles, head dim 128")
    todo = args.patterns or [*PATTERNS, *HEADS]
    grids = [n for n in todo if n in PATTERNS]
    if grids:
        print("| pattern | layout | compile spec | plan (layout, fwd, dq, dk/dv tables) | total "
              "| total without boxes | without / with |")
        print("|---|---|---|---|---|---|---|")
    for name in grids:
        b, o = _median(name, "boxes", args.repeats), _median(name, "no-boxes", args.repeats)
        print(f"| {name} | {'tiled' if b['tiled'] else 'row-major'} | {b['compile']:.3f} | "
              f"{b['plan']:.3f} | {b['total']:.3f} | {o['total']:.3f} | "
              f"{o['total'] / b['total']:.1f}x |")
        sys.stdout.flush()
    heads = [n for n in todo if n in HEADS]
    if heads:
        print()
        print("| per-head pattern | heads | table rows ungrouped / grouped | table memory "
              "ungrouped | grouped | ratio | plan s ungrouped | grouped | ratio |")
        print("|---|---|---|---|---|---|---|---|---|")
    for name in heads:
        u, g = _median(name, "ungrouped", args.repeats), _median(name, "boxes", args.repeats)
        mib = 1 << 20
        print(f"| {name} | {HEADS[name][2]} | {u['rows']} / {g['rows']} | "
              f"{u['bytes'] / mib:.1f} MiB | {g['bytes'] / mib:.1f} MiB | "
              f"{u['bytes'] / g['bytes']:.1f}x | {u['plan']:.3f} | {g['plan']:.3f} | "
              f"{u['plan'] / g['plan']:.1f}x |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
