"""The Python API: ``maskc.compile`` and the compiled :class:`Mask`.

``compile`` reads top to bottom as the pipeline: read -> parse -> check -> verify ->
simplify -> verify. Later stages (block analysis, lowering) hang off the :class:`Mask`.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from maskc import ir, validate
from maskc.analysis import sizes
from maskc.frontend.check import check
from maskc.errors import (MaskError, MaskInputError, MaskSizeError, MaskTypeError, MaskValueError,
                          Source, Span)
from maskc.frontend.parser import parse
from maskc.ir.pretty import pretty
from maskc.ir.simplify import simplify
from maskc.ir.verify import verify

__all__ = ["compile", "Mask", "read_source", "set_dense_limit", "dense_limit", "PLANS_PER_MASK"]

PLANS_PER_MASK = 8


MAX_SOURCE_BYTES = 1 << 24  # 16 MiB: far above any spec (a 2000 x 2000 layout is 12 MB)


def read_source(source) -> tuple[str, str]:
    """``(text, filename)``: a ``Path`` or a ``str`` naming an existing ``.mask`` file is read.

    Anything else than ``str`` or ``os.PathLike`` is a :class:`~maskc.MaskTypeError`; a file
    that cannot be read (missing, a directory, a path with a NUL byte) is a
    :class:`~maskc.MaskValueError`; one over ``MAX_SOURCE_BYTES`` (``/dev/zero``) a
    :class:`~maskc.MaskSizeError` after reading at most that much; bytes that are not
    UTF-8 a :class:`~maskc.MaskValueError` at their line and column.
    """
    if isinstance(source, os.PathLike) or (isinstance(source, str) and source.endswith(".mask")
                                           and "\n" not in source and Path(source).is_file()):
        return _read_file(source), str(source)
    if not isinstance(source, str):
        raise MaskTypeError(f"maskc.compile takes source text (str) or a path (str ending in "
                            f".mask, or pathlib.Path), got {type(source).__name__}")
    if len(source) > MAX_SOURCE_BYTES:
        raise MaskSizeError(f"the source text has {len(source):,} characters, more than the "
                            f"limit of {MAX_SOURCE_BYTES:,}")
    if source.strip().endswith(".mask") and not any(c in source.strip() for c in " \n=("):
        raise MaskError(f"no such file: {source.strip()}")  # a path, not source text
    return source, "<string>"


def _read_file(source) -> str:
    try:
        with open(source, "rb") as f:
            # NOTE: bounded: /dev/zero or a huge file must not be read into memory whole
            data = f.read(MAX_SOURCE_BYTES + 1)
    except (OSError, ValueError) as err:  # ValueError: a NUL byte in the path
        raise MaskValueError(f"cannot read {_shown(source)}: "
                             f"{getattr(err, 'strerror', None) or err}") from None
    if len(data) > MAX_SOURCE_BYTES:
        raise MaskSizeError(f"cannot read {_shown(source)}: it is larger than "
                            f"{MAX_SOURCE_BYTES:,} bytes, the limit for a .mask file")
    data = data.removeprefix(b"\xef\xbb\xbf")  # a BOM is not code
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        # NOTE: point at the byte: line and column count characters of the text before it
        before = data[:err.start].decode("utf-8")
        line = before.count("\n") + 1
        column = len(before) - (before.rfind("\n") + 1) + 1
        text = data.decode("utf-8", errors="replace")
        span = Span(Source(text, str(source)), line, column, line, column + 1)
        raise MaskValueError(f"the file is not UTF-8: byte 0x{data[err.start]:02x} "
                             f"cannot be decoded ({err.reason})", span) from None


def _shown(source) -> str:
    return repr(str(source)) if "\x00" in str(source) else str(source)


def compile(source, name: str | None = None, **params) -> "Mask":  # noqa: A001 - fixed API name
    """Compile a `.mask` spec (text or path) into a :class:`Mask`.

    ``name`` picks the mask when the file has several; ``params`` override its parameters.
    Raises :class:`~maskc.MaskError` (with ``.line``/``.column``) on any problem in the spec.
    """
    text, filename = read_source(source)
    if name is not None and not isinstance(name, str):
        raise MaskTypeError(f"name must be a mask's name (a str) or None, got "
                            f"{type(name).__name__}")
    module = parse(text, filename)
    mdef = verify(check(module, name, **params))
    mdef = verify(simplify(mdef))
    return Mask(mdef, Source(text, filename), params)


def dense_limit() -> int:
    """The most elements a dense mask (or reference score matrix) may have."""
    return sizes.dense_limit()


def set_dense_limit(n: int | None) -> None:
    """Change :func:`dense_limit` (``None`` restores the default of 2**28 elements)."""
    sizes.set_dense_limit(n)


class Mask:
    """A compiled mask. Build with :func:`maskc.compile`."""

    def __init__(self, ir_: ir.MaskDef, source: Source, params: dict):
        self.ir = ir_
        self.source = source
        self.params = dict(params)
        self._plans: OrderedDict = OrderedDict()  # the plans of the last few sizes and inputs
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.ir.name

    @property
    def inputs(self) -> tuple[str, ...]:
        """Names of the runtime inputs (``input x``) that ``dense``/``attention`` need."""
        return self.ir.inputs

    @property
    def grid(self) -> tuple[int, ...] | None:
        """The grid's shape for a mask ``over grid(...)``, else ``None``."""
        return self.ir.grid.shape if self.ir.grid is not None else None

    def __repr__(self) -> str:
        return f"<maskc.Mask {self.name}: {pretty(self.ir).strip()}>"

    def pretty(self) -> str:
        """The compiled mask as `.mask` source (parameters substituted); it parses back."""
        return pretty(self.ir)

    def dense(self, q_len: int | None = None, kv_len: int | None = None, heads: int = 1,
              **inputs):
        """The exact mask as a numpy bool array of shape ``(heads, q_len, kv_len)``.

        ``kv_len`` defaults to ``q_len``; a mask over a grid defaults both to the grid's size.
        Runtime inputs are passed by name, shape ``(kv_len,)`` or ``(B, kv_len)``; with a
        batched input the result is ``(B, heads, q_len, kv_len)``. Sizes over
        :func:`maskc.dense_limit` raise :class:`~maskc.MaskSizeError` before allocating.
        """
        from maskc.backends import reference
        return reference.dense(self.ir, q_len, kv_len, heads, **inputs)

    def block_map(self, q_len: int | None = None, kv_len: int | None = None, heads: int = 1,
                  block_q: int = 128, block_k: int | None = None, **inputs):
        """The tile structure at this size (:class:`maskc.analysis.blocktable.BlockMap`), built from the IR.

        Exact for every primitive; ``where`` predicates are analysed soundly (a tile may be
        called partial when it is not). Cost grows with the visited tiles, not ``Lq * Lk``.
        """
        from maskc.backends import reference
        from maskc.analysis.blocktable import build
        return build(self.ir, q_len, kv_len, heads, block_q, block_k,
                     evaluate=reference.evaluate, **inputs)

    def plot(self, q_len: int | None = None, kv_len: int | None = None, heads: int = 1, *,
             block: int | None = None, view: str = "auto", dpi: int = 100, **inputs):
        """The mask drawn as a :class:`matplotlib.figure.Figure` (``fig.savefig("m.png")``).

        One pixel per pair for small sizes (both lengths at most 512), else tiles (full,
        partial, empty; at most 256 per side unless ``block`` is given); one panel per
        distinct head pattern; the spec and statistics in the title. ``view`` forces
        ``"pairs"`` or ``"tiles"``. Needs matplotlib (``pip install 'maskc[plot]'``).
        """
        from maskc.plot import plot
        return plot(self, q_len, kv_len, heads, block=block, view=view, dpi=dpi, **inputs)

    def plan(self, q_len: int | None = None, kv_len: int | None = None, heads: int = 1,
             kv_heads: int | None = None, target: str = "triton", **options):
        """The back half for one size and target: a :class:`maskc.pipeline.KernelPlan`.

        The plan is what a backend runs: ``.groups`` (query heads that share one block
        table), ``.tiles`` (per kernel), ``.layout`` (the token order of a grid mask, or
        ``None``); ``str(plan)`` is what ``maskc show FILE --target T`` prints. ``target`` is
        ``"triton"`` (options ``device``, default ``"cuda"``; ``dtype``, default
        ``"bfloat16"``; ``head_dim``, default 128; ``config``, a :class:`maskc.KernelConfig`),
        ``"flex"`` (``block_size``, default 128; ``device``) or ``"reference"``. Runtime
        inputs are passed by name, as to :meth:`dense`. Plans are cached per size, options and
        input content (a few per mask), so a training loop that repeats a shape plans once.
        """
        from maskc import pipeline
        from maskc.backends import reference
        from maskc.passes.bind import digest
        from maskc.passes.chosen import chosen_inputs, mode as chosen_mode
        # NOTE: keywords are the mask's runtime inputs and the target's options
        known = pipeline.target_options(target)
        for k in options:
            if k not in self.ir.inputs and k not in known:
                names = [*self.ir.inputs, *self.ir.score_inputs]
                raise MaskInputError(
                    f"mask '{self.name}' has no runtime input '{k}' (its inputs: "
                    f"{', '.join(names) or 'none'}), and '{k}' is no option of "
                    f"target {target!r} (its options: {', '.join(known) or 'none'})",
                    self._span())
        inputs = {k: options.pop(k) for k in list(options) if k in self.ir.inputs}
        opts = pipeline.normalize_options(target, options)
        # NOTE: checked before they key the cache (an array is no key; 64 and 64.0 are one)
        q_len, kv_len = sizes.resolve_lengths(self.ir, q_len, kv_len)
        heads = sizes.check_heads(self.ir, heads)
        if kv_heads is not None:  # bind checks that it divides heads
            kv_heads = validate.integer(kv_heads, "kv_heads", 1, sizes.MAX_HEADS, self.ir.span)
        # NOTE: selections merged on the device per call key the plan by shape, not content
        # (reading a GPU tensor back every step is what the device merge avoids)
        per_call = chosen_inputs(self.ir) if chosen_mode(self.ir, target, inputs) == "device" \
            else ()
        key = (q_len, kv_len, heads, heads if kv_heads is None else kv_heads, target,
               tuple(sorted(opts.items())),
               digest({k: v for k, v in inputs.items() if k not in per_call}),
               tuple((k, tuple(inputs[k].shape), str(inputs[k].dtype)) for k in per_call))
        with self._lock:
            if key in self._plans:
                self._plans.move_to_end(key)
                return self._plans[key]
        p = pipeline.plan(self.ir, q_len, kv_len, heads, kv_heads, target,
                          evaluate=reference.evaluate, inputs=inputs, **opts)
        with self._lock:
            self._plans[key] = p
            while len(self._plans) > PLANS_PER_MASK:
                self._plans.popitem(last=False)
        return p

    def kernel_source(self) -> str:
        """The generated Triton module for this mask (what ``backend="triton"`` runs)."""
        from maskc.backends import triton
        return triton.generate(self.ir)[0]

    def kernel_path(self):
        """Where the generated module is cached (written if needed): a content-hashed file."""
        from maskc.backends import triton
        return triton.write_source(self.kernel_source(), self.name)

    def mask_mod(self, q_len: int | None = None, kv_len: int | None = None, heads: int = 1,
                 device=None, **inputs):
        """The mask as a FlexAttention ``mask_mod(b, h, q_idx, kv_idx)`` (generated from the IR)."""
        from maskc.backends import flex
        q_len, kv_len = sizes.resolve_lengths(self.ir, q_len, kv_len)
        heads = sizes.check_heads(self.ir, heads)
        if device is not None:  # where the captured tables go: usable here, or an error now
            flex.check_device(device)
        return flex.make_mask_mod(self.ir, q_len, kv_len, heads,
                                  flex.torch_inputs(self.ir, kv_len, inputs, device),
                                  device=device)

    def score_mod(self, q_len: int | None = None, kv_len: int | None = None, device=None,
                  **floats):
        """The score as a FlexAttention ``score_mod(score, b, h, q_idx, kv_idx)`` (generated
        from the IR, ``.source``), reading the float inputs given (captured: their gradients
        flow where FlexAttention's do); a :class:`MaskError` for a mask without a score."""
        from maskc.backends import flex
        if self.ir.score is None:
            raise MaskError(f"mask '{self.name}' has no score ('with ...'), so no score_mod",
                            self._span())
        q_len, kv_len = sizes.resolve_lengths(self.ir, q_len, kv_len)
        rest, floats = sizes.split_score_inputs(self.ir, floats)
        if rest:
            raise MaskInputError(f"mask '{self.name}' reads no float input "
                                 f"'{next(iter(rest))}' in its score (its float inputs: "
                                 f"{', '.join(self.ir.score_inputs) or 'none'})", self._span())
        if device is not None:
            flex.check_device(device)
        return flex.make_score_mod(self.ir, q_len, kv_len, floats, device or "cpu")

    def flex_block_mask(self, q_len: int | None = None, kv_len: int | None = None,
                        heads: int = 1, block_size=128, device=None, **inputs):
        """A FlexAttention ``BlockMask`` built from the block analysis, not from N² evaluations.

        Row by row it holds the same full and partial tiles as
        ``create_block_mask(self.mask_mod(...), ...)``, except that a tile of a ``where``
        predicate may be partial where that finds it full or empty (sound interval
        arithmetic, as in :meth:`block_map`); its ``mask_mod`` is the generated predicate.
        ``block_size`` is an int or ``(block_q, block_k)``. A head-independent mask has one
        head row, like ``create_block_mask(..., H=None)``.
        """
        from maskc.backends import flex
        if device is None:  # the inputs' device, else the CPU
            device = next((x.device for x in inputs.values() if hasattr(x, "device")), "cpu")
        flex.check_device(device)
        plan = self.plan(q_len, kv_len, heads, target="flex", block_size=block_size,
                         device=device, **inputs)
        return flex.block_mask(plan)

    def attention(self, q, k, v, scale: float | None = None, backend: str = "auto",
                  return_lse: bool = False, config=None, *, q_lens=None, kv_lens=None,
                  q_offset=None, kv_offset=None, kv_valid=None, page_table=None, **inputs):
        """``softmax(scale * q k^T + bias) v`` with this mask, on torch tensors.

        ``q: (B, Hq, Lq, D)``, ``k: (B, Hkv, Lk, D)``, ``v: (B, Hkv, Lk, Dv)``, with
        ``Hq % Hkv == 0`` (GQA/MQA). Rows that keep no key give zeros (log-sum-exp
        ``-inf``). ``backend``: ``"reference"`` (float64, exact), ``"triton"`` (the generated
        kernels; CUDA, or the CPU with ``TRITON_INTERPRET=1``), ``"flex"`` (FlexAttention with
        this mask's block mask, through ``torch.compile``), ``"flex-eager"`` (the same without
        compiling), ``"tiles"`` (the tile engine: torch operations on the visited tiles,
        forward and backward, no log-sum-exp) or ``"auto"``: ``"triton"`` on CUDA tensors;
        on the CPU ``"flex"`` (compiled: a new length compiles for seconds) without
        gradients or ``return_lse``, else ``"triton"`` under ``TRITON_INTERPRET=1``, else
        ``"tiles"`` with gradients and ``"reference"`` for ``return_lse``; float64 inputs
        on the CPU always get ``"reference"``.
        ``config`` (Triton only) is a ``maskc.backends.triton.KernelConfig`` of tile sizes,
        warps and stages for the three kernels; by default they are chosen by device, dtype,
        head dim and the mask's block structure.

        Serving (docs/language.md section 13): ``q_lens``/``kv_lens`` (int tensors ``(B,)``) give
        each sequence its own lengths, ``q_offset``/``kv_offset`` the absolute positions of
        its first query and key, ``kv_valid`` (bool ``(B, Lk)``) the keys it may attend, and
        ``page_table`` (int ``(B, P)``) reads ``k``/``v`` as paged caches ``(num_pages, Hkv,
        page_size, D)``. Every backend runs them (selections and random blocks: none yet);
        with at most 16 queries per sequence and no gradient the Triton backend runs its
        decode kernel. ``auto`` picks Triton on a GPU (or under ``TRITON_INTERPRET=1`` for
        float16/bfloat16/float32), else the reference.
        """
        backends = ("auto", "reference", "flex", "flex-eager", "triton", "tiles")
        if not isinstance(backend, str) or backend not in backends:
            raise MaskError(f"unknown backend {backend!r}; available: "
                            + ", ".join(repr(b) for b in backends))
        if not isinstance(return_lse, (bool, np.bool_)):
            raise MaskTypeError(f"return_lse must be True or False, got {return_lse!r:.60}")
        from maskc.analysis.sequences import bind_sequences
        if page_table is not None and all(hasattr(t, "as_strided") for t in (q, k, v)) \
                and k.dim() == 4 and v.dim() == 4 and k.shape[:3] == v.shape[:3]:
            # the paged caches' logical shape (B, Hkv, P * page_size, D), as zero-stride views
            # (nothing allocated), for the checks of q, k and v
            shape = tuple(page_table.shape) if hasattr(page_table, "shape") else \
                np.shape(np.asarray(page_table, dtype=object))
            if len(shape) != 2:
                raise MaskInputError(f"page_table must be an integer tensor (B, pages) = "
                                     f"({q.shape[0]}, P), got shape {shape}", self._span())
            P = int(shape[-1])
            logical = (q.shape[0], k.shape[1], P * k.shape[2])
            sizes.check_qkv(self.ir, q, k.as_strided(logical + (k.shape[3],), (0, 0, 0, 1)),
                            v.as_strided(logical + (v.shape[3],), (0, 0, 0, 1)))
        else:
            sizes.check_qkv(self.ir, q, k, v)
        seqs = bind_sequences(self.ir, q, k, q_lens=q_lens, kv_lens=kv_lens, q_offset=q_offset,
                              kv_offset=kv_offset, kv_valid=kv_valid, page_table=page_table)
        inputs, floats = sizes.split_score_inputs(self.ir, inputs, q.device)
        if seqs is not None:
            return self._attention_sequences(seqs, q, k, v, scale, backend, return_lse,
                                             config, inputs, floats)
        # NOTE: a 0-d tensor or numpy scalar is a number (models keep their scale as one)
        scale = None if scale is None else validate.real(scale, "scale")
        import torch
        grad = torch.is_grad_enabled() and any(
            t.requires_grad for t in (q, k, v, *floats.values()))
        on_cpu = q.device.type == "cpu"
        if backend == "auto":
            # NOTE: FlexAttention on the CPU has no backward, and compiled no log-sum-exp
            # and the Triton kernels take float16, bfloat16 and float32 (float64: the reference)
            kernels = str(q.dtype).removeprefix("torch.") in ("float16", "bfloat16", "float32")
            # NOTE: training on the CPU: the tile engine (torch operations on the visited
            # tiles, float32), not the float64 reference
            backend = "reference" if not kernels and on_cpu else \
                "triton" if q.device.type == "cuda" else \
                "flex" if not (grad or return_lse) else \
                "triton" if os.environ.get("TRITON_INTERPRET") == "1" else \
                "tiles" if not return_lse else "reference"
        if backend in ("flex", "flex-eager") and on_cpu and (grad or (
                return_lse and backend == "flex")):
            what = "gradients" if grad else "return_lse=True under torch.compile"
            raise MaskError(f"FlexAttention on the CPU does not support {what}; use "
                            "backend='reference' (or 'triton' with TRITON_INTERPRET=1), or "
                            + ("'flex-eager'" if not grad else "a GPU"))
        B, Hq, Lq, _ = q.shape
        Hkv, Lk = k.shape[1], k.shape[2]
        if self.grid is not None and (Lq, Lk) != (self.ir.grid.numel,) * 2:
            raise MaskSizeError(f"mask '{self.name}' is over a grid of {self.ir.grid.numel} "
                                f"tokens, but q/k have {Lq}/{Lk}", self._span())
        lengths = (None, None) if self.grid is not None else (Lq, Lk)
        if backend == "triton":
            from maskc.backends import triton
            return triton.attention(self, q, k, v, scale=scale, return_lse=return_lse,
                                    config=config, **inputs, **floats)
        if config is not None:
            raise MaskError(f"config= applies to the Triton backend, not {backend!r}")
        if backend == "tiles":
            if return_lse:
                raise MaskError("backend='tiles' does not return the log-sum-exp; use "
                                "'reference' or 'triton'")
            from maskc.backends import tiles
            return tiles.attention(self.ir, q, k, v, scale, inputs, floats)
        if backend in ("flex", "flex-eager"):
            from maskc.backends import flex
            plan = self.plan(*lengths, Hq, Hkv, target="flex", device=q.device, **inputs)
            sizes.check_batch(self.ir, plan.batch, B)
            return flex.attention(plan, q, k, v, scale=scale, return_lse=return_lse,
                                  compiled=backend != "flex-eager", score_inputs=floats)
        from maskc.backends import reference
        sizes.check_size(self.ir, (B, Hq, Lq, Lk), "reference score matrix")
        plan = self.plan(*lengths, Hq, Hkv, target="reference", **inputs)
        sizes.check_batch(self.ir, plan.batch, B)
        return reference.run(plan, q, k, v, scale, return_lse, score_inputs=floats)

    def _attention_sequences(self, seqs, q, k, v, scale, backend, return_lse, config, inputs,
                             floats):
        """Per-sequence lengths, offsets, key validity, paged caches: the Triton kernels (on
        a GPU, or through the interpreter), FlexAttention or the reference."""
        from maskc.ir.inputs import input_kinds
        scale = None if scale is None else validate.real(scale, "scale")
        kinds = input_kinds(self.ir)
        chosen = [n for n in self.ir.inputs if kinds[n].kind != "ids"]
        if chosen:
            raise MaskError(f"input '{chosen[0]}' ({kinds[chosen[0]].kind}) with per-sequence "
                            "lengths is not supported yet: its blocks and keys would be "
                            "per sequence", self._span())
        if any(isinstance(n, ir.Random) for n in ir.walk(self.ir.body)):
            raise MaskError("random(...) blocks with per-sequence lengths are not supported "
                            "yet: their choice depends on each sequence's key count",
                            self._span())
        if backend == "auto":
            # NOTE: the kernels take float16, bfloat16 and float32 (float64: the reference)
            kernels = str(q.dtype).removeprefix("torch.") in ("float16", "bfloat16", "float32")
            backend = "triton" if kernels and (q.device.type == "cuda" or
                                               os.environ.get("TRITON_INTERPRET") == "1") \
                else "reference"
        if inputs and any(isinstance(n, ir.Within) for n in ir.walk(self.ir.body)):
            inputs = self._ids_of_sequences(seqs, k, inputs)
        if backend == "triton":
            from maskc.backends import triton
            return triton.attention(self, q, k, v, scale=scale, return_lse=return_lse,
                                    config=config, sequences=seqs, **inputs, **floats)
        if config is not None:
            raise MaskError(f"config= applies to the Triton backend, not {backend!r}")
        Lk = seqs.page_table.shape[1] * seqs.page_size if seqs.page_table is not None \
            else k.shape[2]
        if backend in ("flex", "flex-eager"):
            import torch
            grad = torch.is_grad_enabled() and any(
                t.requires_grad for t in (q, k, v, *floats.values()))
            if q.device.type == "cpu" and (grad or (return_lse and backend == "flex")):
                what = "gradients" if grad else "return_lse=True under torch.compile"
                paged = seqs.page_table is not None
                raise MaskError(f"FlexAttention on the CPU does not support {what}; use "
                                "backend='reference'"
                                + ("" if paged and grad else
                                   " (or 'triton' with TRITON_INTERPRET=1)")
                                + (", or 'flex-eager'" if not grad else ""))
            from maskc.backends import flex
            plan = self.plan(q.shape[2], Lk, q.shape[1], k.shape[1], target="flex",
                             device=q.device, **inputs)
            return flex.attention_sequences(plan, seqs, q, k, v, scale, return_lse,
                                            compiled=backend != "flex-eager",
                                            score_inputs=floats)
        xs = sizes.prepare_inputs(self.ir, Lk, inputs)
        from maskc.backends import reference
        return reference.run_sequences(self.ir, seqs, q, k, v, scale, return_lse, xs, floats)

    def _ids_of_sequences(self, seqs, k, inputs: dict) -> dict:
        """Ids ``(B, Lk)`` that end each sequence's last document at its ``kv_lens[b]``: keys
        past it are never read (LANGUAGE.md section 10), so the runs ``within`` measures
        (each document's start and length: its ``k``, ``Lq``, ``Lk``) stop there on every
        backend, as the reference's per-sequence masks do (found by review: the kernels and
        FlexAttention measured runs over the whole row)."""
        Lk = seqs.page_table.shape[1] * seqs.page_size if seqs.page_table is not None \
            else k.shape[2]
        xs = sizes.prepare_inputs(self.ir, Lk, inputs)
        out = dict(inputs)
        lens = np.asarray(seqs.kv_lens)
        past = np.arange(Lk)[None, :] >= lens[:, None]
        for name, x in xs.items():
            x = np.broadcast_to(x, (seqs.batch, Lk))
            # NOTE: a run of its own after each sequence's keys: 0, or 1 where the last key's
            # id is 0 (runs are contiguous: an equal id further back does not join it)
            last = x[np.arange(seqs.batch), np.clip(lens - 1, 0, max(Lk - 1, 0))] if Lk else \
                np.zeros(seqs.batch, dtype=x.dtype)
            out[name] = np.where(past, (last == 0).astype(x.dtype)[:, None], x)
        return out

    def _span(self) -> Span | None:
        return self.ir.span
