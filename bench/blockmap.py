"""Tile structures side by side: maskc's block analysis vs FlexAttention's create_block_mask.

Each case runs in a fresh subprocess (so peak memory is that case's alone) and reports the
median wall time of several runs and the peak resident memory of its process. FlexAttention
is given maskc's generated ``mask_mod`` for the same pattern and the same tile size, eager
and with ``_compile=True`` (its first call includes compilation, as a user sees it).

    python bench/blockmap.py            # all cases (~10 minutes on 2 cores)
    python bench/blockmap.py --quick    # small sizes only
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

from maskc.testing import peak_rss_mib

CASES = {
    "swa256-8K": ("mask m = causal & window(before = 256, after = 0)", 8192),
    "swa256-32K": ("mask m = causal & window(before = 256, after = 0)", 32768),
    "swa256-128K": ("mask m = causal & window(before = 256, after = 0)", 131072),
    "swa256-1M": ("mask m = causal & window(before = 256, after = 0)", 1 << 20),
    "natten2d-128x128-k13": ("mask m over grid(128, 128) = neighborhood(13)", None),
    "natten3d-16x32x32-k377": ("mask m over grid(16, 32, 32) = neighborhood((3, 7, 7))", None),
    "natten3d-30x48x80-k18x24x24": ("mask m over grid(30, 48, 80) = neighborhood((18, 24, 24))",
                                    None),
    "bigbird-16K": ("mask m = blocks(64, window(1) | global([0]) | random(3, seed = 7))", 16384),
    "packed-32K": ("mask m(input doc) = causal & same(doc)", 32768),
}
QUICK = ("swa256-8K", "natten2d-128x128-k13", "bigbird-16K")
# FlexAttention runs that cannot finish or fit here are not attempted (NOTES.md measured them):
# eager create_block_mask at 64K tokens tries to allocate 32 GiB.
SKIP = {("eager", "swa256-128K"): "eager create_block_mask needs > 32 GiB at >= 64K tokens",
        ("eager", "swa256-1M"): "eager create_block_mask needs > 32 GiB at >= 64K tokens",
        ("eager", "natten3d-30x48x80-k18x24x24"):
            "eager create_block_mask needs > 32 GiB at >= 64K tokens"}
BLOCK = 128


def _inputs(name, n):
    import numpy as np
    if "packed" not in name:
        return {}
    rng = np.random.default_rng(0)
    lengths = rng.integers(256, 4096, size=64)
    lengths = lengths[np.cumsum(lengths) < n]
    return {"doc": np.repeat(np.arange(len(lengths) + 1),
                             list(lengths) + [n - int(lengths.sum())])}


def run_case(side: str, name: str, repeats: int) -> dict:
    """In the child: build the tile structure ``repeats`` times; report times and peak RSS."""
    import tracemalloc

    import maskc
    src, n = CASES[name]
    m = maskc.compile(src)
    n = n or int(__import__("numpy").prod(m.grid))
    inputs = _inputs(name, n)
    times = []

    def once():
        if side == "maskc":
            bm = m.block_map(n, block_q=BLOCK, **inputs)
            return bm.stats["full"] + bm.stats["partial"]
        from torch.nn.attention.flex_attention import create_block_mask
        mod = m.mask_mod(n, **inputs)
        bmask = create_block_mask(mod, None, None, n, n, device="cpu", BLOCK_SIZE=BLOCK,
                                  _compile=side == "compiled")
        return int(bmask.kv_num_blocks.sum() + bmask.full_kv_num_blocks.sum())

    for _ in range(repeats):
        t0 = time.perf_counter()
        visited = once()
        times.append(time.perf_counter() - t0)
    traced_mb = 0.0
    if side == "maskc":  # one more run, traced, for memory (tracing slows allocation)
        tracemalloc.start()
        once()
        traced_mb = tracemalloc.get_traced_memory()[1] / 2**20
    peak_mb = peak_rss_mib()
    return {"times": times, "peak_mb": peak_mb, "traced_mb": traced_mb, "visited": visited}


def _child(side, name, repeats, timeout):
    cmd = [sys.executable, __file__, "--child", side, name, str(repeats)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"over {timeout} s"}
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["killed"])[-1]
        return {"error": last[:120]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _base_mb(side: str) -> float:
    """Peak RSS of a child that only imports what ``side`` imports (subtracted from each case)."""
    mods = "maskc, numpy" if side == "maskc" else "maskc, numpy, torch"
    code = (f"import {mods}; from maskc.testing import peak_rss_mib; print(peak_rss_mib())")
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True,
                                text=True).stdout)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--child", nargs=3)
    ap.add_argument("--timeout", type=int, default=600)
    ap.add_argument("--cases", nargs="*", help="run only these cases")
    args = ap.parse_args()
    if args.child:
        side, name, repeats = args.child
        print(json.dumps(run_case(side, name, int(repeats))))
        return
    import torch
    print(f"# machine: {platform.machine()}, {os.cpu_count()} cores, {platform.system()}, "
          f"python {platform.python_version()}, torch {torch.__version__}")
    print(f"# command: python bench/blockmap.py{' --quick' if args.quick else ''}")
    print(f"# tile size {BLOCK}; times are medians (n runs), maskc's first run in brackets "
          "(it builds per-axis tables that later calls reuse); MB is the case's peak RSS above a "
          "process that only imported the same modules (maskc side: maskc and numpy; flex "
          "side: also torch); 'traced' is maskc's peak allocation seen by tracemalloc in one "
          "extra, untimed run")
    base = {side: _base_mb(side) for side in ("maskc", "eager")}
    base["compiled"] = base["eager"]
    header = ("| case | maskc | flex eager | flex _compile=True | eager / maskc | "
              "compiled / maskc | maskc MB (traced) | eager MB | compiled MB |")
    print(header)
    print("|" + "---|" * 9)
    for name in args.cases or (QUICK if args.quick else CASES):
        row = {}
        for side, repeats in (("maskc", 5), ("eager", 1), ("compiled", 1)):
            if (side, name) in SKIP:
                row[side] = {"error": SKIP[(side, name)]}
                continue
            row[side] = _child(side, name, repeats if side == "maskc" else 1, args.timeout)

        def t(side):
            r = row[side]
            if "error" in r:
                return "—", None
            med = statistics.median(r["times"])
            first = f", first {r['times'][0] * 1000:,.1f}" if len(r["times"]) > 1 else ""
            return f"{med * 1000:,.1f} ms (n={len(r['times'])}{first})", med

        def mb(side):
            r = row[side]
            if "error" in r:
                return "—"
            traced = f" ({r['traced_mb']:,.2f})" if side == "maskc" else ""
            return f"{max(0.0, r['peak_mb'] - base[side]):,.0f}{traced}"

        (ms, m_t), (es, e_t), (cs, c_t) = t("maskc"), t("eager"), t("compiled")
        ratio = lambda x: f"{x / m_t:,.0f}x" if x and m_t else "—"  # noqa: E731
        print(f"| {name} | {ms} | {es} | {cs} | {ratio(e_t)} | {ratio(c_t)} | {mb('maskc')} "
              f"| {mb('eager')} | {mb('compiled')} |")
        for side in ("eager", "compiled"):
            if "error" in row[side]:
                print(f"|  | | {side}: {row[side]['error']} | | | | | | |")
        if "error" not in row["maskc"] and "error" not in row["eager"] and \
                row["maskc"]["visited"] != row["eager"]["visited"]:
            print(f"|  | visited tiles differ: maskc {row['maskc']['visited']}, "
                  f"flex {row['eager']['visited']} | | | | | | | |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
