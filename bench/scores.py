"""What a score (``with SCORE``) costs on the host, and that it does not grow with length.

For Gemma 2's local layer (window + softcap), BLOOM (ALiBi) and a T5 encoder (a bias
table indexed by clamped distance), side by side with the same mask without its score:
compiling the spec, generating the Triton module (score, derivative and gradient
functions included), generating FlexAttention's ``score_mod``, and planning a call (bind,
tiles, forward/dq/transposed tables) at 4K to 1M tokens. Medians of ``--repeats`` runs in
one process after a warm-up; nothing runs on a GPU.

    python bench/scores.py [--repeats N] [--lengths 4096,32768,...]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time

import torch

import maskc
from maskc.backends.flex.mask_mod import make_score_mod
from maskc.backends.triton.codegen import generate

SPECS = {
    "Gemma 2 local (window 4096, softcap 50)":
        ("mask m(w = 4095, cap = 50.0) = causal & window(before = w, after = 0) with softcap(cap)",
         "mask m(w = 4095) = causal & window(before = w, after = 0)", {}),
    "BLOOM (causal, ALiBi)": ("mask m(input slopes) = causal with alibi(slopes)",
                              "mask m = causal", {"slopes": (32,)}),
    "T5 encoder (bias[h, clamp(k - q) + R])":
        ("mask m(input bias, R = 128) = all with s + bias[h, clamp(k - q, -R, R) + R]",
         "mask m = all", {"bias": (32, 257)}),
}


def median_ms(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def fresh_compile(src):
    # a new text each time: maskc.compile caches by text
    return lambda: maskc.compile(src + f"\n# {time.perf_counter_ns()}")


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--lengths", default="4096,32768,131072,1048576")
    args = ap.parse_args(argv)
    lengths = [int(x) for x in args.lengths.split(",")]
    print(f"# {platform.machine()}, {torch.get_num_threads()} threads, {platform.system()}, "
          f"Python {platform.python_version()}, torch {torch.__version__}")
    print(f"# command: python bench/scores.py {' '.join(argv or sys.argv[1:])}".rstrip())
    print("| spec | step | with score (ms) | without (ms) | ratio |")
    print("|---|---|---|---|---|")
    for label, (scored, plain, shapes) in SPECS.items():
        ms, mp = maskc.compile(scored), maskc.compile(plain)
        floats = {n: torch.randn(*s) for n, s in shapes.items()}
        rows = [
            ("compile the spec", median_ms(fresh_compile(scored), args.repeats),
             median_ms(fresh_compile(plain), args.repeats)),
            ("Triton module source", median_ms(lambda: generate(ms.ir), args.repeats),
             median_ms(lambda: generate(mp.ir), args.repeats)),
            ("FlexAttention score_mod", median_ms(
                lambda: make_score_mod(ms.ir, 4096, 4096, floats, "cuda"), args.repeats), None),
        ]
        for n in lengths:
            def plan(m):
                def go():
                    p = m.plan(n, n, 32, target="triton", device="cuda", dtype="bfloat16",
                               head_dim=128)
                    p.block_map("dq")
                    p.transposed("dkdv")
                    m._plans.clear()  # a cold plan each time (the cache is per Mask)
                return go
            rows.append((f"plan and tables, N = {n:,}", median_ms(plan(ms), args.repeats),
                         median_ms(plan(mp), args.repeats)))
        for step, a, b in rows:
            ratio = f"{a / b:.2f}x" if b else "—"
            print(f"| {label} | {step} | {a:.2f} | {b:.2f} | {ratio} |" if b is not None else
                  f"| {label} | {step} | {a:.2f} | — | — |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
