"""T5's relative-position bias as a table that examples/t5.mask reads.

T5 puts each relative position ``k - q`` into one of ``num_buckets`` buckets (exact up to
half of them, then logarithmic up to ``max_distance``; past it every distance shares the
last bucket) and learns one bias per bucket and head. Since the bucket no longer changes
past ``max_distance``, the bias of a pair is a function of ``clamp(k - q, -R, R)`` with
``R = max_distance``: :func:`bias_table` gathers it from the model's weight once per
step, and the mask indexes it by distance. The gather is ordinary torch indexing, so the
gradient the kernels give the table flows on to the weight.

Run it (``python examples/t5_buckets.py``) to see a T5 encoder layer's attention with
maskc against the bias applied pair by pair.
"""

from __future__ import annotations

import math
import pathlib

import torch


def bucket(relative: torch.Tensor, bidirectional: bool = True, num_buckets: int = 32,
           max_distance: int = 128) -> torch.Tensor:
    """T5's bucket of each relative position ``k - q`` (integers)."""
    out = torch.zeros_like(relative)
    if bidirectional:
        num_buckets //= 2
        out = out + (relative > 0).long() * num_buckets   # keys after the query
        dist = relative.abs()
    else:
        dist = (-relative).clamp(min=0)                    # only keys before the query
    exact = num_buckets // 2
    if max_distance <= exact:
        raise ValueError(f"max_distance ({max_distance}) must exceed the exact buckets "
                         f"({exact}): T5's log-spaced buckets lie between them")
    # log-spaced buckets from `exact` to `max_distance`, then the last one
    far = exact + (torch.log(dist.float().clamp(min=1) / exact) / math.log(max_distance / exact)
                   * (num_buckets - exact)).long()
    far = far.clamp(max=num_buckets - 1)
    return out + torch.where(dist < exact, dist, far)


def bias_table(weight: torch.Tensor, bidirectional: bool = True,
               max_distance: int = 128) -> torch.Tensor:
    """The ``(heads, 2R + 1)`` encoder table (``bias[h, d + R]`` for ``d = k - q``) or the
    ``(heads, R + 1)`` decoder table (``bias[h, d]`` for ``d = q - k``) from T5's
    ``(num_buckets, heads)`` embedding weight, ``R = max_distance``."""
    R = max_distance
    d = torch.arange(-R, R + 1) if bidirectional else -torch.arange(0, R + 1)
    return weight[bucket(d, bidirectional, weight.shape[0], max_distance)].t()


def main():
    import maskc
    heads, L, D = 4, 300, 32
    m = maskc.compile(pathlib.Path(__file__).with_name("t5.mask"), name="t5_encoder")
    weight = torch.randn(32, heads, requires_grad=True)
    q, k, v = (torch.randn(1, heads, L, D) for _ in range(3))
    out = m.attention(q, k, v, scale=1.0, bias=bias_table(weight), backend="reference")
    # the same bias pair by pair, from the buckets of k - q
    rel = torch.arange(L)[None, :] - torch.arange(L)[:, None]
    pair = weight[bucket(rel)].permute(2, 0, 1)              # (heads, L, L)
    want = torch.softmax(q @ k.transpose(-1, -2) + pair, -1) @ v
    print(f"T5 encoder, {L} tokens: max |maskc - per-pair bias| = "
          f"{(out - want).abs().max().item():.2e}")
    out.sum().backward()
    print(f"the weight's gradient: shape {tuple(weight.grad.shape)}, "
          f"norm {weight.grad.norm().item():.3f}")


if __name__ == "__main__":
    main()
