"""Context-parallel attention with maskc on torch.distributed: one training step.

    torchrun --standalone --nproc-per-node 2 examples/context_parallel.py --tokens 4096

Runs on GPUs (NCCL, one per rank) or on CPUs (gloo; Triton through its interpreter, or the
float64 reference with ``--backend reference``). Every rank builds the same plan, takes its
shard of the sequence, runs attention forward and backward, and ``--check`` compares the
result with single-process attention on rank 0.
"""

import argparse
import os

import torch
import torch.distributed as dist

import maskc
import maskc.distributed

SPEC = """
# packed documents, each causal, with a 512-token window inside a document
mask packed(input doc) = causal & window(before = 511, after = 0) & same(doc)
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--check", action="store_true", help="compare with one process")
    args = ap.parse_args()

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else "cpu"
    if cuda:
        torch.cuda.set_device(device)
    dtype = torch.bfloat16 if cuda else (torch.float64 if args.backend == "reference"
                                         else torch.float32)

    mask = maskc.compile(SPEC)
    n = args.tokens
    # three documents per 1,000 tokens or so (the same on every rank)
    lengths = torch.randint(100, 600, (n // 100 + 1,), generator=torch.Generator().manual_seed(0))
    doc = torch.repeat_interleave(torch.arange(len(lengths)), lengths)[:n]
    plan = maskc.distributed.plan(mask, n, world, heads=args.heads, doc=doc)
    if rank == 0:
        print(plan)

    # every rank makes the same full tensors here; a real data loader gives each its shard
    g = torch.Generator().manual_seed(1)
    q = torch.randn(1, args.heads, n, args.head_dim, generator=g).to(device, dtype)
    k = torch.randn(1, args.kv_heads, n, args.head_dim, generator=g).to(device, dtype)
    v = torch.randn(1, args.kv_heads, n, args.head_dim, generator=g).to(device, dtype)
    q_r, k_r, v_r = (plan.shard(t, rank).requires_grad_() for t in (q, k, v))

    out_r = maskc.distributed.attention(plan, q_r, k_r, v_r, backend=args.backend)
    out_r.float().square().sum().backward()  # a stand-in for the rest of the model
    print(f"rank {rank}: {q_r.shape[2]} queries, received "
          f"{plan.recv_tokens()[rank]} key/value tokens from {plan.peers(rank)} rank(s)")

    if args.check:
        shapes = [len(plan.rows(r)) for r in range(world)]
        parts = [out_r.new_empty(out_r.shape[:2] + (s, out_r.shape[3])) for s in shapes]
        dist.all_gather(parts, out_r.detach().contiguous())
        if rank == 0:
            qf, kf, vf = (t.detach().double().requires_grad_() for t in (q, k, v))
            ref = mask.attention(qf, kf, vf, backend="reference", doc=doc)
            err = (plan.unshard(parts).double() - ref).abs().max().item()
            print(f"largest difference to one process: {err:.2e}")
            assert err < (1e-10 if dtype == torch.float64 else 5e-2 if cuda else 1e-4)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
