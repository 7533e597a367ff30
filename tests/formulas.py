"""Float64 attention written from LANGUAGE.md section 3, for tests that check maskc against
formulas of their own (never maskc's code)."""

import math

import torch


def attention64(q, k, v, keep, score=None, scale=None):
    """``(out, lse)`` of ``softmax(score(s)) v`` in float64 over the pairs ``keep`` allows
    (a bool tensor broadcast to the scores), ``s = scale * q k^T``; rows that keep nothing
    (or whose scores are all ``-inf``) give zeros and lse ``-inf``."""
    s = (q.double() @ k.double().transpose(-1, -2)) * (scale or 1 / math.sqrt(q.shape[-1]))
    s = score(s) if score is not None else s
    s = torch.where(keep, s, torch.tensor(-math.inf, dtype=torch.float64))
    m = s.amax(-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = torch.exp(s - m)
    z = e.sum(-1, keepdim=True)
    out = (e / torch.where(z > 0, z, torch.ones_like(z))) @ v.double()
    lse = torch.where(z > 0, torch.log(z) + m, torch.full_like(z, -math.inf)).squeeze(-1)
    return out, lse
