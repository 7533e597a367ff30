"""Context parallelism on ``torch.distributed`` (the README's "Many GPUs").

:func:`plan` (pure host work) balances query tiles over ranks by the tiles they really
visit and lists the key/value tiles each rank needs from each other rank;
:func:`attention` runs one rank's part, sending exactly those tiles.
"""

from maskc.distributed.plan import Plan, plan

__all__ = ["Plan", "plan", "attention"]


def attention(plan, q, k, v, group=None, backend: str = "auto", scale=None, **inputs):
    """This rank's attention output for its shards ``q``, ``k``, ``v`` (see
    :mod:`maskc.distributed.execute`)."""
    from maskc.distributed.execute import attention as run
    return run(plan, q, k, v, group=group, backend=backend, scale=scale, **inputs)
