"""FlexAttention ``BlockMask`` objects at scale: maskc's ``flex_block_mask`` vs torch's path.

``Mask.flex_block_mask`` analyses the mask at tile granularity and builds the ``BlockMask``
itself, the backward (``q_*``) tables by a transpose of its own tile lists. Side by side:
``BlockMask.from_kv_blocks`` given the same forward tables (what maskc did before, and what a
user holding per-row tile lists does), which transposes through a dense
``k-tiles x q-tiles`` matrix per head and argsorts it. ``create_block_mask`` is not run: it
evaluates the ``mask_mod`` on every (query, key) pair (``blockmap.py`` measures it).

Each case runs in a fresh subprocess, warmed up by a small mask (imports): maskc's median of
3 calls, each on a newly compiled ``Mask`` (a ``Mask`` keeps the plans of its recent sizes,
so a repeated call costs nothing); ``from_kv_blocks`` once (seconds), and its result
compared field by field with maskc's (the entries up to each row's count).

    python bench/flexmask.py            # every case (a few minutes on 2 cores)
    python bench/flexmask.py --quick    # up to 128K tokens
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys

SIZES = {"32K": 1 << 15, "128K": 1 << 17, "1M": 1 << 20}
CASES = {
    # the case (13-18 s at 1M tokens, 98% of it in from_kv_blocks): Longformer-like
    "causal window 256": "mask m = causal & window(before = 255, after = 0)",
    "causal": "mask m = causal",
    "sliding window 4096": "mask m = causal & window(before = 4095, after = 0)",
    "packed documents": "mask m(input doc) = within(doc, causal)",
    "BigBird (block 64)": "mask m = blocks(64, window(1) | global([0]) | random(3, seed = 0))",
}


def documents(n: int):
    import numpy as np
    rng = np.random.default_rng(0)
    cuts = np.sort(rng.choice(np.arange(1, n), size=max(1, n // 8192) - 1, replace=False))
    return np.repeat(np.arange(len(cuts) + 1), np.diff(np.concatenate([[0], cuts, [n]])))


def same(a, b) -> bool:
    """Whether two ``BlockMask`` objects hold the same tables (entries up to each count)."""
    import torch
    if a.seq_lengths != b.seq_lengths or a.BLOCK_SIZE != b.BLOCK_SIZE:
        return False
    for num, idx in (("kv_num_blocks", "kv_indices"), ("full_kv_num_blocks", "full_kv_indices"),
                     ("q_num_blocks", "q_indices"), ("full_q_num_blocks", "full_q_indices")):
        na, nb = getattr(a, num), getattr(b, num)
        if not torch.equal(na, nb):
            return False
        ia, ib = getattr(a, idx), getattr(b, idx)
        keep = torch.arange(ia.shape[-1]) < na.unsqueeze(-1)
        if not torch.equal(torch.where(keep, ia, 0), torch.where(keep, ib, 0)):
            return False
    return True


def run_case(case: str, size: str) -> dict:
    import time
    import maskc
    from torch.nn.attention.flex_attention import BlockMask
    n = SIZES[size]
    inputs = {"doc": documents(n)} if "doc" in CASES[case] else {}
    maskc.compile("mask w = causal").flex_block_mask(256, 256)  # imports, first-use tables
    times = []
    for _ in range(3):  # NOTE: a new Mask each time: a Mask keeps the plans of recent sizes
        t = time.perf_counter()
        ours = maskc.compile(CASES[case]).flex_block_mask(n, n, block_size=128, **inputs)
        times.append(time.perf_counter() - t)
    t = time.perf_counter()
    theirs = BlockMask.from_kv_blocks(ours.kv_num_blocks, ours.kv_indices,
                                      ours.full_kv_num_blocks, ours.full_kv_indices,
                                      BLOCK_SIZE=ours.BLOCK_SIZE, mask_mod=ours.mask_mod,
                                      seq_lengths=ours.seq_lengths)
    torch_s = time.perf_counter() - t
    tiles = int(ours.kv_num_blocks.sum() + ours.full_kv_num_blocks.sum())
    return {"median": sorted(times)[1], "torch": torch_s,
            "same": same(ours, theirs), "tiles": tiles,
            "grid": f"{ours.kv_num_blocks.shape[-1]} x {ours.kv_indices.shape[-1]}"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--case", nargs=2, help=argparse.SUPPRESS)  # one case, in a subprocess
    args = ap.parse_args()
    if args.case:
        print(json.dumps(run_case(*args.case)))
        return
    import torch
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.system()}, "
          f"Python {platform.python_version()}, torch {torch.__version__}")
    print(f"command: python bench/flexmask.py{' --quick' if args.quick else ''}\n")
    print("| case | tokens | tiles kept | maskc flex_block_mask (median of 3) | "
          "from_kv_blocks | from_kv_blocks / maskc | same tables |")
    print("|---|---|---|---|---|---|---|")
    for case in CASES:
        for size in SIZES:
            if args.quick and SIZES[size] > 1 << 17:
                continue
            out = subprocess.run([sys.executable, __file__, "--case", case, size],
                                 capture_output=True, text=True)
            if out.returncode:
                print(f"| {case} | {size} | failed: {out.stderr.strip().splitlines()[-1]} |")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"| {case} | {size} | {r['tiles']:,} | {r['median'] * 1e3:,.0f} ms | "
                  f"{r['torch'] * 1e3:,.0f} ms | "
                  f"{r['torch'] / r['median']:,.1f}x | {'yes' if r['same'] else 'NO'} |",
                  flush=True)


if __name__ == "__main__":
    main()
