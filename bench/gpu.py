"""GPU benchmark: maskc's generated Triton kernels vs FlexAttention, dense SDPA and FlashAttention.

Forward and forward+backward in bfloat16 on the patterns of the Triton issue. For each:
time (median of ``triton.testing.do_bench``), effective TFLOP/s (FLOPs of the kept pairs
only: 4·D per kept pair forward, 3.5x that for forward+backward), the density (kept pairs
over all pairs, counted exactly on the GPU with the mask's ``mask_mod``), the fraction of
tiles maskc's kernels visit, the fraction of the ideal speed-up reached (dense SDPA time x
density / time) and FlexAttention's time over each kernel's. Needs a CUDA GPU; writes
nothing itself: redirect the table to ``bench/results/``.

    python bench/gpu.py [--quick] [--sweep PATTERN] [PATTERN ...]
"""

from __future__ import annotations

import argparse
import math
import os
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
    # scores (with ...): against torch.compile(flex_attention) with maskc's score_mod
    "gemma2-swa4096-softcap-32K": ("mask m = causal & window(before = 4095, after = 0) with "
                                   "softcap(50.0)", 32768, 16, 128, None, None),
    "gemma2-swa4096-softcap-8K-d256": ("mask m = causal & window(before = 4095, after = 0) "
                                       "with softcap(50.0)", 8192, 8, 256, None, None),
    "alibi-8K": ("mask m(input slopes) = causal with alibi(slopes)", 8192, 16, 128, "slopes",
                 None),
    "alibi-32K": ("mask m(input slopes) = causal with alibi(slopes)", 32768, 16, 128, "slopes",
                  None),
}
# --smoke: the same script at toy sizes on the CPU (Triton's interpreter, eager flex), so a
# test can run it end to end; its timings mean nothing
SMOKE = {
    "swa2048-32K": ("mask m = causal & window(before = 31, after = 0)", 160, 2, 32, None, None),
    "bigbird-16K": ("mask m = blocks(16, window(1) | global([0]) | random(3, seed = 7))", 128,
                    2, 32, None, None),
    "packed-32K": ("mask m(input doc) = causal & same(doc)", 150, 2, 32, "docs", None),
    "natten2d-256x256-w80": ("mask m over grid(16, 16) = neighborhood(5)", None, 2, 32, None,
                             None),
    "gemma2-swa4096-softcap-32K": ("mask m = causal & window(before = 31, after = 0) with "
                                   "softcap(5.0)", 96, 2, 32, None, None),
    "alibi-8K": ("mask m(input slopes) = causal with alibi(slopes)", 96, 2, 32, "slopes", None),
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


def _bench(fn, device):
    if device == "cpu":
        import time
        times = []
        for _ in range(3):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return sorted(times)[1]
    from triton.testing import do_bench
    return do_bench(fn, warmup=25, rep=100, return_mode="median")


def run(name, args):
    import torch
    from torch.nn.attention.flex_attention import flex_attention

    import maskc
    dev = "cpu" if args.smoke else "cuda"
    src, n, H, D, inputs_kind, flash_window = (SMOKE if args.smoke else PATTERNS)[name]
    m = maskc.compile(src)
    n = n or int(math.prod(m.grid))
    inputs = {"doc": _docs(n)} if inputs_kind == "docs" else {}
    floats = {"slopes": maskc.alibi_slopes(H).to(dev)} if inputs_kind == "slopes" else {}
    dtype = torch.float32 if args.smoke else torch.bfloat16
    q, k, v = (torch.randn(1, H, n, D, device=dev, dtype=dtype, requires_grad=True)
               for _ in range(3))
    density = _kept(m, n, inputs, dev) / (n * n)
    flops_fwd = 4 * n * n * D * H * density
    results = {}

    def measure(label, fwd):
        out = fwd()
        grad = torch.randn_like(out)
        t_f = _bench(fwd, dev)
        t_b = _bench(lambda: torch.autograd.grad(fwd(), (q, k, v), grad), dev)
        results[label] = (t_f, t_b)

    measure("maskc", lambda: m.attention(q, k, v, backend="triton", **inputs, **floats))
    from maskc.backends.triton import Launch
    from maskc.passes.layoutmap import visited_tiles
    bm = Launch(m, q, k, v, score_inputs=floats, **inputs).bm  # the cached plan of the calls above
    tiles = {"maskc": visited_tiles(bm)[0] / bm.stats["tiles"]}
    if name in args.sweep:  # other forward tiles (block_q, block_k, warps, stages); backward as chosen
        from maskc.backends.triton import Tiles, aligned, block_alignment, default_config
        base = aligned(default_config("cuda", q.dtype, D), block_alignment(m.ir))
        for t in SWEEP:
            cfg = type(base)(Tiles(*t), base.dq, base.dkdv)
            if cfg != base:
                measure(f"maskc fwd {t}", lambda cfg=cfg: m.attention(
                    q, k, v, backend="triton", config=cfg, **inputs, **floats))
    block_mask = m.flex_block_mask(n, heads=1, block_size=128, device=dev, **inputs)
    visits = int(block_mask.kv_num_blocks.sum()) + int(block_mask.full_kv_num_blocks.sum())
    tiles["flex"] = visits / (-(-n // 128)) ** 2
    score_mod = None
    if m.ir.score is not None:  # the same score as FlexAttention's score_mod (generated)
        from maskc.backends.flex import make_score_mod
        score_mod = make_score_mod(m.ir, n, n, floats, dev)
    if not args.smoke:  # flex has no backward on the CPU
        flex = torch.compile(flex_attention)
        measure("flex", lambda: flex(q, k, v, score_mod=score_mod, block_mask=block_mask))
    try:  # dense, no mask and no score: the speed a sparse kernel is measured against
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
              f"| {density:.2%} | {_pct(tiles.get(label.split()[0]))} | {ideal} | {vs} |",
              flush=True)


def _pct(x):
    return "—" if x is None else f"{x:.1%}"


def _kept(m, n, inputs, device):
    """Kept (query, key) pairs, counted in row chunks with the mask's generated mask_mod."""
    import torch
    mod = m.mask_mod(n, n, 1, device, **inputs)
    zero = torch.zeros((), dtype=torch.long, device=device)
    kv = torch.arange(n, device=device)[None, :]
    rows = max(1, (1 << 27) // n)
    kept = torch.zeros((), dtype=torch.long, device=device)
    for r0 in range(0, n, rows):
        qi = torch.arange(r0, min(n, r0 + rows), device=device)[:, None]
        kept += mod(zero, zero, qi, kv).sum()
    return int(kept)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--smoke", action="store_true",
                    help="toy sizes on the CPU through Triton's interpreter (a test of the script)")
    ap.add_argument("--sweep", action="append", default=[], metavar="PATTERN",
                    help="also time other forward tiles on PATTERN")
    ap.add_argument("patterns", nargs="*", help=f"patterns to run (default: all): "
                                                   f"{', '.join(PATTERNS)}")
    args = ap.parse_args()
    unknown = set(args.patterns + args.sweep) - set(PATTERNS)
    if unknown:
        ap.error(f"unknown patterns: {', '.join(sorted(unknown))}")
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
    import torch
    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("bench/gpu.py needs a CUDA GPU (or --smoke)")
    device = "CPU (smoke test)" if args.smoke else torch.cuda.get_device_name()
    print(f"# device: {device}, torch {torch.__version__}, {platform.python_version()}")
    print(f"# command: python bench/gpu.py {' '.join(sys.argv[1:])}")
    print("| pattern | kernel | fwd ms | fwd+bwd ms | fwd TFLOP/s | fwd+bwd TFLOP/s | density "
          "| tiles visited | ideal speed-up reached (fwd / fwd+bwd) | flex time / this time "
          "(fwd / fwd+bwd) |")
    print("|" + "---|" * 10, flush=True)
    default = SMOKE if args.smoke else QUICK if args.quick else PATTERNS
    for name in args.patterns or default:
        run(name, args)


if __name__ == "__main__":
    main()
