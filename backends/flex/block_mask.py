"""FlexAttention block masks from maskc's block tables, and the ``flex`` backend's attention."""

from __future__ import annotations

import itertools
import mmap
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

    The object is the one ``BlockMask.from_kv_blocks`` returns for these forward tables --
    the same fields, shapes, dtypes (int32), ``seq_lengths`` and ``BLOCK_SIZE``, and the
    same entries up to each row's count (past it, FlexAttention's "undefined" padding is 0
    here) -- but the backward tables (``q_*``: per key tile, its query tiles, ascending)
    come from a transpose of the tile lists here, not from torch's, which builds and
    argsorts a dense int32 ``k-tiles x q-tiles`` matrix per head (seconds at 1M tokens).
    FlexAttention's format itself is dense: each of the four index tables is ``B x H x
    q-tiles x k-tiles`` int32 (268 MB at 1M tokens in tiles of 128); on the CPU only the
    pages holding entries are written, the rest stay untouched (not resident).
    """
    import torch
    from torch.nn.attention.flex_attention import BlockMask

    B, G, nq = bm.kv_num_blocks.shape
    nk = bm.n_k_tiles
    rows = bm.head_group if G > 1 or bm.heads == 1 else np.zeros(1, dtype=np.int32)
    H = len(rows)
    check_elements(2 * B * H * nq * nk, "FlexAttention's block mask (two B x H x q-tiles x "
                   "k-tiles index tables)")
    C = B * H  # (batch, head) cells; heads sharing a group get copies (torch's format)
    part, full = ((num[:, rows].reshape(C * nq), idx[:, rows].reshape(C * nq, -1))
                  for num, idx in ((bm.kv_num_blocks, bm.kv_indices),
                                   (bm.full_kv_num_blocks, bm.full_kv_indices)))
    part, full = _demote(part, full, nq, nk, bm.q_len % bm.block_q != 0,
                         bm.kv_len % bm.block_k != 0)
    out = []
    for num, idx in (part, full):
        q_num, q_idx = _transposed(num, idx, C, nq, nk)
        out += [num.astype(np.int32).reshape(B, H, nq),
                _widened(num, idx, nk).reshape(B, H, nq, nk),
                q_num.reshape(B, H, nk), q_idx.reshape(B, H, nk, nq)]
    kn, ki, qn, qi, fkn, fki, fqn, fqi = (torch.from_numpy(a).to(device) for a in out)
    return BlockMask(seq_lengths=(int(bm.q_len), int(bm.kv_len)), kv_num_blocks=kn,
                     kv_indices=ki, full_kv_num_blocks=fkn, full_kv_indices=fki,
                     q_num_blocks=qn, q_indices=qi, full_q_num_blocks=fqn,
                     full_q_indices=fqi, BLOCK_SIZE=(int(bm.block_q), int(bm.block_k)),
                     mask_mod=mask_mod)


_CHUNK = 1 << 22  # elements of the dense transpose's temporaries handled at once
_SPARSE = 16  # tables with fewer than 1/16 of all tiles are transposed by sorting


def _entries(num, idx):
    """The used entries of a padded table (``num (R,)``, ``idx (R, width)``): their rows
    and key tiles, int64, in table order."""
    counts = num.astype(np.int64)
    r = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    pos = np.arange(len(r), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    return r, idx.reshape(-1)[r * idx.shape[1] + pos].astype(np.int64)


def _padded(r, k, rows):
    """Entries sorted by row as a padded table ``(num (rows,), idx (rows, width))``, -1
    past each row's count, as the block analysis gives them."""
    counts = np.bincount(r, minlength=rows)
    out = np.full((rows, max(int(counts.max(initial=0)), 1)), -1, dtype=np.int32)
    pos = np.arange(len(r), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    out[r, pos] = k
    return counts.astype(np.int32), out


def _demote(part, full, nq, nk, tail_q, tail_k):
    """Full tiles FlexAttention must apply the mask_mod to (it counts a tail tile's padding
    as masked) moved to the partial tables: every tile of a tail query row, and each row's
    tail key tile. Rows stay sorted by key tile."""
    (pn, pi), (fn, fi) = part, full
    used = np.arange(fi.shape[1]) < fn[:, None]
    move = np.zeros_like(used)
    if tail_q:
        move |= (np.arange(len(fn)) % nq == nq - 1)[:, None]
    if tail_k:
        move |= fi == nk - 1
    move &= used
    if not move.any():
        return part, full
    r, k = _entries(pn, pi)
    mr, mc = np.nonzero(move)
    r, k = np.concatenate([r, mr]), np.concatenate([k, fi[mr, mc]])
    order = np.lexsort((k, r))
    kr, kc = np.nonzero(used & ~move)
    return _padded(r[order], k[order], len(pn)), _padded(kr, fi[kr, kc], len(fn))


def _widened(num, idx, nk):
    """A padded table ``(R, width)`` as FlexAttention's ``(R, nk)`` int32, 0 past counts."""
    R, w = idx.shape
    out = _zeros(R * nk).reshape(R, nk)
    step = max(1, _CHUNK // max(w, 1))
    for a in range(0, R, step):
        n = num[a:a + step]
        u = int(n.max(initial=0))  # the used columns of these rows
        out[a:a + len(n), :u] = np.where(np.arange(u) < n[:, None], idx[a:a + step, :u], 0)
    return out


def _transposed(num, idx, C, nq, nk):
    """Per cell and key tile, the query tiles holding it, ascending (FlexAttention's
    ``q_num_blocks (C * nk,)``, ``q_indices (C * nk, nq)``) from per cell and query tile
    the key tiles (``num (C * nq,)``, ``idx (C * nq, width)``).

    Sparse tables: a stable sort of the entries by (cell, key tile), on 16-bit keys where
    they fit (numpy's radix sort). Dense ones (causal: half of all tiles): a transposed
    bit matrix scanned row by row, linear in the tiles -- what torch's argsort of the
    same matrix costs a sort for.
    """
    E = int(num.sum(dtype=np.int64))
    if E * _SPARSE < C * nq * nk:
        r, k = _entries(num, idx)
        cell, q = np.divmod(r, nq)
        if nk <= 1 << 16 and C <= 1 << 16:
            # NOTE: two stable passes on 16-bit keys (numpy's radix sort): by key tile, then
            # cell; query tiles, already ascending in each, stay so
            order = np.argsort(k.astype(np.uint16), kind="stable")
            order = order[np.argsort(cell[order].astype(np.uint16), kind="stable")]
        else:
            order = np.argsort(cell * nk + k, kind="stable")
        return _table(cell[order] * nk + k[order], q[order], C * nk, nq)
    n = C * nk * nq
    hit = np.zeros(n + 1, dtype=bool)  # (cell, key tile, query tile); [n] takes the padding
    R, w = idx.shape
    step = max(1, _CHUNK // max(w, 1))
    for a in range(0, R, step):
        cnt = num[a:a + step]
        u = int(cnt.max(initial=0))  # the used columns of these rows
        cell, q = np.divmod(np.arange(a, a + len(cnt), dtype=np.int64), nq)
        flat = (cell * nk * nq + q)[:, None] + idx[a:a + step, :u].astype(np.int64) * nq
        flat[np.arange(u) >= cnt[:, None]] = n
        hit[flat] = True
    hit = hit[:n].reshape(C * nk, nq)
    counts = np.zeros(C * nk, dtype=np.int32)
    out = _zeros(n).reshape(C * nk, nq)
    step = max(1, _CHUNK // nq)
    cols = np.arange(nq, dtype=np.int32)
    for a in range(0, C * nk, step):
        rows = hit[a:a + step]
        cnt = rows.sum(axis=1)
        # NOTE: a row's query tiles, ascending, fill its leading cells: in row-major order
        # the set bits' columns are exactly the values of those cells
        out[a:a + step][cols < cnt[:, None]] = np.nonzero(rows)[1]
        counts[a:a + len(cnt)] = cnt
    return counts, out


def _table(r, k, rows, width):
    """FlexAttention's ``(num_blocks (rows,), indices (rows, width))`` int32 from entries
    sorted by row; indices past a row's count are 0."""
    counts = np.bincount(r, minlength=rows)
    pos = np.arange(len(r), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    out = _zeros(rows * width)
    out[r * width + pos] = k
    return counts.astype(np.int32), out.reshape(rows, width)


_LAZY_BYTES = 1 << 22  # larger tables are fresh mappings without transparent huge pages


def _zeros(n):
    """``n`` int32 zeros whose pages are only resident once written.

    NOTE: np.zeros is calloc'd, but numpy asks for transparent huge pages on large arrays:
    the first write in each 2 MiB then zero-fills all of it (with kernel compaction: up to
    ~1 s per 268 MB table on the 2-core machine), and every row of a table is written at
    its start, so every huge page was. An anonymous mapping without them faults 4 KiB pages.
    """
    if n > 0 and n * 4 >= _LAZY_BYTES and hasattr(mmap, "MADV_NOHUGEPAGE"):
        buf = mmap.mmap(-1, n * 4)
        buf.madvise(mmap.MADV_NOHUGEPAGE)
        return np.frombuffer(buf, dtype=np.int32)
    return np.zeros(n, dtype=np.int32)


# The most compiled functions kept (least recently used dropped first, with their kernels).
COMPILED_FUNCTIONS = 64

_COMPILED: OrderedDict = OrderedDict()
_COMPILED_LOCK = threading.Lock()
_NAMES = itertools.count()


def _flex_entry(q, k, v, block_mask, scale, enable_gqa, return_lse, score_mod=None):
    from torch.nn.attention.flex_attention import flex_attention
    return flex_attention(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale,
                          enable_gqa=enable_gqa, return_lse=return_lse)


def _eager(*args, **kwargs):
    """``flex_attention`` unfused, as ``backend="flex-eager"`` asks: without torch's warning
    that it was called without ``torch.compile`` (the user chose that; it is not a mistake
    to report in their output)."""
    import warnings
    from torch.nn.attention.flex_attention import flex_attention
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        return flex_attention(*args, **kwargs)


def flex_attention_fn(compiled: bool = True, key=None):
    """``flex_attention``, through ``torch.compile`` when it works here (CPU included).

    ``key`` names a mask structure (see :func:`attention`): each key gets its own compiled
    function, so distinct masks neither evict each other's kernels nor share one recompile
    budget. At most :data:`COMPILED_FUNCTIONS` are kept.
    """
    if not compiled:
        return _eager
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
    """``flex_attention`` over a batch of sequences (docs/language.md section 13): the block mask
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
    from maskc.backends.flex.mask_mod import torch_inputs
    ids = torch_inputs(plan.mdef, Lk, plan.bound.inputs, device) if plan.mdef.inputs else {}
    mod = make_sequence_mask_mod(plan.mdef, plan.heads, seqs, Lk, device, ids)
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
