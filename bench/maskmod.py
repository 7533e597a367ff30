"""What maskc's generated FlexAttention ``mask_mod`` costs inside ``flex_attention``.

``torch.compile(flex_attention)`` on a 64 x 64 grid with ``neighborhood(13)`` (4 heads,
head dim 64, float32), side by side in one run:

- maskc: ``Mask.flex_block_mask`` (block analysis) with maskc's generated ``mask_mod``;
- hand-written: a clamp ``mask_mod`` written by hand, tiles from ``create_block_mask``;
- maskc mask_mod on the hand-written run's tiles (only the mask_mod differs).

Each: median of ``--repeats`` calls after two warm-up calls (the first compiles). Outputs
are checked equal first.

    python bench/maskmod.py [--repeats N]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args(argv)

    import torch
    from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

    import maskc

    side, kernel, H, D = 64, 13, 4, 64
    N = side * side
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, "
          f"{platform.system()}, Python {platform.python_version()}, torch {torch.__version__}")
    print(f"command: python bench/maskmod.py --repeats {args.repeats}")
    print(f"case: grid {side} x {side} (N = {N}), neighborhood({kernel}), H = {H}, D = {D}, "
          "float32, torch.compile(flex_attention), BLOCK_SIZE 128\n")

    m = maskc.compile(f"mask m over grid(y = {side}, x = {side}) = neighborhood({kernel})")
    mod = m.mask_mod(N, N, H)
    print("maskc's generated mask_mod:\n" + mod.source)

    half = kernel // 2

    def hand(b, h, q_idx, kv_idx):
        qy, qx, ky, kx = q_idx // side, q_idx % side, kv_idx // side, kv_idx % side
        cy = qy.clamp(half, side - 1 - half)
        cx = qx.clamp(half, side - 1 - half)
        return ((cy - ky).abs() <= half) & ((cx - kx).abs() <= half)

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, H, N, D, generator=g) for _ in range(3))
    fn = torch.compile(flex_attention, dynamic=False)

    bm_maskc = m.flex_block_mask(N, N, H)
    bm_hand = create_block_mask(hand, None, None, N, N, device="cpu")
    bm_same = BlockMask.from_kv_blocks(
        bm_hand.kv_num_blocks, bm_hand.kv_indices, bm_hand.full_kv_num_blocks,
        bm_hand.full_kv_indices, BLOCK_SIZE=bm_hand.BLOCK_SIZE, mask_mod=mod,
        seq_lengths=(N, N))
    cases = {"maskc (flex_block_mask + generated mask_mod)": bm_maskc,
             "hand-written clamp mask_mod (create_block_mask)": bm_hand,
             "maskc mask_mod on the hand-written tiles": bm_same}
    outs = {}
    for name, bm in cases.items():
        t0 = time.perf_counter()
        outs[name] = fn(q, k, v, block_mask=bm)
        first = time.perf_counter() - t0
        fn(q, k, v, block_mask=bm)
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            fn(q, k, v, block_mask=bm)
            times.append(time.perf_counter() - t0)
        print(f"{name:50s} median {statistics.median(times) * 1e3:7.1f} ms  "
              f"(min {min(times) * 1e3:.1f}, first call {first:.1f} s)")
    ref = next(iter(outs.values()))
    assert all(torch.allclose(o, ref, atol=1e-5) for o in outs.values()), "outputs differ"
    print("\noutputs agree (atol 1e-5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
