"""What the first Triton call at a new size costs on the host: building the block tables.

For each pattern of ``bench/gpu.py``, a fresh process compiles the mask and builds what
``Mask.attention(backend="triton")`` builds before its first launch (the token layout
choice for grids, the forward and dq tables, the transposed dk/dv tables), with the tiles a
Hopper GPU gets in bfloat16. Nothing runs on a GPU, so this runs anywhere; FlexAttention's
counterpart is ``create_block_mask`` (``bench/blockmap.py``). Later calls at the same size
reuse the tables (cached on the Mask).

Side by side: grid masks decided on boxes (the default) and without them (per-query counts
in row-major order, evaluating each candidate tile under a layout: what maskc did before,
and still does for axes longer than ``gridboxes.AXIS_TABLE_LIMIT``).

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


def _child(name: str, boxes: bool) -> dict:
    import numpy as np
    import torch

    import maskc
    from maskc.analysis import gridboxes
    from maskc.backends import triton as tb
    if not boxes:
        gridboxes.AXIS_TABLE_LIMIT = 0
    src, n, heads, head_dim, inputs, _ = PATTERNS[name]
    t0 = time.perf_counter()
    m = maskc.compile(src)
    n = n or int(np.prod(m.grid))
    xs = {"doc": _docs(n)} if inputs == "docs" else {}
    config = tb.aligned(tb.default_config("cuda", torch.bfloat16, head_dim),
                        tb.block_alignment(m.ir))
    plan = tb.Plan(m.ir, n, n, heads, torch.device("cpu"), xs)
    t1 = time.perf_counter()
    plan.choose_layout(config.layout, config.fwd)
    t2 = time.perf_counter()
    plan.rows(config.fwd.block_q, config.fwd.block_k)
    plan.rows(config.dq.block_q, config.dq.block_k)
    plan.columns(config.dkdv.block_q, config.dkdv.block_k)
    t3 = time.perf_counter()
    return {"compile": t1 - t0, "layout": t2 - t1, "tables": t3 - t2, "total": t3 - t0,
            "tiled": plan.layout is not None}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3, help="fresh processes per pattern")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("patterns", nargs="*")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(args.child[0], args.child[1] == "boxes")))
        return
    unknown = set(args.patterns) - set(PATTERNS)
    if unknown:
        ap.error(f"unknown patterns: {', '.join(sorted(unknown))}")
    print(f"# machine: {platform.machine()}, {os.cpu_count()} cores, {platform.system()}, "
          f"python {platform.python_version()}")
    print(f"# command: python bench/plans.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"# seconds, median of {args.repeats} fresh processes (first call at the size); "
          "Hopper bfloat16 tiles")
    print("| pattern | layout | compile spec | choose layout | tables (fwd, dq, dk/dv) | total "
          "| total without boxes | without / with |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.patterns or PATTERNS:
        med = {}
        for how in ("boxes", "no-boxes"):
            runs = []
            for _ in range(args.repeats):
                out = subprocess.run([sys.executable, __file__, "--child", name, how],
                                     text=True, capture_output=True)
                if out.returncode != 0:
                    sys.exit(f"{name}: {out.stderr.strip()[-500:]}")
                runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            med[how] = {k: statistics.median(r[k] for r in runs) for k in
                        ("compile", "layout", "tables", "total")}
            med[how]["tiled"] = runs[0]["tiled"]
        b, o = med["boxes"], med["no-boxes"]
        print(f"| {name} | {'tiled' if b['tiled'] else 'row-major'} | {b['compile']:.3f} | "
              f"{b['layout']:.3f} | {b['tables']:.3f} | {b['total']:.3f} | {o['total']:.3f} | "
              f"{o['total'] / b['total']:.1f}x |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
