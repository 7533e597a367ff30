"""A selection turned into tile tables, per step: maskc vs FlexAttention's from_kv_blocks.

A content-chosen mask (`blocks(64, select(idx))`, LANGUAGE.md section 8) gets new indices
every step, so its tables are rebuilt every step. maskc merges them into its static tables
with tensor operations (`plan.chosen.tables`, what each Triton call runs, here on the CPU):
the forward kernel's tables alone (inference), and those of all three kernels (a training
step: forward, dq, and the transposed dk/dv ones); FlexAttention with
`BlockMask.from_kv_blocks` from the same indices (as counts and a padded index table, the
form it takes; it builds both directions). Each case runs in a fresh subprocess; the median of several runs and the
peak resident memory of the process (minus what it held before) are reported.

    python bench/selection.py            # every case (several minutes on 2 cores)
    python bench/selection.py --quick    # 32K tokens only
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys

from maskc.testing import peak_rss_mib, reset_peak_rss

BLOCK = 64
SIZES = {"32K": 1 << 15, "128K": 1 << 17, "256K": 1 << 18, "1M": 1 << 20}
CASES = [(size, heads, r) for size in SIZES for heads in (8, 32) for r in (8, 16)]
# from_kv_blocks builds (B, H, NB, NB) int32 tables to transpose them: over 8 GiB at 1M
# tokens (NB = 16,384) for 8 heads, 34 GiB for 32; not attempted
SKIP = {("flex", "1M", 8): "dense (H, NB, NB) transpose: 8.6 GB",
        ("flex", "1M", 32): "dense (H, NB, NB) transpose: 34 GB"}


def indices(n: int, heads: int, r: int):
    """Up to r key blocks per query block and head, causal (block j <= i), ascending, drawn
    uniformly with repeats dropped (padding -1 at the end, as the estimators return)."""
    import numpy as np
    nb = -(-n // BLOCK)
    rng = np.random.default_rng(0)
    rows = np.arange(nb)[None, :, None]
    pick = np.sort((rng.random((heads, nb, r)) * (rows + 1)).astype(np.int32), axis=-1)
    pick[..., 1:][pick[..., 1:] == pick[..., :-1]] = np.iinfo(np.int32).max
    pick = np.sort(pick, axis=-1)
    return np.where(pick == np.iinfo(np.int32).max, -1, pick).astype(np.int32)


def run_case(side: str, size: str, heads: int, r: int, repeats: int) -> dict:
    import time
    import numpy as np
    n = SIZES[size]
    idx = indices(n, heads, r)
    if side in ("maskc", "maskc-fwd"):
        import maskc
        import torch
        m = maskc.compile(f"mask m(input idx) = blocks({BLOCK}, select(idx))")
        xs = {"idx": torch.from_numpy(idx)}
        # the plan of an H100/H200 training step (bf16, D = 128): its static tables are built
        # once; each step merges the selection into the tables of its kernels
        plan = m.plan(n, heads=heads, target="triton", device="cuda", dtype="bfloat16",
                      head_dim=128, **xs)
        kernels = ("fwd",) if side == "maskc-fwd" else ("fwd", "dq", "dkdv")
        static = {k: plan.block_map(k) for k in kernels}
        cpu = torch.device("cpu")

        def step():
            plan.chosen.check(xs)
            for k in kernels:
                plan.chosen.tables(static[k], xs, k, cpu)
    else:
        import torch
        from torch.nn.attention.flex_attention import BlockMask
        t = torch.from_numpy(idx)[None]  # (1, H, NB, r)
        nb = t.shape[2]

        def step():
            # NOTE: from_kv_blocks indexes its table up to NB wide (an (H, NB, r) table fails
            # with an IndexError), so the indices are padded to (H, NB, NB) first
            counts = (t >= 0).sum(-1).to(torch.int32)
            wide = torch.zeros((1, heads, nb, nb), dtype=torch.int32)
            wide[..., :t.shape[-1]] = t.clamp(min=0)
            BlockMask.from_kv_blocks(counts, wide, BLOCK_SIZE=BLOCK)
    reset_peak_rss()
    base = peak_rss_mib()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    peak = peak_rss_mib() - base
    return {"median_ms": 1000 * statistics.median(times), "peak_mib": peak}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--child", nargs=4)
    args = ap.parse_args()
    if args.child:
        side, size, heads, r = args.child
        print(json.dumps(run_case(side, size, int(heads), int(r), args.repeats)))
        return
    import torch
    print(f"machine: {platform.machine()}, {len(__import__('os').sched_getaffinity(0))} cores, "
          f"Python {platform.python_version()}, torch {torch.__version__}")
    print(f"command: python bench/selection.py{' --quick' if args.quick else ''}")
    print("| tokens | heads | r | maskc fwd ms | maskc fwd MiB | maskc fwd+dq+dkdv ms | "
          "maskc fwd+dq+dkdv MiB | from_kv_blocks ms | from_kv_blocks MiB | speed-up |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for size, heads, r in CASES:
        if args.quick and size != "32K":
            continue
        got = {}
        for side in ("maskc-fwd", "maskc", "flex"):
            if (side, size, heads) in SKIP:
                got[side] = SKIP[(side, size, heads)]
                continue
            try:
                out = subprocess.run([sys.executable, __file__, "--repeats", str(args.repeats),
                                      "--child", side, size, str(heads), str(r)],
                                     capture_output=True, text=True, timeout=600)
                got[side] = json.loads(out.stdout.strip().splitlines()[-1]) \
                    if out.returncode == 0 else f"failed: {out.stderr.strip().splitlines()[-1]}"
            except subprocess.TimeoutExpired:
                got[side] = "over 600 s"
        cells = []
        for side in ("maskc-fwd", "maskc", "flex"):
            v = got[side]
            cells += ([f"{v['median_ms']:,.1f}", f"{v['peak_mib']:,.0f}"] if isinstance(v, dict)
                      else [v, ""])
        ratio = (f"{got['flex']['median_ms'] / got['maskc']['median_ms']:.1f}x"
                 if all(isinstance(got[s], dict) for s in got) else "")
        print(f"| {size} | {heads} | {r} | " + " | ".join(cells) + f" | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
