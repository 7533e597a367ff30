"""CPU training step of attention: maskc's tile engine against SDPA with a dense mask.

    python bench/cpu_training.py [--tokens 4096] [--heads 8] [--head-dim 64] [--runs 5]

Forward and backward (``out.sum().backward()``) of one attention call, float32, on the CPU:
``backend="tiles"`` (what ``auto`` picks on the CPU with gradients), torch's
``scaled_dot_product_attention`` given the dense boolean mask (built once, not timed), and
the float64 reference (one run). Medians of ``--runs`` runs after one warm-up run.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch

import maskc

CASES = [
    ("sliding window 409 (causal)", "mask m = causal & window(before = 408, after = 0)", {}),
    ("StreamingLLM: 4 sinks + window 256",
     "mask m = causal & (sink(4) | window(before = 255, after = 0))", {}),
    ("packed documents (mean 400 tokens)", "mask m(input doc) = causal & same(doc)", {"doc": 1}),
    ("BigBird: blocks 64, window 3, 2 random, 2 global",
     "mask m = blocks(64, window(before = 1, after = 1) | random(2, seed = 0) | global(2))",
     {}),
]


def _time(fn, runs: int) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--no-reference", action="store_true")
    args = ap.parse_args()
    os.environ.pop("TRITON_INTERPRET", None)
    n, H, D = args.tokens, args.heads, args.head_dim
    print(f"# CPU training step: maskc tiles vs SDPA with a dense mask\n")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.system()}, "
          f"Python {platform.python_version()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} torch threads")
    print(f"command: python {' '.join(sys.argv)}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M')}; B = 1, {H} heads, D = {D}, {n} tokens, "
          f"float32, forward + backward, medians of {args.runs}\n")
    print("| pattern | density | tiles | SDPA dense mask | SDPA / tiles | reference (float64) |")
    print("|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for label, spec, extra in CASES:
        m = maskc.compile(spec)
        inputs = {}
        if extra.get("doc"):
            lengths = rng.integers(100, 700, n // 100)
            inputs["doc"] = np.repeat(np.arange(len(lengths)), lengths)[:n]
        dense = torch.from_numpy(m.dense(n, **inputs)[0])
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(1, H, n, D, generator=g).requires_grad_() for _ in range(3))

        def tiles():
            m.attention(q, k, v, backend="tiles", **inputs).sum().backward()

        def sdpa():
            torch.nn.functional.scaled_dot_product_attention(
                q, k, v, attn_mask=dense).sum().backward()

        t_tiles, t_sdpa = _time(tiles, args.runs), _time(sdpa, args.runs)
        ref = "not run"
        if not args.no_reference:
            qd, kd, vd = (t.detach().double().requires_grad_() for t in (q, k, v))
            t = time.perf_counter()
            m.attention(qd, kd, vd, backend="reference", **inputs).sum().backward()
            ref = f"{(time.perf_counter() - t) * 1e3:,.0f} ms (1 run)"
        print(f"| {label} | {dense.float().mean().item():.1%} | {t_tiles * 1e3:,.0f} ms | "
              f"{t_sdpa * 1e3:,.0f} ms | {t_sdpa / t_tiles:.2f}x | {ref} |", flush=True)


if __name__ == "__main__":
    main()
