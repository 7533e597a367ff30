"""GPU benchmark: maskc's generated Triton kernels vs FlexAttention, dense SDPA and FlashAttention.

Forward and forward+backward in bfloat16 on the patterns of the Triton issue. For each:
time (median of ``triton.testing.do_bench``), effective TFLOP/s (FLOPs of the kept pairs
only: 4·D per kept pair forward, 3.5x that for forward+backward) and the fraction of the ideal
speed-up (dense SDPA time x density / time). Needs a CUDA GPU; writes nothing itself:
redirect the table to ``bench/results/gpu-<device>.md``.

    python bench/gpu.py [--quick]
"""

from __future__ import annotations

import argparse
import math
import platform
import sys

PATTERNS = {
    # name: (spec, q_len or None for grids, heads, head_dim, inputs builder, flash window)
    "swa2048-32K": ("mask m = causal & window(before = 2047, after = 0)", 32768, 16, 128,
                    None, (2047, 0)),
    "bigbird-16K": ("mask m = blocks(64, window(1) | global([0]) | random(3, seed = 7))",
                    16384, 16, 64, None, None),
    "packed-32K": ("mask m(input doc) = causal & same(doc)", 32768, 16, 128, "docs", None),
    "natten2d-256x256-w80": ("mask m over grid(256, 256) = neighborhood(80)", None, 24, 128,
                             None, None),
    "natten2d-256x256-w80-s16": ("mask m over grid(256, 256) = neighborhood(80, stride = 16)",
                                 None, 24, 128, None, None),
    "natten3d-30x48x80-w18x24x24": ("mask m over grid(30, 48, 80) = neighborhood((18, 24, 24))",
                                    None, 24, 128, None, None),
}
SWEEP = ((128, 128, 8, 3), (128, 64, 4, 3), (128, 64, 8, 4), (64, 64, 4, 3))
QUICK = ("swa2048-32K", "bigbird-16K")


def _docs(n):
    import maskc
    lengths, total, i = [], 0, 0
    while total < n:
        ln = min(n - total, [4096, 1024, 8192, 2048, 512][i % 5])
        lengths.append(ln)
        total += ln
        i += 1
    return maskc.document_ids(lengths)


def _bench(fn):
    from triton.testing import do_bench
    return do_bench(fn, warmup=25, rep=100, return_mode="median")


def run(name, args):
    import torch
    from torch.nn.attention.flex_attention import flex_attention

    import maskc
    src, n, H, D, inputs_kind, flash_window = PATTERNS[name]
    m = maskc.compile(src)
    n = n or int(math.prod(m.grid))
    inputs = {"doc": _docs(n)} if inputs_kind == "docs" else {}
    q, k, v = (torch.randn(1, H, n, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    bm = m.block_map(n, heads=1, block_q=128, **inputs)
    density = (bm.stats["full"] + bm.stats["partial"]) / bm.stats["tiles"]
    flops_fwd = 4 * n * n * D * H * density
    results = {}

    def measure(label, fwd):
        out = fwd()
        grad = torch.randn_like(out)
        t_f = _bench(fwd)
        t_b = _bench(lambda: torch.autograd.grad(fwd(), (q, k, v), grad))
        results[label] = (t_f, t_b)

    measure("maskc", lambda: m.attention(q, k, v, backend="triton", **inputs))
    if name in args.sweep:  # other forward tiles (block_q, block_k, warps, stages); backward as chosen
        from maskc.backends.triton import Tiles, aligned, block_alignment, default_config
        base = aligned(default_config("cuda", q.dtype, D), block_alignment(m.ir))
        for t in SWEEP:
            cfg = type(base)(Tiles(*t), base.dq, base.dkdv)
            if cfg != base:
                measure(f"maskc fwd {t}", lambda cfg=cfg: m.attention(q, k, v, backend="triton",
                                                                     config=cfg, **inputs))
    block_mask = m.flex_block_mask(n, heads=1, block_size=128, device="cuda", **inputs)
    flex = torch.compile(flex_attention)
    measure("flex", lambda: flex(q, k, v, block_mask=block_mask))
    try:
        measure("sdpa-dense", lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v))
    except torch.OutOfMemoryError:
        pass
    if flash_window:
        try:
            from flash_attn import flash_attn_func
            qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
            measure("flash-attn window", lambda: flash_attn_func(qt, kt, vt, causal=True,
                                                                 window_size=flash_window))
        except ImportError:
            pass
    dense = results.get("sdpa-dense")
    flex_t = results.get("flex")
    for label, (t_f, t_b) in results.items():
        tflops_f = flops_fwd / (t_f * 1e-3) / 1e12
        tflops_b = 3.5 * flops_fwd / (t_b * 1e-3) / 1e12
        ideal = f"{dense[0] * density / t_f:.0%} / {dense[1] * density / t_b:.0%}" \
            if dense else "—"
        vs = f"{flex_t[0] / t_f:.2f}x / {flex_t[1] / t_b:.2f}x" if flex_t else "—"
        print(f"| {name} | {label} | {t_f:.2f} | {t_b:.2f} | {tflops_f:.0f} | {tflops_b:.0f} "
              f"| {density:.1%} | {ideal} | {vs} |", flush=True)


def main():
    import torch
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sweep", action="append", default=[], metavar="PATTERN",
                    help="also time other forward tiles on PATTERN")
    ap.add_argument("patterns", nargs="*", help=f"patterns to run (default: all): "
                                                   f"{', '.join(PATTERNS)}")
    args = ap.parse_args()
    unknown = set(args.patterns + args.sweep) - set(PATTERNS)
    if unknown:
        ap.error(f"unknown patterns: {', '.join(sorted(unknown))}")
    if not torch.cuda.is_available():
        raise SystemExit("bench/gpu.py needs a CUDA GPU")
    print(f"# device: {torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"{platform.python_version()}")
    print(f"# command: python bench/gpu.py {' '.join(sys.argv[1:])}")
    print("| pattern | kernel | fwd ms | fwd+bwd ms | fwd TFLOP/s | fwd+bwd TFLOP/s | tiles "
          "visited | ideal speed-up reached (fwd / fwd+bwd) | flex time / this time (fwd / "
          "fwd+bwd) |")
    print("|" + "---|" * 9, flush=True)
    for name in args.patterns or (QUICK if args.quick else PATTERNS):
        run(name, args)


if __name__ == "__main__":
    main()
