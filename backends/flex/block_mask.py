"""FlexAttention block masks from maskc's block tables, and the ``flex`` backend's attention."""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict

import numpy as np

from maskc.errors import MaskError
from maskc.analysis.sizes import check_batch, check_elements

__all__ = ["to_block_mask", "block_mask", "check_device", "attention", "attention_sequences",
           "flex_attention_fn", "COMPILED_FUNCTIONS"]

def to_block_mask(bm, mask_mod, device=None):
    """A FlexAttention ``BlockMask`` holding ``bm``'s tiles, row by row.

    FlexAttention counts the padding of a tail tile as masked, so a tail tile is never
    full there: such tiles are moved to the partial list, exactly as ``create_block_mask``
    would classify them. A head-independent table keeps one head row (FlexAttention's
    ``H=None``).
    """
    import torch
    from torch.nn.attention.flex_attention import BlockMask

    B, G, nq = bm.kv_num_blocks.shape
    nk = bm.n_k_tiles
    rows = bm.head_group if G > 1 or bm.heads == 1 else np.zeros(1, dtype=np.int32)
    H = len(rows)
    check_elements(2 * B * H * nq * nk, "FlexAttention's block mask (two B x H x q-tiles x "
                   "k-tiles index tables)")
    tail_q = bm.q_len % bm.block_q != 0
    tail_k = bm.kv_len % bm.block_k != 0
    kv_num = np.zeros((B, H, nq), np.int32)
    full_num = np.zeros((B, H, nq), np.int32)
    kv_idx = np.zeros((B, H, nq, nk), np.int32)
    full_idx = np.zeros((B, H, nq, nk), np.int32)
    for b in range(B):
        for h, g in enumerate(rows):
            for i in range(nq):
                part = bm.kv_indices[b, g, i, :bm.kv_num_blocks[b, g, i]]
                full = bm.full_kv_indices[b, g, i, :bm.full_kv_num_blocks[b, g, i]]
                demote = np.ones(len(full), bool) if (tail_q and i == nq - 1) else \
                    (full == nk - 1) if tail_k else np.zeros(len(full), bool)
                part = np.sort(np.concatenate([part, full[demote]]))
                full = full[~demote]
                kv_num[b, h, i], full_num[b, h, i] = len(part), len(full)
                kv_idx[b, h, i, :len(part)] = part
                full_idx[b, h, i, :len(full)] = full
    t = lambda a: torch.from_numpy(a).to(device)  # noqa: E731
    return BlockMask.from_kv_blocks(t(kv_num), t(kv_idx), t(full_num), t(full_idx),
                                    BLOCK_SIZE=(bm.block_q, bm.block_k), mask_mod=mask_mod,
                                    seq_lengths=(bm.q_len, bm.kv_len))


# The most compiled functions kept (least recently used dropped first, with their kernels).
COMPILED_FUNCTIONS = 64

_COMPILED: OrderedDict = OrderedDict()
_COMPILED_LOCK = threading.Lock()
_NAMES = itertools.count()


def _flex_entry(q, k, v, block_mask, scale, enable_gqa, return_lse, score_mod=None):
    from torch.nn.attention.flex_attention import flex_attention
    return flex_attention(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale,
                          enable_gqa=enable_gqa, return_lse=return_lse)


def flex_attention_fn(compiled: bool = True, key=None):
    """``flex_attention``, through ``torch.compile`` when it works here (CPU included).

    ``key`` names a mask structure (see :func:`attention`): each key gets its own compiled
    function, so distinct masks neither evict each other's kernels nor share one recompile
    budget. At most :data:`COMPILED_FUNCTIONS` are kept.
    """
    from torch.nn.attention.flex_attention import flex_attention
    if not compiled:
        return flex_attention
    with _COMPILED_LOCK:
        if key in _COMPILED:
            _COMPILED.move_to_end(key)
            return _COMPILED[key]
        import types
        import torch
        # NOTE: dynamo keeps its compiled code, guards and recompile count (recompile_limit,
        # 8) on the code object of the frame it compiles: one torch.compile(flex_attention)
        # for every mask guarded on each mask_mod's code, on head counts, dtypes and block
        # sizes, hit the limit after a few masks and then silently ran FlexAttention unfused
        # (O(N^2) memory). A fresh code object per key gives each key its own cache.
        # dynamic=True: one kernel for any length (lengths of one tile are specialized, so at
        # most two), as fast here as a static one; with dynamic=None a key compiled a static
        # kernel, then one per change of the tile counts.
        code = _flex_entry.__code__.replace(co_name=f"maskc_flex_attention_{next(_NAMES)}")
        entry = types.FunctionType(code, _flex_entry.__globals__, code.co_name)
        fn = torch.compile(entry, dynamic=True)
        _COMPILED[key] = fn
        while len(_COMPILED) > COMPILED_FUNCTIONS:
            _COMPILED.popitem(last=False)
        return fn


def check_device(device) -> None:
    """A :class:`MaskError` for a device torch cannot use here (before any analysis)."""
    import torch
    try:
        dev = torch.device(device)
        torch.empty(0, device=dev)
    except (RuntimeError, TypeError, AssertionError, ValueError) as err:
        raise MaskError(f"device {device!r} is not available here: "
                        f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") \
            from None


def block_mask(plan):
    """The FlexAttention ``BlockMask`` of a ``"flex"`` plan: its forward tables (tiles of the
    plan's block size, heads grouped) and the generated ``mask_mod``; built once per plan."""
    if plan.target != "flex":
        raise MaskError(f"a FlexAttention block mask needs a 'flex' plan, not {plan.target!r}")
    if "block_mask" not in plan.cache:
        from maskc.backends.flex.mask_mod import make_mask_mod, torch_inputs
        device = plan.options["device"]
        mod = make_mask_mod(plan.mdef, plan.q_len, plan.kv_len, plan.heads,
                            torch_inputs(plan.mdef, plan.kv_len, plan.bound.inputs, device),
                            device=device)
        plan.cache["block_mask"] = to_block_mask(plan.block_map("fwd"), mod, device)
    return plan.cache["block_mask"]


def attention(plan, q, k, v, scale=None, return_lse=False, compiled=True, score_inputs=None):
    """Run ``flex_attention`` with a ``"flex"`` plan's block mask and generated ``mask_mod``
    (and, for a mask with a score, its generated ``score_mod`` over ``score_inputs``)."""
    bm_mask = block_mask(plan)
    score_mod = None
    if plan.mdef.score is not None:
        from maskc.backends.flex.mask_mod import make_score_mod
        score_mod = make_score_mod(plan.mdef, plan.q_len, plan.kv_len, score_inputs or {},
                                   q.device)
    check_batch(plan.mdef, plan.batch, q.shape[0])  # inputs' batch
    gqa = q.shape[1] != k.shape[1]
    # NOTE: what the compiled kernel specializes on besides lengths and batch (which become
    # dynamic on the second call): the mask_mod's code (one per generated source text), head
    # counts, dtype, head dims, tile sizes, return_lse, device.
    key = (getattr(bm_mask.mask_mod, "source", None) or id(bm_mask.mask_mod.__code__),
           q.shape[1], k.shape[1], str(q.dtype), q.shape[-1], v.shape[-1],
           tuple(bm_mask.BLOCK_SIZE), bool(return_lse), q.device.type,
           score_mod.source if score_mod is not None else None)
    return _run(plan.mdef, flex_attention_fn(compiled, key), compiled, q, k, v, bm_mask, scale,
                gqa, return_lse, score_mod)


def _run(mdef, fn, compiled, q, k, v, block, scale, gqa, return_lse, score_mod):
    """``fn`` (flex_attention, compiled or not) on one call, its failures as MaskErrors."""
    import torch
    if q.device.type == "cpu" and not torch.is_grad_enabled():
        # NOTE: FlexAttention on the CPU refuses tensors that require grad even under no_grad
        q, k, v = q.detach(), k.detach(), v.detach()
    try:
        if compiled:
            return fn(q, k, v, block, scale, gqa, return_lse, score_mod)
        return fn(q, k, v, score_mod=score_mod, block_mask=block, scale=scale,
                  enable_gqa=gqa, return_lse=return_lse)
    except Exception as err:  # torch wraps it (InternalTorchDynamoError)
        if (isinstance(err, RecursionError) or isinstance(err.__cause__, RecursionError)
                or "RecursionError" in str(err).split("\n", 1)[0]):
            raise MaskError("the mask nests too deeply for FlexAttention, whose torch.compile "
                            "tracer recurses once per level (even with flex-eager); use "
                            "backend='triton' or 'reference'", mdef.span) from None
        if compiled and _compiler_error(err):
            lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()] or [""]
            first = next((ln for ln in lines if "error:" in ln), lines[0])  # the compiler's
            raise MaskError(f"torch.compile could not compile FlexAttention for mask "
                            f"'{mdef.name}' on {q.device.type} ({type(err).__name__}: "
                            f"{first[:300]}); use backend='flex-eager' (the same "
                            f"FlexAttention, not compiled), 'triton' (with TRITON_INTERPRET=1 "
                            f"on the CPU) or 'reference'", mdef.span) from None
        raise


def _compiler_error(err: BaseException) -> bool:
    """Whether ``err`` (or what it wraps) was raised by torch's compiler stack (dynamo,
    Inductor, the C++ compiler it calls), not by the inputs."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        mod = type(err).__module__ or ""
        if mod.startswith(("torch._dynamo", "torch._inductor")):
            return True
        err = err.__cause__ or getattr(err, "inner_exception", None)
    return False


def _demoted(bm, seqs):
    """``bm`` (per-sequence tables, ``passes.sequences.sequence_map``) with every full tile
    that FlexAttention may not treat as full moved to the partial list: tiles past a
    sequence's queries or keys (FlexAttention applies no mask_mod to a full tile, and the
    tensors' rows there are padding) and tiles holding a key that ``kv_valid`` drops."""
    from dataclasses import replace
    B, G, nq = bm.kv_num_blocks.shape
    bq, bk = bm.block_q, bm.block_k
    nk = bm.n_k_tiles
    lq = np.asarray(seqs.q_lens)[:, None, None, None]
    lk = np.asarray(seqs.kv_lens)[:, None, None, None]
    idx = bm.full_kv_indices
    used = np.arange(idx.shape[-1]) < bm.full_kv_num_blocks[..., None]
    qt = np.arange(nq)[None, None, :, None]
    crosses = ((qt + 1) * bq > lq) | ((idx + 1) * bk > lk)
    if seqs.kv_valid is not None:
        from maskc.passes.sequences import tiles_of_valid
        # NOTE: keys past a sequence's length count as valid here (the first test demotes
        # those tiles); only the flags come to the host
        all_valid = tiles_of_valid(seqs.kv_valid, [seqs.kv_valid.shape[1]] * B, bk, nk,
                                   every=True)
        crosses |= ~all_valid[np.arange(B)[:, None, None, None], np.clip(idx, 0, nk - 1)]
    demote = used & crosses
    if not demote.any():
        return bm
    full_keep = used & ~demote
    rows_p, rows_f = [], []
    width_p, width_f = 1, 1
    for b, g, i in np.ndindex(B, G, nq):
        part = bm.kv_indices[b, g, i, :bm.kv_num_blocks[b, g, i]]
        moved = idx[b, g, i][demote[b, g, i]]
        p = np.sort(np.concatenate([part, moved]))
        f = idx[b, g, i][full_keep[b, g, i]]
        rows_p.append(p)
        rows_f.append(f)
        width_p, width_f = max(width_p, len(p)), max(width_f, len(f))

    def table(rows, width):
        out = np.full((B, G, nq, width), -1, dtype=np.int32)
        num = np.zeros((B, G, nq), dtype=np.int32)
        for n, (b, g, i) in enumerate(np.ndindex(B, G, nq)):
            out[b, g, i, :len(rows[n])] = rows[n]
            num[b, g, i] = len(rows[n])
        return num, out
    pn, pi = table(rows_p, width_p)
    fn, fi = table(rows_f, width_f)
    return replace(bm, kv_num_blocks=pn, kv_indices=pi, full_kv_num_blocks=fn,
                   full_kv_indices=fi, variant=np.zeros_like(pi), live=None)


def attention_sequences(plan, seqs, q, k, v, scale=None, return_lse=False, compiled=True,
                        score_inputs=None):
    """``flex_attention`` over a batch of sequences (LANGUAGE.md section 10): the block mask
    from each sequence's own tables (``passes.sequences``) and one mask_mod that reads each
    sequence's lengths, offsets and valid keys. A paged cache is gathered into ``(B, Hkv,
    P * page_size, D)`` first (FlexAttention reads no page table: a copy)."""
    import torch
    from maskc.backends.flex.mask_mod import (make_score_mod, make_sequence_mask_mod,
                                              sequence_supported)
    why = sequence_supported(plan.mdef)
    if why is not None:
        raise MaskError(f"FlexAttention with per-sequence lengths does not take {why} yet; "
                        "use backend='triton' or 'reference'", plan.mdef.span)
    if seqs.page_table is not None:
        table = np.asarray(seqs.page_table)
        ps = seqs.page_size
        # NOTE: entries past a sequence's keys are padding that may point anywhere: never read
        used = np.arange(table.shape[1])[None, :] < -(-np.asarray(seqs.kv_lens)[:, None] // ps)
        pages = torch.as_tensor(np.where(used, table, 0), device=k.device, dtype=torch.long)
        k, v = (x[pages].permute(0, 2, 1, 3, 4).reshape(pages.shape[0], x.shape[1], -1,
                                                         x.shape[3]) for x in (k, v))
    Lq, Lk = q.shape[2], k.shape[2]
    device = q.device
    mod = make_sequence_mask_mod(plan.mdef, plan.heads, seqs, Lk, device)
    bm = _demoted(plan.sequence_map("fwd", seqs, Lq, Lk), seqs)
    block = to_block_mask(bm, mod, device)
    score_mod = None
    if plan.mdef.score is not None:
        score_mod = make_score_mod(plan.mdef, Lq, Lk, score_inputs or {}, device,
                                   sequences=seqs)
    gqa = q.shape[1] != k.shape[1]
    key = ("sequences", mod.source, q.shape[1], k.shape[1], str(q.dtype), q.shape[-1],
           v.shape[-1], tuple(block.BLOCK_SIZE), bool(return_lse), device.type,
           score_mod.source if score_mod is not None else None)
    return _run(plan.mdef, flex_attention_fn(compiled, key), compiled, q, k, v, block, scale,
                gqa, return_lse, score_mod)
