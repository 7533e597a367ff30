"""One rank's context-parallel attention: receive the key tiles the plan lists, attend.

Each rank holds its query rows and the key/value rows it owns (``plan.shard``). It sends
every other rank exactly the key/value tiles that rank's queries visit (point-to-point,
one message per pair of ranks that has something to send, batched with
``torch.distributed.batch_isend_irecv``: NCCL on GPUs, gloo on CPUs) and receives its own;
the messages are posted and, while they travel, the rank attends to the keys it owns.
Each run of consecutive query tiles it holds becomes one *sequence* of a
per-sequence call (docs/language.md section 13): its queries at ``q_offset`` = the run's first
position, its keys the span of key tiles the run needs, at ``kv_offset`` = the span's
first position, tiles of the span that no query of the run visits left as zeros (the
mask never keeps them, so no backend reads them). Every backend that serves per-sequence
calls therefore runs it, forward and backward. It runs twice: on the keys the rank owns
(the exchange still in flight), then on the keys it received (after waiting for them),
each with ``kv_valid`` marking its own source's keys, and the two halves are merged by
their log-sum-exps (``out = out_a * exp(lse_a - lse) + out_b * exp(lse_b - lse)``,
differentiable); a backend that cannot return the log-sum-exp (compiled FlexAttention on
the CPU) waits first and runs once. The backward of the exchange sends each key/value
gradient back to the rank that owns the key, where they are summed.
"""

from __future__ import annotations

import numpy as np

from maskc import ir
from maskc.analysis.sizes import prepare_inputs
from maskc.distributed.plan import Plan, reads_rows
from maskc.errors import MaskError, MaskInputError, MaskSizeError, MaskTypeError

__all__ = ["attention"]


def attention(plan: Plan, q, k, v, group=None, backend: str = "auto", scale=None, **inputs):
    """``rank``'s rows of ``mask.attention(q, k, v)`` over the whole sequence, from its
    shards ``q = plan.shard(Q, rank)`` (``(B, H, rows, D)``), ``k``, ``v`` (``(B, Hkv,
    rows, D)``); ``rank`` is this process's rank in ``group`` (the default group when
    ``None``). ``inputs``: the mask's runtime inputs, whole (every rank passes the same;
    by default the plan's), and the score's float inputs, whole."""
    import torch
    if not isinstance(plan, Plan):
        raise MaskTypeError(f"attention() takes a maskc.distributed.Plan, got "
                            f"{type(plan).__name__}")
    mask, mdef = plan.mask, plan.mask.ir
    span = mask._span()
    engine = _needs_engine(mdef)
    if backend == "tiles" or (engine and backend == "auto"):
        engine = engine or "asked for"
    elif engine:
        raise MaskError(f"mask '{mdef.name}' {engine}, which per-sequence calls to "
                        f"backend {backend!r} refuse; use backend='auto' or 'tiles' (the "
                        f"tile engine, maskc.backends.tiles)", span)
    rank, world = _rank(group)
    if world != plan.world_size:
        raise MaskError(f"the plan is for {plan.world_size} ranks; the process group has "
                        f"{world}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise MaskTypeError(f"{name} must be a 4-d torch tensor (B, heads, rows, D), got "
                                f"{getattr(t, 'shape', type(t).__name__)}")
    nq, nk = len(plan.rows(rank)), len(plan.rows(rank, keys=True))
    if q.shape[2] != nq or k.shape[2] != nk or v.shape[2] != nk:
        raise MaskSizeError(f"rank {rank} holds {nq} query rows and {nk} key rows "
                            f"(plan.shard); got q {tuple(q.shape)}, k {tuple(k.shape)}, v "
                            f"{tuple(v.shape)}")
    if k.shape[:2] != v.shape[:2] or q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise MaskSizeError(f"q {tuple(q.shape)}, k {tuple(k.shape)} and v {tuple(v.shape)} "
                            f"do not match (B, heads, rows, D)")
    if q.shape[1] != plan.heads and _per_head(mdef):
        raise MaskSizeError(f"the plan is for {plan.heads} heads (per-head mask); q has "
                            f"{q.shape[1]}")
    ids = {n: x for n, x in inputs.items() if n in mdef.inputs}
    floats = {n: x for n, x in inputs.items() if n not in mdef.inputs}
    if ids:
        given = prepare_inputs(mdef, plan.kv_len, {**plan.inputs, **ids}, copy=True,
                               heads=plan.heads)
        for n in given:
            if not np.array_equal(given[n], plan.ids[n]):
                raise MaskInputError(f"input '{n}' differs from the one the plan was made "
                                     f"with; make a new plan for it", span)
    kv = torch.cat([k, v], dim=-1)
    route = _Route(plan, rank, group)
    pending = _Pending()
    flat = _Exchange.apply(kv, route, pending)  # NOTE: posted, not yet received
    try:
        if engine:
            return _attend_rows(plan, rank, q, kv, pending.received(flat), k.shape[-1], scale,
                                floats)
        return _attend(plan, rank, q, kv, lambda: pending.received(flat), k.shape[-1],
                       backend, scale, floats)
    finally:
        # NOTE: also when the local attention raises: the peers' messages posted for this
        # rank are taken, so the error reaches the user instead of a hang at the next
        # collective of the group (idempotent after a normal run)
        pending.wait()


def _needs_engine(mdef) -> str | None:
    """Why a rank's attention must run on the tile engine (``None``: per-sequence calls
    serve it)."""
    if mdef.grid is not None:
        return "is over a grid"
    chosen = sorted({type(n).__name__.lower() for n in ir.walk(mdef.body)
                     if isinstance(n, (ir.Random, ir.Select, ir.Keys, ir.Diagonals))})
    if chosen:
        return "uses " + ", ".join(chosen)
    rows = reads_rows(mdef)
    if rows:
        return "reads " + ", ".join(rows)
    if any(isinstance(n, ir.Within) and not _shift_free(n.body) for n in ir.walk(mdef.body)):
        # NOTE: a per-sequence call gets the ids of its key span only, so a document that
        # began before the span would seem to begin at it: positions inside within() would
        # be wrong (found by review: `where k % 2 == 0` inside within)
        return "reads positions inside within()"
    return None


def _shift_free(node) -> bool:
    """Whether ``node`` depends on positions only through ``p - k`` (causal, windows, and
    their combinations): the same wherever a document starts."""
    if isinstance(node, (ir.Causal, ir.Window, ir.Const)):
        return True
    if isinstance(node, (ir.And, ir.Or)):
        return all(_shift_free(t) for t in node.terms)
    if isinstance(node, ir.Not):
        return _shift_free(node.body)
    return False


def _received_rows(plan: Plan, rank: int) -> np.ndarray:
    """Global key rows of what ``rank`` receives, in the order the exchange delivers them."""
    recv = plan.recv[rank]
    T = plan.block
    parts = [np.arange(a * T, min((b + 1) * T, plan.kv_len), dtype=np.int64)
             for _, a, b in recv[np.argsort(recv[:, 0], kind="stable")]]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _attend_rows(plan: Plan, rank: int, q, kv, got, d: int, scale, floats):
    """The tile engine on the rank's query rows and the key rows it holds and received."""
    import torch
    from maskc.backends.tiles import attention_rows
    keys = torch.cat([kv, got], dim=2)
    k_rows = np.concatenate([plan.rows(rank, keys=True), _received_rows(plan, rank)])
    return attention_rows(plan.mask.ir, q, keys[..., :d], keys[..., d:], plan.rows(rank),
                          k_rows, plan.q_len, plan.kv_len, plan.block, scale, plan.ids,
                          floats)


def _per_head(mdef) -> bool:
    from maskc.analysis.blockmap import uses_head
    return uses_head(mdef.body)


def _rank(group) -> tuple[int, int]:
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(group), dist.get_world_size(group)
    if group is not None:
        raise MaskError("a process group was given but torch.distributed is not initialized")
    return 0, 1


class _Route:
    """What ``rank`` sends and receives: per peer, the rows of its own shard to send and
    the number of rows it receives (in the order of ``plan.recv[rank]``)."""

    def __init__(self, plan: Plan, rank: int, group):
        self.plan, self.rank, self.group = plan, rank, group
        self.send = {}
        for dest in range(plan.world_size):
            if dest == rank:
                continue
            r = plan.recv[dest]
            mine = r[r[:, 0] == rank]
            if len(mine):
                self.send[dest] = local_rows(plan, rank, mine[:, 1], mine[:, 2])
        r = plan.recv[rank]
        self.recv = {}
        for src in np.unique(r[:, 0]):
            part = r[r[:, 0] == src]
            self.recv[int(src)] = int(plan._tokens(part[:, 1], part[:, 2], plan.kv_len).sum())

    def peer(self, r: int) -> int:
        import torch.distributed as dist
        return r if self.group is None else dist.get_global_rank(self.group, r)


def local_rows(plan: Plan, rank: int, lo, hi) -> np.ndarray:
    """Rows of ``rank``'s key shard holding key tiles ``lo[i]..hi[i]`` (each inside one of
    its runs), concatenated."""
    runs = plan.k_runs[rank]
    B = plan.block
    sizes = np.minimum(runs[:, 1] * B, plan.kv_len) - runs[:, 0] * B
    first = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    out = []
    for a, b in zip(np.asarray(lo), np.asarray(hi)):
        j = int(np.searchsorted(runs[:, 0], a, side="right")) - 1
        start = first[j] + (a - runs[j, 0]) * B
        n = min((b + 1) * B, plan.kv_len) - a * B
        out.append(np.arange(start, start + n, dtype=np.int64))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def _post(route: _Route, outgoing: dict, incoming: dict) -> list:
    """Point-to-point, posted: ``outgoing[peer]`` is sent and ``incoming[peer]`` filled once
    every returned work has been waited for."""
    import torch.distributed as dist
    ops = [dist.P2POp(dist.isend, t, route.peer(p), route.group) for p, t in outgoing.items()]
    ops += [dist.P2POp(dist.irecv, t, route.peer(p), route.group) for p, t in incoming.items()]
    return dist.batch_isend_irecv(ops) if ops else []


def _exchange(route: _Route, outgoing: dict, incoming: dict) -> None:
    """Point-to-point: ``outgoing[peer]`` sent, ``incoming[peer]`` filled."""
    for work in _post(route, outgoing, incoming):
        work.wait()


class _Pending:
    """The forward exchange in flight: its works, the send buffers they read (kept alive
    until then) and where each sender's rows land in the flat receive buffer."""

    def __init__(self):
        self.works, self.keep, self.parts, self.done = [], [], [], False

    def wait(self) -> None:
        if not self.done:
            for work in self.works:
                work.wait()
            self.works, self.keep, self.done = [], [], True

    def received(self, flat):
        """``(B, Hkv, rows, 2D)``: the received rows, by sender, once they are all in (the
        views of ``flat`` are differentiable: their gradients go back through the
        exchange)."""
        import torch
        self.wait()
        parts = [flat[a:a + n].view(shape) for a, n, shape in self.parts]
        if not parts:
            return flat.new_empty(self.empty)
        return torch.cat(parts, dim=2) if len(parts) > 1 else parts[0]


def _exchange_fn():
    import torch

    class Exchange(torch.autograd.Function):
        """Forward: the key/value rows this rank receives, concatenated by sender. Backward:
        their gradients go back to the senders, which add them to their own rows'."""

        @staticmethod
        def forward(ctx, kv, route, pending):
            """Posts the exchange and returns the flat buffer it fills: read it through
            ``pending.received`` (which waits), never before."""
            ctx.route = route
            ctx.shape = kv.shape
            B, H, _, D = kv.shape
            out = {p: kv.index_select(2, torch.as_tensor(i, device=kv.device)).contiguous()
                   for p, i in route.send.items()}
            sizes = {p: B * H * n * D for p, n in route.recv.items()}
            flat = kv.new_empty((sum(sizes.values()),))
            inc, at = {}, 0
            for p in sorted(route.recv):  # each sender's rows contiguous: irecv needs it
                shape = (B, H, route.recv[p], D)
                inc[p] = flat[at:at + sizes[p]].view(shape)
                pending.parts.append((at, sizes[p], shape))
                at += sizes[p]
            pending.empty = (B, H, 0, D)
            pending.works, pending.keep = _post(route, out, inc), [out, inc]
            return flat

        @staticmethod
        def backward(ctx, grad):
            route = ctx.route
            B, H, _, D = ctx.shape
            grad = grad.contiguous()
            out, at = {}, 0
            for p in sorted(route.recv):  # the flat buffer's layout, as forward made it
                n = B * H * route.recv[p] * D
                out[p] = grad[at:at + n].view(B, H, route.recv[p], D)
                at += n
            inc = {p: grad.new_empty((B, H, len(i), D)) for p, i in route.send.items()}
            _exchange(route, out, inc)
            dkv = grad.new_zeros(ctx.shape)
            for p, i in route.send.items():
                dkv.index_add_(2, torch.as_tensor(i, device=grad.device), inc[p])
            return dkv, None, None

    return Exchange


class _ExchangeProxy:
    _fn = None

    def apply(self, kv, route, pending):
        if _ExchangeProxy._fn is None:
            _ExchangeProxy._fn = _exchange_fn()
        return _ExchangeProxy._fn.apply(kv, route, pending)


_Exchange = _ExchangeProxy()


def _attend(plan: Plan, rank: int, q, kv, receive, d: int, backend, scale, floats):
    """The rank's query runs as sequences of per-sequence calls (see the module): on its own
    keys while ``receive()`` (the received rows; it waits for them) is in flight, then on
    the received ones, merged by log-sum-exp."""
    import torch
    B, H, _, Dq = q.shape
    runs = plan.runs[rank]
    Dv = kv.shape[-1] - d
    if not len(runs):
        receive()  # NOTE: still waited for: the sends this rank posted must complete
        return q.new_zeros((B, H, 0, Dv))
    T = plan.block
    n_own = kv.shape[2]
    # key tile -> ("own", None) or ("got", first row among the received ones)
    where = {}
    for a, b in plan.k_runs[rank]:
        where.update({int(t): ("own", None) for t in range(a, b)})
    recv = plan.recv[rank]
    order = np.argsort(recv[:, 0], kind="stable")  # received rows come sorted by sender
    at = 0
    for o, a, b in recv[order]:
        for t in range(a, b + 1):
            where[int(t)] = ("got", at)
            at += min((t + 1) * T, plan.kv_len) - t * T
    n_got = at
    # per run: the span of key tiles it needs, each key slot's source (0 own, 1 received,
    # -1 none: a tile of the span that no query of the run visits) and its row there
    src_runs, row_runs, q_rows, meta = [], [], [], []
    shift = plan.kv_len - plan.q_len
    first = 0
    for (a, b), need in zip(runs, plan.run_needs(rank)):
        s0, s1 = int(need[:, 0].min()), int(need[:, 1].max())
        needed = np.zeros(s1 - s0 + 1, dtype=bool)
        for lo, hi in need:
            needed[lo - s0:hi - s0 + 1] = True
        srcs, rows = [], []
        for t in range(s0, s1 + 1):
            n = min((t + 1) * T, plan.kv_len) - t * T
            kind, off = where.get(t, (None, None)) if needed[t - s0] else (None, None)
            if kind == "own":
                srcs.append(np.zeros(n, dtype=np.int8))
                rows.append(local_rows(plan, rank, [t], [t]))
            elif kind == "got":
                srcs.append(np.ones(n, dtype=np.int8))
                rows.append(off + np.arange(n, dtype=np.int64))
            else:
                srcs.append(np.full(n, -1, dtype=np.int8))
                rows.append(np.zeros(n, dtype=np.int64))
        src_runs.append(np.concatenate(srcs))
        row_runs.append(np.concatenate(rows))
        n_q = min(b * T, plan.q_len) - a * T
        q_rows.append((first, n_q))
        first += n_q
        meta.append((a * T + shift, s0 * T))
    J = len(runs)
    Lq = max(n for _, n in q_rows)
    Ls = max(len(i) for i in src_runs)
    src = np.full((J, Ls), -1, dtype=np.int8)
    row = np.zeros((J, Ls), dtype=np.int64)
    for j, (sr, rw) in enumerate(zip(src_runs, row_runs)):
        src[j, :len(sr)], row[j, :len(rw)] = sr, rw
    dev = q.device
    qs = torch.stack([torch.nn.functional.pad(q[:, :, s:s + n], (0, 0, 0, Lq - n))
                      for s, n in q_rows], dim=1).reshape(B * J, H, Lq, Dq)
    seqs = dict(
        q_lens=torch.tensor([n for _, n in q_rows] * B, dtype=torch.int32, device=dev),
        kv_lens=torch.tensor([len(i) for i in src_runs] * B, dtype=torch.int32, device=dev),
        q_offset=torch.tensor([m[0] for m in meta] * B, dtype=torch.int32, device=dev),
        kv_offset=torch.tensor([m[1] for m in meta] * B, dtype=torch.int32, device=dev))
    ids = {}
    for name, x in plan.ids.items():  # (Bx, kv_len), read at the spans' key rows
        rows = np.stack([np.minimum(m[1] + np.arange(Ls), plan.kv_len - 1) for m in meta])
        sel = x[:, rows]  # (Bx, J, Ls)
        sel = np.broadcast_to(sel, (B,) + sel.shape[1:]).reshape(B * J, Ls)
        ids[name] = torch.as_tensor(np.array(sel), device=dev)  # a writable copy

    def call(pool, use, rows, lse: bool):
        """Attention over the spans' key slots ``use`` (``kv_valid``), read from ``pool`` at
        ``rows`` (every other slot reads an appended zero row)."""
        zero = pool.shape[2]
        pool = torch.cat([pool, pool.new_zeros((B, pool.shape[1], 1, pool.shape[3]))], dim=2)
        g = pool.index_select(2, torch.as_tensor(np.where(use, rows, zero).reshape(-1),
                                                 device=dev))
        g = g.view(B, pool.shape[1], J, Ls, pool.shape[3]).transpose(1, 2)
        g = g.reshape(B * J, pool.shape[1], Ls, pool.shape[3])
        valid = torch.as_tensor(np.broadcast_to(use, (B, J, Ls)).reshape(B * J, Ls).copy(),
                                device=dev)
        return plan.mask.attention(qs, g[..., :d], g[..., d:], scale=scale, backend=backend,
                                   kv_valid=valid, return_lse=lse, **seqs, **ids, **floats)

    own, got = bool((src == 0).any()), n_got > 0 and bool((src == 1).any())
    if not (own and got) or not _returns_lse(backend, dev):
        # one call: on everything the rank holds (after the exchange, when it needs it)
        received = receive()
        if got:  # received rows follow the rank's own in the pool
            out = call(torch.cat([kv, received], dim=2), src >= 0,
                       np.where(src == 1, row + n_own, row), False)
        else:
            out = call(kv, src == 0, row, False)
    else:
        out_a, lse_a = call(kv, src == 0, row, True)  # NOTE: while the exchange is in flight
        out_b, lse_b = call(receive(), src == 1, row, True)
        out = _merge(out_a, lse_a, out_b, lse_b)
    out = out.view(B, J, H, Lq, Dv)
    return torch.cat([out[:, j, :, :n] for j, (_, n) in enumerate(q_rows)], dim=2)


def _returns_lse(backend: str, device) -> bool:
    """Whether per-sequence calls to ``backend`` return the log-sum-exp (with its gradient)
    here: every backend but compiled FlexAttention on the CPU."""
    return not (backend == "flex" and device.type == "cpu")


def _merge(out_a, lse_a, out_b, lse_b):
    """Attention over two disjoint key sets from each one's output and log-sum-exp; a row
    with no key in either keeps zeros (its weights are 0, and so are their gradients)."""
    import torch
    # NOTE: no logaddexp: its gradient at (-inf, -inf) is NaN, which the backends' backward
    # would spread from an empty row into dk and dv (0 * NaN)
    m = torch.maximum(lse_a, lse_b)
    m = torch.where(torch.isinf(m), torch.zeros_like(m), m)
    wa, wb = torch.exp(lse_a - m), torch.exp(lse_b - m)  # in [0, 1]; 0 for an empty half
    total = wa + wb
    total = torch.where(total == 0, torch.ones_like(total), total)
    return ((out_a * wa.unsqueeze(-1) + out_b * wb.unsqueeze(-1)) /
            total.unsqueeze(-1)).to(out_a.dtype)
