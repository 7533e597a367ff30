"""Context-parallel plans (``maskc.distributed.plan``), planned only: balance and traffic.

Nothing is executed and ``torch.distributed`` is not used: for each spec, token count and
world size this times ``plan(mask, N, world_size)`` (tiles of 128, one head, self
attention) and tabulates what the plan says each rank visits and receives, against ring
attention and an all-gather of the keys. Specs:

- sliding window 4K: ``mask m = causal & window(before = 4095, after = 0)``;
- causal: ``mask m = causal``;
- packed documents: ``mask m(input doc) = causal & same(doc)``, document lengths drawn
  uniformly from 1,024..65,536 tokens (numpy ``default_rng(0)``), the last one cut at N;
- NATTEN 3-D: ``natten3d`` of ``examples/natten.mask`` over frames x 64 x 64 (frames =
  N / 4096), kernel (3, 7, 7), causal along time (its default);
- selection: ``sparge`` of ``examples/sparge.mask`` (causal & (window 63 | blocks(64,
  select(idx)))), ``idx`` of shape (NB, 8): per query block of 64, 8 key blocks drawn
  uniformly from 0..i (causal-valid, ``default_rng(0)``), sorted, repeats replaced by -1.

Each timed run is a fresh process (no cache carried over); a case is run 3 times and the
median reported when its first run takes under ``FAST_S``, else once. Memory: the peak
resident size of the planning process above what it held once its inputs were built.

    python bench/distributed.py           # the full table (a few minutes on 2 cores)
    python bench/distributed.py --quick   # 128K tokens, 8 ranks (and the 1M window target),
                                          # one run each in this process (seconds)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

SIZES = {"128K": 1 << 17, "1M": 1 << 20, "16M": 1 << 24}
WORLDS = (8, 64, 1024)
BLOCK = 128
FAST_S = 2.0  # a first run under this is repeated (median of 3)

SPECS = {
    "sliding window 4K": "mask m = causal & window(before = 4095, after = 0)",
    "causal": "mask m = causal",
    "packed documents": "mask m(input doc) = causal & same(doc)",
    "NATTEN 3-D": "natten3d, frames x 64 x 64, kernel (3, 7, 7)",
    "selection (sparge, r = 8)": "sparge, idx (NB, 8)",
}
# (spec, size) -> why not planned; measured on the 2-core machine (see bench/README.md)
SKIP = {
    ("NATTEN 3-D", "16M"): "4,096 frames: an axis over gridboxes.AXIS_TABLE_LIMIT (2,048) "
                           "falls back to per-query counting; 2,049 x 64 x 64 ran > 120 s, "
                           "4,096 x 64 x 64 > 300 s (2,048 frames: 4 s)",
    ("selection (sparge, r = 8)", "16M"): "8 and 1,024 ranks (64 ranks is an extra row: "
                                          "its plan takes over a minute)",
}
# extra rows, beside the grid of specs x sizes x worlds: (spec, size, world, options)
EXTRA = [("NATTEN 3-D 1024 x 128 x 128", "16M", w, {}) for w in WORLDS] + \
    [("causal", "128K", 1024, {"block": 64}), ("selection (sparge, r = 8)", "16M", 64, {})]


def _natten(frames: int, height: int = 64, width: int = 64):
    import maskc
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples",
                        "natten.mask")
    return maskc.compile(here, name="natten3d", frames=frames, height=height, width=width,
                         kernel=(3, 7, 7))


def docs(n: int):
    """Document ids of N tokens: lengths uniform in 1,024..65,536, the last one cut."""
    import numpy as np
    rng = np.random.default_rng(0)
    lens = rng.integers(1024, 65537, size=n // 1024 + 1)
    return np.repeat(np.arange(len(lens), dtype=np.int32), lens)[:n]


def selection(n: int, r: int = 8, b: int = 64):
    """(NB, r) key blocks per query block of ``b``: uniform in 0..i, sorted, repeats -1."""
    import numpy as np
    nb = -(-n // b)
    rng = np.random.default_rng(0)
    pick = np.sort((rng.random((nb, r)) * (np.arange(nb)[:, None] + 1)).astype(np.int64), -1)
    pick[:, 1:][pick[:, 1:] == pick[:, :-1]] = -1
    return pick.astype(np.int32)


def build(spec: str, n: int):
    """``(mask, q_len, inputs)`` of a spec at ``n`` tokens."""
    import maskc
    if spec in ("sliding window 4K", "causal", "packed documents"):
        m = maskc.compile(SPECS[spec])
        return m, n, ({"doc": docs(n)} if spec == "packed documents" else {})
    if spec == "NATTEN 3-D":
        return _natten(n // 4096), None, {}
    if spec == "NATTEN 3-D 1024 x 128 x 128":
        assert n == 1024 * 128 * 128
        return _natten(1024, 128, 128), None, {}
    if spec == "selection (sparge, r = 8)":
        here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples",
                            "sparge.mask")
        return maskc.compile(here, name="sparge"), n, {"idx": selection(n)}
    raise KeyError(spec)


def run_case(spec: str, size: str, world: int, opts: dict) -> dict:
    """One plan, timed, and what it says."""
    import numpy as np

    from maskc.distributed import plan
    from maskc.testing import peak_rss_mib, reset_peak_rss
    n = SIZES[size]
    m, q_len, xs = build(spec, n)
    reset_peak_rss()
    base = peak_rss_mib()
    t0 = time.perf_counter()
    p = plan(m, q_len, world, block=opts.get("block"), **xs)  # None: the planner's default
    t = time.perf_counter() - t0
    mib = peak_rss_mib() - base
    s = p.stats()
    recv = p.recv_tokens()
    own = np.array([len(p.rows(r, keys=True)) for r in range(world)])
    return {"seconds": t, "mib": mib, "chunks": p.chunks_per_rank, "block": p.block, "kv_len": p.kv_len,
            "visited_max": s["visited_max"], "visited_mean": s["visited_mean"],
            "recv_max": int(recv.max()), "recv_mean": float(recv.mean()),
            "stats_recv_max": s["recv_tokens_max"],
            "peers_max": max(p.peers(r) for r in range(world)),
            "ring": s["ring_recv_tokens"], "allgather": int((p.kv_len - own).max())}


def _child_run(spec, size, world, opts, timeout) -> dict:
    arg = json.dumps([spec, size, world, opts])
    try:
        out = subprocess.run([sys.executable, __file__, "--child", arg], text=True,
                             capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"over {timeout:.0f} s"}
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": f"failed: {last[:200]}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(spec, size, world, opts, quick: bool, timeout: float) -> dict:
    if quick:
        r = run_case(spec, size, world, opts)
        return {**r, "runs": 1}
    first = _child_run(spec, size, world, opts, timeout)
    if "error" in first or first["seconds"] >= FAST_S:
        return {**first, "runs": 1}
    runs = [first] + [_child_run(spec, size, world, opts, timeout) for _ in range(2)]
    bad = [r for r in runs if "error" in r]
    if bad:
        return {**bad[0], "runs": len(runs)}
    return {**first, "seconds": statistics.median(r["seconds"] for r in runs),
            "mib": max(r["mib"] for r in runs), "runs": 3}


def _machine() -> str:
    from importlib import metadata

    import numpy
    try:  # its version without importing it (seconds)
        tv = metadata.version("torch")
    except metadata.PackageNotFoundError:
        tv = "not installed"
    return (f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()} "
            f"{platform.release()}, python {platform.python_version()}, numpy "
            f"{numpy.__version__}, torch {tv}")


def _fmt_int(x) -> str:
    return f"{int(round(x)):,}"


def _row(spec, size, world, opts, r) -> str:
    label = spec + (f" (block {opts['block']})" if opts.get("block") else "")
    if "error" in r:
        return f"| {label} | {size} | {world} | {r['error']} |" + " |" * 11
    imb = r["visited_max"] / r["visited_mean"] - 1 if r["visited_mean"] else 0.0
    ms = r["seconds"] * 1e3
    runs = "median of 3" if r["runs"] == 3 else "1 run"
    return (f"| {label} | {size} | {world} | {ms:,.1f} ({runs}) | {r['mib']:,.0f} | "
            f"{r['chunks']} | {_fmt_int(r['visited_max'])} / {r['visited_mean']:,.1f} | "
            f"{imb * 100:.1f}% | {_fmt_int(r['recv_max'])} | {r['recv_mean']:,.0f} | "
            f"{r['peers_max']} | {_fmt_int(r['ring'])} | {_fmt_int(r['allgather'])} | "
            f"{r['recv_max'] / r['ring']:.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="128K tokens, 8 ranks, in-process")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per run")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        spec, size, world, opts = json.loads(args.child)
        print(json.dumps(run_case(spec, size, world, opts)))
        return
    print(f"# machine: {_machine()}")
    print(f"# command: python {' '.join(sys.argv)}")
    print(f"# date: {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"# one head, tiles of {BLOCK} (the planner's default: finer below 4 tiles per "
          f"rank), self attention; plan time: each run a fresh process, "
          f"median of 3 when the first run is under {FAST_S:.0f} s, else 1 run"
          + (" (--quick: one run, in this process)" if args.quick else ""))
    print()
    if args.quick:
        cases = [(s, "128K", 8, {}) for s in SPECS] + [("sliding window 4K", "1M", 64, {})]
    else:
        cases = [(s, size, w, {}) for s in SPECS for size in SIZES for w in WORLDS
                 if (s, size) not in SKIP] + EXTRA
    print("| spec | tokens | ranks | plan ms | peak MiB | chunks per rank | visited max / mean"
          " | imbalance | recv max | recv mean | peers max | ring recv | all-gather recv | "
          "recv max / ring |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    results = {}
    for spec, size, world, opts in cases:
        r = measure(spec, size, world, opts, args.quick, args.timeout)
        results[(spec, size, world, json.dumps(opts))] = r
        print(_row(spec, size, world, opts, r), flush=True)
    odd = [k for k, r in results.items() if "error" not in r and
           r["recv_max"] != r["stats_recv_max"]]
    for spec, size, world, opts in odd:  # two ways of counting the same thing
        r = results[(spec, size, world, opts)]
        print(f"- note: {spec} {size} {world}: recv_tokens() max {r['recv_max']:,} != "
              f"stats()['recv_tokens_max'] {r['stats_recv_max']:,}")
    if not args.quick:
        print()
        for (spec, size), why in SKIP.items():
            print(f"- skipped: {spec} at {size}: {why}")
    print()
    _targets(results)


def _targets(results: dict) -> None:
    sw = results.get(("sliding window 4K", "1M", 64, "{}"))
    if sw is None or "error" in sw:
        print("- target (sliding window 4K, 1M tokens, 64 ranks): not run")
    else:
        cap = 2 * SIZES["1M"] // 64
        ok = sw["recv_max"] <= cap and sw["peers_max"] <= 2
        print(f"- {'PASS' if ok else 'FAIL'}: sliding window 4K, 1M tokens, 64 ranks: recv "
              f"max {sw['recv_max']:,} tokens (target <= {cap:,} = 2 shards), peers max "
              f"{sw['peers_max']} (target <= 2)")
    for (spec, size, world, opts), r in results.items():
        if spec != "causal" or opts != "{}":
            continue
        if "error" in r:
            print(f"- FAIL: causal, {size} tokens, {world} ranks: {r['error']}")
            continue
        imb = r["visited_max"] / r["visited_mean"] - 1
        per = SIZES[size] // world
        print(f"- {'PASS' if imb <= 0.05 else 'FAIL'}: causal imbalance, {size} tokens, "
              f"{world} ranks: {imb * 100:.1f}% (target <= 5%; {per:,} tokens per rank = "
              f"{per / r['block']:g} tile(s) of {r['block']}, {r['chunks']} chunk(s) per rank)")


if __name__ == "__main__":
    main()
