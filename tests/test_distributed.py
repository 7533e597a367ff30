"""Context parallelism (maskc.distributed): plans checked against the block analysis, and
attention over gloo ranks equal to single-process attention, forward and backward.

The multi-process tests spawn three CPU processes once (``torch.multiprocessing``, gloo)
and run every case in them: three ranks on the default group, then two ranks on the
subgroup of global ranks 1 and 2 (so group ranks differ from global ones).
"""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
import torch

import maskc
import maskc.distributed as md
from maskc.errors import MaskError

SPECS = {
    "causal": "mask m = causal",
    "sink-window": "mask m = causal & (sink(4) | window(before = 40, after = 0))",
    "documents": "mask m(input doc) = causal & same(doc)",
    "alibi": "mask m(input slopes) = causal with alibi(slopes)",
    "per-head softcap": ("mask m = causal & heads { 0..1: window(before = 30, after = 0), "
                         "_: sink(8) | window(before = 10, after = 0) } with softcap(5.0)"),
    "bidirectional window": "mask m = window(before = 20, after = 20) | global(3)",
    # queries 0..2 keep no key: both halves of their merge are empty
    "empty rows": "mask m = causal & ~prefix(3) & window(before = 60, after = 0)",
}
# run by the tile engine (backends/tiles.py): per-sequence calls refuse them
ENGINE = {
    "random blocks": "mask m = blocks(16, random(2, seed = 3)) | causal",
    "selection": ("mask m(input idx) = causal & (window(before = 15, after = 0) | "
                  "blocks(16, select(idx)))"),
    "reads q": "mask m = where(q >= k + 3) & window(before = 50, after = 0)",
    "grid": ("mask m over grid(y = 12, x = 12) = neighborhood((5, 5)) "
             "with softcap(4.0)"),
    # positions inside a document: a shard's key span may begin inside one (found by review)
    "within positions": ("mask m(input doc) = within(doc, causal & window(before = 3, "
                         "after = 0) & where k % 2 == 0)"),
}
DOC_LENGTHS = [50, 7, 100, 44, 60, 40]  # 301 tokens


def _inputs(spec: str, n: int) -> dict:
    if "select(idx)" in spec:
        nb = -(-n // 16)
        return {"idx": np.random.default_rng(0).integers(-1, nb, (4, nb, 3))}
    if "same(doc)" in spec or "within(doc" in spec:
        lengths = list(DOC_LENGTHS)
        lengths[-1] += n - sum(lengths)
        if lengths[-1] <= 0:  # fewer tokens: the first documents, the last one cut
            ends = np.minimum(np.cumsum(DOC_LENGTHS), n)
            lengths = [int(x) for x in np.diff(np.concatenate([[0], ends])) if x > 0]
        return {"doc": np.repeat(np.arange(len(lengths)), lengths)}
    return {}


def _floats(spec: str, dtype) -> dict:
    return {"slopes": maskc.alibi_slopes(4).to(dtype)} if "alibi(" in spec else {}


# ---------------------------------------------------------------------- plans

def _visited(m, n, heads, block, **inputs):
    """Per head and query tile, the visited key tiles, from the kernels' block tables."""
    bm = m.block_map(n, n, heads, block, **inputs)
    out = []
    for h in range(heads):
        g = bm.head_group[h]
        rows = []
        for i in range(bm.n_q_tiles):
            rows.append(set(bm.kv_indices[0, g, i, :bm.kv_num_blocks[0, g, i]].tolist()) |
                        set(bm.full_kv_indices[0, g, i, :bm.full_kv_num_blocks[0, g, i]]
                            .tolist()))
        out.append(rows)
    return out


def _tiles(intervals) -> set:
    return {t for lo, hi in intervals for t in range(lo, hi + 1)}


@pytest.mark.parametrize("name", sorted(SPECS) + sorted(ENGINE))
@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_plan_is_exact(name, world):
    spec = SPECS.get(name) or ENGINE[name]
    n, heads, block = 144 if name == "grid" else 301, 4, 16
    m = maskc.compile(spec)
    inputs = _inputs(spec, n)
    p = md.plan(m, n, world, heads=heads, block=block, **inputs)
    visited = _visited(m, n, heads, block, **inputs)
    nt = -(-n // block)
    # every query tile (and key tile) held by exactly one rank, shards in sequence order
    rows = np.concatenate([p.rows(r) for r in range(world)])
    assert sorted(rows.tolist()) == list(range(n))
    assert np.array_equal(np.concatenate([p.rows(r, keys=True) for r in range(world)]), rows)
    owner = {}
    for r in range(world):
        for a, b in p.runs[r]:
            for t in range(a, b):
                owner[t] = r
    assert sorted(owner) == list(range(nt))
    for r in range(world):
        mine = [t for t in range(nt) if owner[t] == r]
        want = set().union(*(visited[h][t] for h in range(heads) for t in mine)) if mine else set()
        # the rank needs what its queries visit, and its own tiles (inputs are read there)
        assert _tiles(p.needs[r]) == want | set(mine)
        # it receives exactly the needed tiles it does not hold, each from its owner
        got = [(o, t) for o, lo, hi in p.recv[r] for t in range(lo, hi + 1)]
        assert sorted(t for _, t in got) == sorted(want - set(mine))
        assert all(owner[t] == o for o, t in got)
        # its work is the tiles its queries visit, over heads
        assert p.visited[r] == sum(len(visited[h][t]) for h in range(heads) for t in mine)
        # each query run's needs cover what the run's tiles visit
        for (a, b), need in zip(p.runs[r], p.run_needs(r)):
            run_visits = set().union(*(visited[h][t] for h in range(heads)
                                       for t in range(a, b)))
            assert _tiles(need) == run_visits | set(range(a, b))
    s = p.stats()
    assert set(s) == {"visited_max", "visited_mean", "recv_tokens_max", "ring_recv_tokens"}
    assert s["visited_max"] == p.visited.max() and s["visited_mean"] == p.visited.mean()
    assert s["recv_tokens_max"] == p.recv_tokens().max() <= s["ring_recv_tokens"]


def test_plan_balance_and_traffic_at_scale():
    n, world = 1 << 20, 64
    shard = n // world
    window = md.plan(maskc.compile("mask m = causal & window(before = 4095, after = 0)"),
                     n, world)
    s = window.stats()
    # sliding window: contiguous shards, each rank's keys from its left neighbour only
    assert window.chunks_per_rank == 1
    assert s["recv_tokens_max"] <= 2 * shard and max(window.peers(r) for r in range(world)) <= 2
    assert s["recv_tokens_max"] == 4096
    assert s["visited_max"] / s["visited_mean"] <= 1.05
    causal = md.plan(maskc.compile("mask m = causal"), n, world, heads=8)
    s = causal.stats()
    assert causal.chunks_per_rank == 2  # zig-zag: a rank holds one early and one late chunk
    assert s["visited_max"] / s["visited_mean"] <= 1.05
    # chunks r and 2 * world - 1 - r: two runs per rank (one for the middle rank)
    assert sorted(len(r) for r in causal.runs) == [1] + [2] * (world - 1)
    assert {len(causal.rows(r)) for r in range(world)} == {shard}
    # a contiguous split would leave the last rank with 127x the first rank's work
    contiguous = np.add.reduceat(causal.work, np.arange(0, len(causal.work), len(causal.work)
                                                        // world))
    assert contiguous.max() / contiguous.mean() > 1.9


def test_plan_refines_its_tiles_when_ranks_would_hold_one():
    """128K tokens over 1,024 ranks is one 128-token tile per rank, which no assignment can
    balance for causal attention: the default block halves until each rank has 4 tiles."""
    m = maskc.compile("mask m = causal")
    p = md.plan(m, 1 << 17, 1024)
    s = p.stats()
    assert p.block == 32 and s["visited_max"] / s["visited_mean"] <= 1.05
    coarse = md.plan(m, 1 << 17, 1024, block=128).stats()  # an explicit block is kept
    assert coarse["visited_max"] / coarse["visited_mean"] > 1.9


def test_plan_with_more_keys_than_queries():
    m = maskc.compile("mask m(input doc) = causal & same(doc)")
    doc = np.repeat(np.arange(4), [100, 60, 90, 80])  # 330 keys, the last 200 are queries
    p = md.plan(m, 200, 3, kv_len=330, block=16, doc=doc)
    keys = np.concatenate([p.rows(r, keys=True) for r in range(3)])
    assert sorted(keys.tolist()) == list(range(330))
    bm = m.block_map(200, 330, 1, 16, doc=doc)
    for r in range(3):
        tiles = [t for a, b in p.runs[r] for t in range(a, b)]
        want = set()
        for t in tiles:
            want |= set(bm.kv_indices[0, 0, t, :bm.kv_num_blocks[0, 0, t]].tolist())
            want |= set(bm.full_kv_indices[0, 0, t, :bm.full_kv_num_blocks[0, 0, t]].tolist())
        assert want <= _tiles(p.needs[r])


def test_shard_unshard_round_trip():
    m = maskc.compile("mask m = causal")
    p = md.plan(m, 300, 3, block=16)
    x = torch.randn(2, 3, 300, 5)
    parts = [p.shard(x, r) for r in range(3)]
    assert [t.shape[2] for t in parts] == [len(p.rows(r)) for r in range(3)]
    assert torch.equal(p.unshard(parts), x)
    assert torch.equal(parts[1], x[:, :, p.rows(1)])
    ids = torch.arange(300)
    assert torch.equal(p.unshard([p.shard(ids, r, dim=0) for r in range(3)], dim=0), ids)
    q = md.plan(m, 100, 2, kv_len=250, block=16)
    k = torch.randn(1, 1, 250, 4)
    assert torch.equal(q.unshard([q.shard(k, r) for r in range(2)]), k)


def test_bad_arguments():
    m = maskc.compile("mask m = causal")
    with pytest.raises(MaskError, match="world_size"):
        md.plan(m, 100, 0)
    with pytest.raises(MaskError, match="world_size"):
        md.plan(m, 100, "2")
    with pytest.raises(MaskError, match="world_size"):
        md.plan(m, 100)
    with pytest.raises(MaskError, match="maskc.Mask"):
        md.plan("mask m = causal", 100, 2)
    p = md.plan(m, 100, 2, block=16)
    x = torch.randn(1, 1, 100, 4)
    for rank in (-1, 2, 1.0, True):
        with pytest.raises(MaskError, match="rank"):
            p.shard(x, rank)
    with pytest.raises(MaskError, match="rows"):
        p.shard(torch.randn(1, 1, 99, 4), 0)
    with pytest.raises(MaskError, match="dim"):
        p.shard(x, 0, dim=4)
    with pytest.raises(MaskError, match="2 tensors"):
        p.unshard([p.shard(x, 0)])
    with pytest.raises(MaskError, match="rows"):
        p.unshard([p.shard(x, 0), p.shard(x, 0)[:, :, :3]])
    # attention: a plan for two ranks in a single process, shards that do not match
    with pytest.raises(MaskError, match="2 ranks"):
        md.attention(p, p.shard(x, 0), p.shard(x, 0), p.shard(x, 0))
    one = md.plan(m, 100, 1, block=16)
    with pytest.raises(MaskError, match="query rows"):
        md.attention(one, x[:, :, :50], x, x)
    with pytest.raises(MaskError, match="Plan"):
        md.attention(m, x, x, x)
    d = maskc.compile("mask m(input doc) = causal & same(doc)")
    doc = np.repeat([0, 1], 50)
    pd = md.plan(d, 100, 1, block=16, doc=doc)
    with pytest.raises(MaskError, match="differs"):
        md.attention(pd, x, x, x, doc=np.repeat([0, 1], [40, 60]))
    sel = maskc.compile("mask m(input idx) = causal & blocks(16, select(idx))")
    idx = np.zeros((7, 1), dtype=np.int64)
    ps = md.plan(sel, 100, 1, block=16, idx=idx)
    assert ps.stats()["visited_max"] == 7
    # per-sequence calls to a named backend refuse selections: say which backend runs them
    with pytest.raises(MaskError, match="backend='auto' or 'tiles'"):
        md.attention(ps, x, x, x, backend="reference")


def test_one_rank_without_torch_distributed():
    """World size 1 runs without a process group (the single-GPU path), with more keys than
    queries and runtime inputs."""
    m = maskc.compile("mask m(input doc) = causal & same(doc)")
    doc = np.repeat(np.arange(4), [100, 60, 90, 80])
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, 200, 8, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 1, 330, 8, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 1, 330, 8, generator=g, dtype=torch.float64, requires_grad=True)
    ref = m.attention(q, k, v, backend="reference", doc=doc)
    grads = torch.autograd.grad(ref.square().sum(), (q, k, v))
    p = md.plan(m, 200, 1, kv_len=330, block=16, doc=doc)
    out = md.attention(p, q, k, v, backend="reference")
    assert torch.allclose(out, ref, atol=1e-12, rtol=0)
    for a, b in zip(torch.autograd.grad(out.square().sum(), (q, k, v)), grads):
        assert torch.allclose(a, b, atol=1e-12, rtol=0)


# ------------------------------------------------------------------ over gloo

def _prepare(key, spec, backend, world, n=301, kv_extra=0, batch=2) -> dict:
    """A case: tensors, and one process's output and gradients (computed once, in the
    test's process)."""
    dtype = torch.float64 if backend in ("reference", "auto") else torch.float32
    m = maskc.compile(spec)
    g = torch.Generator().manual_seed(1)
    q = torch.randn(batch, 4, n, 8, generator=g, dtype=dtype)
    k = torch.randn(batch, 2, n + kv_extra, 8, generator=g, dtype=dtype)
    v = torch.randn(batch, 2, n + kv_extra, 8, generator=g, dtype=dtype)
    go = torch.randn(batch, 4, n, 8, generator=g, dtype=dtype)
    inputs, floats = _inputs(spec, n + kv_extra), _floats(spec, dtype)
    full = [t.clone().requires_grad_() for t in (q, k, v)]
    ref = m.attention(*full, backend="reference", **inputs, **floats)
    (ref * go).sum().backward()
    return dict(key=key, spec=spec, backend=backend, world=world, n=n, kv_len=n + kv_extra,
                tensors=(q, k, v), go=go, inputs=inputs, floats=floats,
                want=(ref.detach(),) + tuple(t.grad for t in full))


def _check(case, rank, group) -> int:
    """One rank's output and q, k, v gradients against one process's: the plan's chunks
    per rank."""
    m = maskc.compile(case["spec"])
    world = case["world"]
    p = md.plan(m, case["n"], world, heads=4, kv_len=case["kv_len"], block=16,
                **case["inputs"])
    mine = [p.shard(t, rank).requires_grad_() for t in case["tensors"]]
    out = md.attention(p, *mine, group=group, backend=case["backend"], **case["floats"])
    (out * p.shard(case["go"], rank)).sum().backward()
    tol = 1e-12 if out.dtype == torch.float64 else 2e-5
    got = [out] + [t.grad for t in mine]
    errors = [(a - p.shard(b, rank)).abs().max().item() for a, b in zip(got, case["want"])]
    assert max(errors) < tol, (case["key"], rank, world, errors)
    return p.chunks_per_rank


def _cases() -> list[dict]:
    cases = [_prepare(name, SPECS[name], "reference", 3) for name in sorted(SPECS)]
    cases.append(_prepare("keys before queries", SPECS["documents"], "reference", 3, n=200,
                          kv_extra=130))
    cases += [_prepare(name, ENGINE[name], "auto", 3, n=144 if name == "grid" else 160,
                       batch=1) for name in sorted(ENGINE)]
    # two ranks on a subgroup
    cases += [_prepare("two " + name, SPECS[name], "reference", 2)
              for name in ("sink-window", "documents")]
    cases.append(_prepare("two triton", SPECS["sink-window"], "triton", 2, n=150))
    return cases


def _worker(rank, world, path, cases, results):
    import torch.distributed as dist
    from maskc.api import Mask
    from maskc.distributed import execute
    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank,
                            world_size=world)
    # what a rank does, in order: the per-sequence calls (on which keys) and the wait for
    # the exchange
    events = []
    attention, wait = Mask.attention, execute._Pending.wait
    Mask.attention = lambda self, *a, **kw: events.append(
        ("attention", int(kw["kv_valid"].sum()) if "kv_valid" in kw else None)) or \
        attention(self, *a, **kw)
    execute._Pending.wait = lambda self: events.append(("wait", self.done)) or wait(self)
    chunks, orders = {}, {}
    try:
        sub = dist.new_group([1, 2])  # two ranks whose group ranks are not their ranks
        for case in cases:
            events.clear()
            if case["world"] == world:
                chunks[case["key"]] = _check(case, rank, None)
            elif rank in (1, 2):
                _check(case, rank - 1, sub)
            orders[case["key"]] = [e for e in events if e != ("wait", True)]
        dist.barrier()
    finally:
        dist.destroy_process_group()
    results.put((rank, chunks, orders))


def test_attention_over_gloo_equals_one_process(tmp_path):
    """Forward and backward (q, k, v gradients) of every rank equal to one process's
    attention: three ranks for every spec family (float64 reference; grids, random blocks,
    selections and masks reading q on the tile engine), two ranks on a subgroup, and the
    Triton kernels (interpreter) on two ranks."""
    import torch.multiprocessing as mp
    ctx = mp.get_context("spawn")
    results = ctx.SimpleQueue()
    assert os.environ.get("TRITON_INTERPRET") == "1"  # the children inherit it
    cases = _cases()
    mp.start_processes(_worker, args=(3, str(tmp_path / "rendezvous"), cases, results),
                       nprocs=3, start_method="spawn")
    got = dict((r, (c, o)) for r, c, o in (results.get() for _ in range(3)))
    chunks = got[0][0]
    assert set(chunks) == set(SPECS) | set(ENGINE) | {"keys before queries"}
    assert chunks["causal"] > 1  # causal: work balanced by interleaved chunks
    # overlap: a rank that needs others' keys attends to its own before it waits for them,
    # then to what it received (per-sequence backends; the tile engine waits first)
    for key in ("causal", "documents", "per-head softcap", "two triton"):
        rank = 1  # holds chunks that read keys of rank 0 (and its own)
        order = got[rank][1][key]
        assert [e[0] for e in order] == ["attention", "wait", "attention"], (key, order)
        assert order[0][1] > 0 and order[2][1] > 0, (key, order)  # keys of each source
    assert [e[0] for e in got[1][1]["grid"]] == ["wait"]  # the engine: no Mask.attention


def test_the_torchrun_example_runs():
    """README's command (examples/context_parallel.py) on two gloo ranks, checked there
    against one process."""
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           "2", "examples/context_parallel.py", "--tokens", "1024", "--head-dim", "16",
           "--backend", "reference", "--check"]
    for attempt in range(2):
        run = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=600)
        # NOTE: --standalone picks a free port, then binds it: another test process (the
        # suite runs under pytest-xdist) may take it in between; only that is retried
        if run.returncode == 0 or not re.search(r"address already in use|EADDRINUSE|"
                                                r"DistNetworkError", run.stderr, re.I):
            break
    assert run.returncode == 0, run.stderr[-3000:]
    assert "largest difference to one process" in run.stdout
    assert "rank 1: 512 queries" in run.stdout
