"""Decoding benchmark: maskc's decode kernel against FlexAttention's decoding path and SDPA.

One new token per sequence over a KV cache: B = 1, 8, 64 sequences, caches of 8K, 32K and
128K tokens, head dim 128, GQA 32 query heads on 8 kv heads, bfloat16; patterns causal,
sliding window 4096 and StreamingLLM (4 sinks + 1024 recent keys). Per case: the median time
of a whole ``Mask.attention`` call (the per-sequence tables included: cached per length, as
in a loop that repeats a length), the bytes of K and V the mask keeps (the least a kernel
must read), the bandwidth that gives and its fraction of the GPU's peak (``--peak``, GB/s;
H200: 4800), and the other systems' times over maskc's. FlexAttention runs
``torch.compile(flex_attention)`` with a one-query block mask (``create_block_mask``); SDPA
attends the whole cache (with a boolean mask for the windows). Needs a CUDA GPU.

    python bench/decode.py [--quick] [--peak GBPS]
    python bench/decode.py --tables     # CPU: host cost of the per-sequence tables per step
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

PATTERNS = {
    "causal": ("mask m = causal", None),
    "swa4096": ("mask m = causal & window(before = 4095, after = 0)", 4096),
    "streaming": ("mask m = causal & (window(before = 1023, after = 0) | sink(4))", 1028),
}
BATCHES = (1, 8, 64)
CACHES = (8192, 32768, 131072)
HQ, HKV, D = 32, 8, 128


def _bench(fn):
    from triton.testing import do_bench
    return do_bench(fn, warmup=10, rep=50, return_mode="median")


def _flex_decode(spec_window, B, L, device):
    """FlexAttention's decoding: a block mask for one query at position L - 1."""
    import torch
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    sink = 4 if spec_window == 1028 else 0
    before = None if spec_window is None else (1023 if sink else spec_window - 1)

    def mod(b, h, q_idx, kv_idx):
        p = q_idx + (L - 1)
        keep = kv_idx <= p
        if before is not None:
            keep = keep & ((p - kv_idx <= before) | (kv_idx < sink))
        return keep
    bm = create_block_mask(mod, None, None, 1, L, device=device)
    return torch.compile(flex_attention), bm


def gpu(args):
    import torch
    import maskc
    dev = "cuda"
    print(f"# device: {torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"{platform.python_version()}; peak {args.peak} GB/s")
    print(f"# command: python bench/decode.py {' '.join(sys.argv[1:])}")
    print("| pattern | B | cache | maskc ms | kept K+V GB | maskc GB/s | % of peak "
          "| flex ms | flex / maskc | sdpa ms | sdpa / maskc |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    batches = (1, 8) if args.quick else BATCHES
    caches = (8192, 32768) if args.quick else CACHES
    for name, (spec, window) in PATTERNS.items():
        m = maskc.compile(spec)
        for B in batches:
            for L in caches:
                try:
                    k = torch.randn(B, HKV, L, D, device=dev, dtype=torch.bfloat16)
                    v = torch.randn_like(k)
                except torch.OutOfMemoryError:
                    continue
                q = torch.randn(B, HQ, 1, D, device=dev, dtype=torch.bfloat16)
                lens = torch.full((B,), L, dtype=torch.long)
                ones = torch.ones(B, dtype=torch.long)
                t_m = _bench(lambda: m.attention(q, k, v, q_lens=ones, kv_lens=lens))
                kept = L if window is None else min(window, L)
                gb = 2 * B * HKV * kept * D * 2 / 1e9
                flex, bm = _flex_decode(window, B, L, dev)
                t_f = _bench(lambda: flex(q, k, v, block_mask=bm, enable_gqa=True))
                mask = None
                if window is not None:
                    kk = torch.arange(L, device=dev)
                    sink = 4 if window == 1028 else 0
                    mask = ((L - 1 - kk < (1024 if sink else window)) | (kk < sink))[None, None,
                                                                                    None]
                t_s = _bench(lambda: torch.nn.functional.scaled_dot_product_attention(
                    q, k, v, attn_mask=mask, enable_gqa=True))
                bw = gb / (t_m * 1e-3)
                print(f"| {name} | {B} | {L // 1024}K | {t_m:.3f} | {gb:.3f} | {bw:.0f} | "
                      f"{bw / args.peak:.0%} | {t_f:.3f} | {t_f / t_m:.2f}x | {t_s:.3f} | "
                      f"{t_s / t_m:.2f}x |", flush=True)
                del k, v


def tables(args):
    """Host cost per decode step of the per-sequence tables (CPU; no kernel runs): a step
    grows every cache by one key, so each step analyses B new lengths."""
    import numpy as np
    import torch
    import maskc
    from maskc.analysis.sequences import bind_sequences
    from maskc.passes.sequences import sequence_map
    print(f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, {platform.python_version()}")
    print(f"# command: python bench/decode.py {' '.join(sys.argv[1:])}")
    print("| pattern | B | cache | new lengths: ms per step | repeated lengths: ms per step "
          "| tiles visited per sequence |")
    print("|---|---|---|---|---|---|")
    for name, (spec, _) in PATTERNS.items():
        m = maskc.compile(spec)
        for B in (1, 8) if args.quick else BATCHES:
            for L in (8192, 32768) if args.quick else CACHES:
                plan = m.plan(1, L, HQ, HKV, target="triton", device="cuda", dtype="bfloat16",
                              head_dim=D)
                t = plan.tiles["decode"]
                q = torch.zeros(B, 1, 1, 1)
                k = torch.zeros(B, 1, L, 1)
                fresh, again = [], []
                base = np.random.default_rng(0).integers(L // 2, L - 8, B)
                for step in range(5):
                    seqs = bind_sequences(m.ir, q, k, q_lens=torch.ones(B, dtype=torch.long),
                                          kv_lens=torch.tensor(base + step))
                    start = time.perf_counter()
                    bm = sequence_map(plan, seqs, 1, L, t.block_q, t.block_k)
                    fresh.append((time.perf_counter() - start) * 1e3)
                    start = time.perf_counter()
                    sequence_map(plan, seqs, 1, L, t.block_q, t.block_k)
                    again.append((time.perf_counter() - start) * 1e3)
                visited = (bm.kv_num_blocks + bm.full_kv_num_blocks).sum() / B
                print(f"| {name} | {B} | {L // 1024}K | {statistics.median(fresh):.2f} | "
                      f"{statistics.median(again):.2f} | {visited:.0f} |", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--tables", action="store_true",
                    help="the host cost of the per-sequence tables (runs on the CPU)")
    ap.add_argument("--peak", type=float, default=4800.0, help="the GPU's memory bandwidth, GB/s")
    args = ap.parse_args()
    if args.tables:
        return tables(args)
    import torch
    if not torch.cuda.is_available():
        raise SystemExit("bench/decode.py needs a CUDA GPU (or --tables)")
    gpu(args)


if __name__ == "__main__":
    main()
