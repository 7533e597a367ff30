"""The ``maskc`` command: ``check``, ``show`` and ``compile``.

Errors print as ``file:line:col: error: ...`` with a caret and exit 1; a traceback only
with ``--debug``.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from maskc.errors import MaskError, MaskInputError, MaskParamError, MaskSizeError, MaskSyntaxError
from maskc.ir.inputs import input_kinds
from maskc.ir.pretty import pretty_mask
from maskc.ir.scores import pretty_score
from maskc.analysis.sizes import check_heads, dense_limit, document_ids, resolve_lengths

__all__ = ["main", "parse_param", "segments"]

FULL, PARTIAL, EMPTY = "█", "▒", "·"

# NOTE: what `show` runs in a second or two and `test` in a minute or so (2 CPU cores,
# Triton's interpreter); checked before anything is drawn, planned or run.
SHOW_MAX_WIDTH = 1024            # tile columns (and rows) of a picture
SHOW_MAX_TOKENS = 1 << 24        # tokens per side: the Triton plan has 131,072 tile rows
TEST_MAX_TOKENS = {"interpreter": 1024, "cuda": 8192}  # keys per test shape
# NOTE: the interpreter runs every program of a launch in turn: 8 heads keep a mask's test
# to a few seconds there (64 heads of a 96-token mask took 44 s)
TEST_MAX_HEADS = {"interpreter": 8, "cuda": 64}


def parse_param(text: str):
    """``name=value`` with a value in the language's own syntax (``128``, ``[0, 1]``, ``(3, 7)``)."""
    from maskc.frontend.check import Checker, Ctx
    from maskc.frontend.parser import parse_expr
    from maskc.frontend.syntax import Module
    from maskc.frontend.values import to_python

    name, sep, value = text.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z_]\w*", name.strip()):
        raise MaskError(f"-p expects name=value, got {text!r}")
    try:
        syn = parse_expr(value, f"-p {name.strip()}")
    except MaskSyntaxError as err:
        if "," in value and not value.strip().startswith(("[", "(")):
            # NOTE: a list or tuple needs its brackets, as in a .mask file
            raise MaskSyntaxError(f"{err.message} (a list is written -p {name.strip()}="
                                  f"[{value.strip()}], a tuple ({value.strip()}))",
                                  err.span) from None
        raise
    return name.strip(), to_python(Checker(Module(())).eval(syn, {}, Ctx()))


def segments(spec: str, length: int, name: str):
    """Document ids from segment lengths ``"100,200,50"`` (cu_seqlens-style) for ``length`` keys."""
    try:
        lens = [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise MaskError(f"-i {name}= expects comma-separated segment lengths, got {spec!r}") \
            from None
    if not lens or min(lens) < 1 or sum(lens) != length:
        raise MaskError(f"-i {name}: segment lengths must be positive and add up to {length}, "
                        f"got {lens} (sum {sum(lens)})")
    return document_ids(lens)


def _module(path):
    """The parsed file (parsed once per command; compile() reads it again per mask)."""
    from maskc.api import read_source
    from maskc.frontend.parser import parse
    return parse(*read_source(Path(path)))


def _masks_in(module) -> list[str]:
    from maskc.frontend.check import mask_names
    return mask_names(module)


def _known(module, name, params):
    """The ``-p`` values that mask ``name`` declares (a file's masks need not share them)."""
    item = next((i for i in module.items if getattr(i, "params", None) is not None
                 and i.name == name), None)
    if item is None:  # no such mask: compile() says so, with the names the file defines
        return params
    declared = {p.name for p in item.params}
    return {k: v for k, v in params.items() if k in declared}


def cmd_check(args) -> int:
    """Every error of each file, in source order (each item parsed and each mask checked on
    its own: :func:`maskc.frontend.report.check_all`), then ``FILE: N errors``; or
    ``FILE: ok, N masks``. Exit 1 if any file has an error."""
    from maskc.api import read_source
    from maskc.frontend.parser import parse
    from maskc.frontend.report import check_all
    params = dict(parse_param(p) for p in args.param)
    failed = 0
    for path in args.files:
        try:
            text, filename = read_source(Path(path))
            errors = check_all(text, filename, **params)
            module = None if errors else parse(text, filename)  # the names of a clean file
        except MaskError as err:
            errors = [err]
        if errors:
            if args.debug:
                raise errors[0]
            for err in errors:
                print(err, file=sys.stderr)
            print(f"{path}: {len(errors)} error{'s' if len(errors) != 1 else ''}",
                  file=sys.stderr)
            failed += 1
            continue
        names = _masks_in(module)
        # NOTE: check_all leaves out a mask with a parameter that has no default and no -p
        skipped = [i.name for i in module.items if getattr(i, "params", None) is not None
                   and any(not p.is_input and p.default is None and p.name not in params
                           for p in i.params)]
        note = f" ({', '.join(skipped)}: needs -p for parameters without defaults)" \
            if skipped else ""
        print(f"{path}: ok, {len(names)} mask{'s' if len(names) != 1 else ''}{note}")
    return 1 if failed else 0


def tile_states(dense, block_q: int, block_k: int):
    """Per tile of a bool ``(H, Lq, Lk)`` mask: 2 full, 1 partial, 0 empty; shape (H, nq, nk)."""
    import numpy as np

    H, Lq, Lk = dense.shape
    rows, cols = np.arange(0, Lq, block_q), np.arange(0, Lk, block_k)
    # NOTE: a tile row at a time, summed in place: no padded copy of the mask (a 24 x 65,537
    # mask drawn in 32,768-token tiles once padded to 12 GiB), and no int64 copy of it
    # (reduceat converts its whole input: 2 GiB and 8 s for 16 heads at 4,096 tokens)
    kept = np.empty((H, len(rows), len(cols)), dtype=np.int64)
    for i, r0 in enumerate(rows):
        per_key = dense[:, r0:r0 + block_q].sum(axis=1, dtype=np.int64)  # buffered: (H, Lk)
        kept[:, i] = np.add.reduceat(per_key, cols, axis=1)
    size = (np.diff(np.append(rows, Lq))[:, None] * np.diff(np.append(cols, Lk))[None, :])
    return np.where(kept == 0, 0, np.where(kept == size[None], 2, 1))


def render(states) -> list[str]:
    chars = {0: EMPTY, 1: PARTIAL, 2: FULL}
    return ["".join(chars[int(s)] for s in row) for row in states]


def cmd_show(args) -> int:
    params = dict(parse_param(p) for p in args.param)
    for what, value in (("--width", args.width), ("--block", args.block),
                        ("--kv-heads", args.kv_heads)):
        if value is not None and value < 1:
            raise MaskError(f"{what} must be at least 1, got {value}")
    if args.width > SHOW_MAX_WIDTH:
        raise MaskSizeError(f"--width must be at most {SHOW_MAX_WIDTH} tile columns, got "
                            f"{args.width}")
    if args.kv_heads and args.heads % args.kv_heads:
        raise MaskError(f"--heads {args.heads} is not a multiple of --kv-heads {args.kv_heads}")
    m, notes = _chosen_mask(args, params)
    q_len, kv_len = _lengths(m, args, notes)
    Lq, Lk = resolve_lengths(m.ir, q_len, kv_len)
    check_heads(m.ir, args.heads)
    _check_show_size(m, Lq, Lk, args.block)
    inputs = _runtime_inputs(m, Lk, args.input, notes)
    plan_opts = _target_options(args)
    if args.target is not None:  # what that backend runs, and nothing else
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        print(m.plan(q_len, kv_len, args.heads, args.kv_heads, args.target, **plan_opts,
                     **inputs))
        return 0
    block = args.block or max(1, 1 << max(0, (max(Lq, Lk) - 1) // args.width).bit_length())
    dense = None
    if Lq * Lk * args.heads <= dense_limit():
        dense = m.dense(q_len, kv_len, args.heads, **inputs)
        dense = dense[0] if dense.ndim == 4 else dense
        states = tile_states(dense, block, block)
    else:  # too large to draw from the dense mask: draw the block analysis instead
        states = m.block_map(q_len, kv_len, args.heads, block, block, **inputs).states()[0]
        notes.append("the dense mask is over the limit: the picture comes from block analysis")
    score = f" with {pretty_score(m.ir.score)}" if m.ir.score is not None else ""
    print(f"mask {m.name}: {pretty_mask(m.ir.body)}{score}")
    shape = f"grid {' x '.join(map(str, m.grid))}, " if m.grid else ""
    print(f"{shape}q_len {Lq}, kv_len {Lk}, heads {args.heads}, tiles {block} x {block}"
          f"   ({FULL} full  {PARTIAL} partial  {EMPTY} empty)")
    for note in notes:
        print(f"note: {note}")
    _draw(states)
    full, partial = int((states == 2).sum()), int((states == 1).sum())
    if dense is not None:
        kept, total = int(dense.sum()), dense.size
        print(f"density {kept / total:.2%}: {kept:,} of {total:,} (head, query, key) pairs kept")
        print(f"FLOPs saved against dense attention: {1 - kept / total:.2%}")
    print(f"tiles of {block} x {block}: {full:,} full, {partial:,} partial, "
          f"{states.size - full - partial:,} empty of {states.size:,}; a block-sparse kernel "
          f"with these tiles visits {(full + partial) / states.size:.2%}")
    _compiled_view(m, q_len, kv_len, args.heads, args.kv_heads, plan_opts, inputs, block)
    return 0


def _chosen_mask(args, params: dict):
    """``(mask, notes)``: the mask ``show``, ``plot`` and ``compile`` work on, ``--name`` or,
    in a file of several, the one named after the file, else the first (with a note saying
    so; ``maskc.compile()`` in Python asks for ``name=`` instead)."""
    from maskc.api import compile
    name, notes = args.name, []
    if name is None:
        names = _masks_in(_module(args.file))
        if len(names) > 1:
            # NOTE: unlike maskc.compile(), the commands pick one: named after the file, or first
            stem = Path(args.file).stem
            name = stem if stem in names else names[0]
            notes.append(f"using '{name}'; the file also defines "
                         f"{', '.join(n for n in names if n != name)} (use --name)")
    return compile(Path(args.file), name=name, **params), notes


def _lengths(m, args, notes: list):
    """``(q_len, kv_len)`` for the API from ``--q-len``/``--kv-len``: ``None`` over a grid
    (a note when they were given); else segment lengths given with ``-i`` (ids are per key)
    define the key length, and the query length unless ``--q-len`` says otherwise
    (``kv_len`` defaults to ``q_len``, so a ``--q-len`` alone must agree with them);
    ``q_len`` 4096 by default."""
    import numpy as np
    if m.grid is not None and (args.q_len or args.kv_len):
        notes.append(f"--q-len/--kv-len ignored: the mask is over a grid of "
                     f"{int(np.prod(m.grid))} tokens")
    q_len = args.q_len if m.grid is None else None
    kv_len = args.kv_len if m.grid is None else None
    total = _segment_total(m, args.input) if m.grid is None else None
    if total is not None:
        name, n = total
        if kv_len is not None and kv_len != n:
            raise MaskError(f"-i {name}: the segment lengths add up to {n:,} keys, but "
                            f"--kv-len is {kv_len:,} (ids are per key: they must add up to "
                            f"the key length; drop --kv-len to use {n:,})")
        if kv_len is None and q_len is not None and q_len != n:
            raise MaskError(f"-i {name}: the segment lengths add up to {n:,} keys, but "
                            f"--q-len is {q_len:,} and kv_len defaults to q_len (drop "
                            f"--q-len to use {n:,} tokens, or add --kv-len {n} for {q_len:,} "
                            f"queries against {n:,} keys)")
        kv_len = n
        q_len = n if q_len is None else q_len
    if m.grid is None and q_len is None:
        q_len = 4096
    return q_len, kv_len


def _segment_total(m, items: list):
    """``(name, sum)`` of the segment lengths given with ``-i NAME=LEN,LEN,...`` for the
    mask's ids inputs, or ``None``; inputs whose lengths add up differently are an error.
    (Malformed values are left to :func:`segments`, which says what it expects.)"""
    kinds = input_kinds(m.ir)
    totals = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in kinds or kinds[key].kind != "ids":
            continue
        try:
            lens = [int(x) for x in value.split(",") if x.strip()]
        except ValueError:
            continue
        if lens:
            totals[key] = sum(lens)
    if len(set(totals.values())) > 1:
        raise MaskError("-i: the segment lengths of "
                        + " and ".join(f"{k} add up to {v:,}" for k, v in totals.items())
                        + ": ids are per key, so every input's lengths add up to the key "
                          "length")
    return next(iter(totals.items()), None)


def _runtime_inputs(m, Lk: int, items: list, notes: list) -> dict:
    """The runtime inputs from ``-i NAME=VALUE`` (ids as segment lengths; selections, keys
    and diagonals as ``random:R``, a list or a ``.npy`` file); the ones not given are chosen
    (4 equal segments, ``random:4``) with a note."""
    given = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise MaskError(f"-i expects NAME=LEN,LEN,..., got {item!r}")
        if key not in m.inputs:
            raise MaskError(f"mask '{m.name}' has no runtime input '{key}'; its inputs are: "
                            + (", ".join(m.inputs) or "none"))
        given[key] = value
    inputs = {}
    kinds = input_kinds(m.ir)
    for name in m.inputs:
        if kinds[name].kind != "ids":
            k = kinds[name]
            width = k.rows(Lk, m.ir.grid) if k.kind == "select" else Lk
            spec = given.get(name, f"random:{min(4, width)}")
            inputs[name] = chosen_input(spec, k, Lk, name, m.ir.grid)
            if name not in given:
                notes.append(f"{name}: {spec} (pass -i {name}=random:R, a list I,J,... or a "
                             ".npy file to choose)")
        elif name in given:
            inputs[name] = segments(given[name], Lk, name)
        else:
            n = 4
            lens = [Lk // n + (1 if i < Lk % n else 0) for i in range(n)]
            inputs[name] = segments(",".join(str(x) for x in lens if x), Lk, name)
            notes.append(f"{name}: {n} equal segments (pass -i {name}=LEN,LEN,... to choose)")
    return inputs


PLOT_FORMATS = (".png", ".svg", ".pdf")


def cmd_plot(args) -> int:
    """Draw the mask into an image file (the README; see :mod:`maskc.plot`)."""
    from maskc.plot import choose, plot

    params = dict(parse_param(p) for p in args.param)
    if args.output is not None and Path(args.output).suffix.lower() not in PLOT_FORMATS:
        raise MaskError(f"-o {args.output}: the picture is written as "
                        f"{', '.join(PLOT_FORMATS)} (name the file with one of them)")
    m, notes = _chosen_mask(args, params)
    q_len, kv_len = _lengths(m, args, notes)
    # NOTE: every size is checked before the inputs are built or anything is drawn
    _, Lk, *_ = choose(m, q_len, kv_len, args.heads, args.block, args.view)
    inputs = _runtime_inputs(m, Lk, args.input, notes)
    fig = plot(m, q_len, kv_len, args.heads, block=args.block, view=args.view, dpi=args.dpi,
               **inputs)
    out = Path(args.output) if args.output is not None else Path(f"{m.name}.png")
    try:
        fig.savefig(out)
    except OSError as err:
        raise MaskError(f"cannot write {out}: {err.strerror or err}") from None
    for note in notes:  # NOTE: first, as show prints them: which mask, which lengths
        print(f"note: {note}")
    print(f"wrote {out}")
    print(fig.get_suptitle().replace("\n  ", " "))  # the title, its lines unwrapped
    return 0


def _check_show_size(m, Lq: int, Lk: int, block) -> None:
    """Refuse, before drawing or planning, what ``show`` cannot draw in a second or two."""
    side = max(Lq, Lk)
    if side > SHOW_MAX_TOKENS:
        what = (f"mask '{m.name}' is over a grid of {side:,} tokens" if m.grid is not None
                else f"q_len {Lq:,}, kv_len {Lk:,}")
        fix = "shrink the grid with -p" if m.grid is not None else "use a smaller --q-len/--kv-len"
        raise MaskSizeError(f"{what}: maskc show draws and plans at most "
                            f"{SHOW_MAX_TOKENS:,} tokens per side ({fix})",
                            m.ir.grid.span if m.grid is not None and m.ir.grid.span
                            else m.ir.span)
    if block is not None:
        if block > side:
            raise MaskSizeError(f"--block {block:,} is larger than the mask ({Lq:,} x {Lk:,} "
                                f"tokens): use at most {side:,}")
        if -(-side // block) > SHOW_MAX_WIDTH:
            raise MaskSizeError(f"--block {block:,} makes {-(-side // block):,} tiles per side, "
                                f"more than the {SHOW_MAX_WIDTH} that maskc show draws: use "
                                f"--block {-(-side // SHOW_MAX_WIDTH):,} or more")


def _target_options(args) -> dict:
    """``--dtype``/``--head-dim``/``--device`` as the target's plan options."""
    target = args.target or "triton"
    given = {"dtype": args.dtype, "head_dim": args.head_dim, "device": args.device}
    if target != "triton":
        extra = [f"--{k.replace('_', '-')}" for k, v in given.items() if v is not None
                 and k != "device"]
        if extra:
            raise MaskError(f"{extra[0]} applies to --target triton, not {target}")
        given = {"device": args.device} if target == "flex" else {}
        if target == "flex" and args.block:
            given["block_size"] = args.block
    return {k: v for k, v in given.items() if v is not None}


def _draw(states) -> None:
    groups: dict[bytes, list[int]] = {}
    for h in range(states.shape[0]):
        groups.setdefault(states[h].tobytes(), []).append(h)
    for heads in groups.values():
        if states.shape[0] > 1:
            label = f"head {heads[0]}" if len(heads) == 1 else \
                f"heads {', '.join(map(str, heads))}"
            print(f"{label}:")
        for line in render(states[heads[0]]):
            print("  " + line)


def _kernel_tiles(m, options) -> tuple[int, int]:
    """``(block_q, block_k)`` of the Triton forward kernel the plan runs with ``options``."""
    from maskc.pipeline import normalize_options
    from maskc.passes.tiles import kernel_tiles
    opts = normalize_options("triton", options)
    t = kernel_tiles(m.ir, "triton", opts["device"].split(":")[0], opts["dtype"],
                     opts["head_dim"], opts.get("config"))["fwd"]
    return t.block_q, t.block_k


def _compiled_view(m, q_len, kv_len, heads, kv_heads, options, inputs, block: int) -> None:
    """What the Triton backend runs for this mask at this size: its plan (``--target``),
    headed by its forward tiles and the picture's ``block`` (they differ: the picture fits
    ``--width``, the kernels fit the GPU)."""
    import numpy as np

    from maskc.analysis.blocktable import build
    bq, bk = _kernel_tiles(m, options)
    # NOTE: estimate the tiles a kernel would visit on a sample of query tiles first: a
    # dense pattern at a huge size has more tiles than are worth planning here.
    Lq = q_len or m.ir.grid.numel
    nq, nk = -(-Lq // bq), -(-(kv_len or Lq) // bk)
    # NOTE: a sampled row may hold a candidate per key tile: at most ~4M candidates in all
    rows = max(1, min(nq, 64, (1 << 22) // nk))
    sample = np.unique(np.linspace(0, nq - 1, rows).astype(np.int64))
    est = build(m.ir, q_len, kv_len, heads, bq, bk, q_tiles=sample, **inputs).stats
    visited = (est["full"] + est["partial"]) * nq / len(sample)
    picture = f"the picture's are {block} x {block}" if (bq, bk) != (block, block) \
        else "as in the picture"
    if visited > 5e7:
        print(f"compiled: skipped, the Triton forward kernel would visit about "
              f"{visited:,.0f} tiles of {bq} x {bk} ({picture})")
        return
    print()
    print(f"what the Triton kernels run at this size (forward tiles {bq} x {bk}, {picture}):")
    print(m.plan(q_len, kv_len, heads, kv_heads, "triton", **options, **inputs))


def cmd_compile(args) -> int:
    params = dict(parse_param(p) for p in args.param)
    if args.backend != "triton":
        raise MaskError(f"unknown backend {args.backend!r}; available: triton")
    m, notes = _chosen_mask(args, params)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    src = m.kernel_source()
    if args.output not in (None, "-"):
        try:
            Path(args.output).write_text(src, encoding="utf-8")
        except OSError as err:
            raise MaskError(f"cannot write {args.output}: {err.strerror or err}") from None
        print(f"wrote {args.output}: Triton kernels for mask '{m.name}'")
    elif args.arch is None:
        sys.stdout.write(src)
    if args.arch is not None:
        return _compile_for_arch(m, args)
    return 0


def _compile_for_arch(m, args) -> int:
    """Compile every kernel for sm_ARCH with Triton's compiler (no GPU needed) and report."""
    import os
    arch = args.arch.lower().removeprefix("sm_")
    if not arch.isdigit():
        raise MaskError(f"--arch must look like sm_90 or 90, got {args.arch!r}")
    from maskc.backends.triton.aot import SHARED_LIMIT
    if int(arch) not in SHARED_LIMIT:
        raise MaskError(f"--arch sm_{arch} is not a GPU maskc compiles for; use one of "
                        + ", ".join(f"sm_{a}" for a in sorted(SHARED_LIMIT)))
    if args.dtype not in ("float16", "bfloat16", "float32"):
        raise MaskError(f"--dtype must be float16, bfloat16 or float32, got {args.dtype!r}")
    if not 1 <= args.head_dim <= 256:
        raise MaskError(f"--head-dim must be between 1 and 256, got {args.head_dim}")
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise MaskError("--arch needs Triton's compiler: unset TRITON_INTERPRET")
    from maskc.backends.triton.aot import compile_kernels
    reports = compile_kernels(m, int(arch), args.dtype, args.head_dim)
    print(f"mask '{m.name}': kernels for sm_{arch}, {args.dtype}, head dim {args.head_dim}")
    print(f"{'kernel':<24} {'tile':>9} {'warps':>5} {'stages':>6} {'shared':>9} {'regs':>4} "
          f"{'spill':>5} {'compile':>7}")
    bad = 0
    for r in reports:
        fits = r.fits(int(arch))
        bad += not fits
        tile = f"{r.block_q}x{r.block_k}" if r.block_k else f"{r.block_q}"
        print(f"{r.kernel:<24} {tile:>9} {r.num_warps:>5} {r.num_stages:>6} "
              f"{r.shared:>9,} {r.registers if r.registers is not None else '?':>4} "
              f"{r.spills if r.spills is not None else '?':>5} {r.seconds:>6.1f}s"
              + ("" if fits else "  needs more shared memory than the GPU has"))
    return 1 if bad else 0


def _test_config(device: str, kv_len: int):
    """Tiles for ``maskc test``: the plan's own on a GPU and for short runs; through the
    interpreter, whose cost grows with the number of tiles it walks, larger square tiles
    for long ones (a 1024-token grid mask: about 14 s with the CPU's 32 x 16 tiles, 1.4 s
    with 128 x 128 ones, still 8 x 8 tiles)."""
    from maskc.passes.tiles import KernelConfig
    if device != "cpu" or kv_len < 256:
        return None
    return KernelConfig.uniform(128, 128) if kv_len >= 1024 else KernelConfig.uniform(64, 64)


# NOTE: the longest side `maskc test` picks by itself (--q-len takes up to TEST_MAX_TOKENS):
# through the interpreter, 320 tokens in 64 x 64 tiles keep a mask's four cases to about
# 8 s at 6 heads and take in the examples' 255-token windows; a structure longer than that
# gets a note instead of a silent pass
TEST_FIT_TOKENS = {"interpreter": 320, "cuda": 2048}
TEST_DTYPES = ("float32", "float16", "bfloat16")


def _structure_tokens(node) -> tuple[int, int]:
    """``(soft, hard)`` for ``maskc test``'s lengths: the tokens per side that exercise the
    structure under ``node`` (past a window's reach, the sinks, prefix and global positions;
    two chunks or periods; three blocks, four of a selection), and the fewest keys it runs
    with at all (``random(r)`` draws ``r`` distinct key blocks)."""
    from maskc import ir
    soft = hard = 0
    stack = [(node, 1)]  # NOTE: (node, tokens per position): a block's size inside blocks()
    while stack:
        n, unit = stack.pop()
        if isinstance(n, ir.Blocks):
            soft = max(soft, 3 * unit * n.size)
            stack.append((n.body, unit * n.size))
            continue
        if isinstance(n, ir.Window):
            soft = max(soft, (max(n.before, n.after) * n.dilation + 2) * unit)
        elif isinstance(n, ir.Global) and n.positions.intervals:
            soft = max(soft, (n.positions.intervals[-1][1] + 1) * unit)
        elif isinstance(n, (ir.Sink, ir.Prefix)):
            soft = max(soft, (n.n + 1) * unit)
        elif isinstance(n, ir.Chunk):
            soft = max(soft, 2 * n.n * unit)
        elif isinstance(n, (ir.Strided, ir.Fixed)):
            soft = max(soft, 2 * n.s * unit)
        elif isinstance(n, ir.Random):
            soft, hard = max(soft, (n.r + 2) * unit), max(hard, (n.r - 1) * unit + 1)
        elif isinstance(n, ir.Select):
            soft = max(soft, 4 * unit)
        elif isinstance(n, ir.Layout):
            soft = max(soft, max(len(n.rows), *(len(r) for r in n.rows)) * unit)
        stack.extend((c, unit) for c in ir.children(n))
    return soft, hard


def _head_arms(mdef) -> list[tuple[list, bool]]:
    """Per ``heads { ... }`` of the mask: its arms' head intervals (sorted, end exclusive)
    and whether it has a ``_`` arm."""
    from maskc import ir
    return [(sorted(iv for arm in n.arms if arm.heads is not None for iv in arm.heads.intervals),
             any(arm.heads is None for arm in n.arms))
            for n in ir.walk(mdef.body) if isinstance(n, ir.Heads)]


def _covered(spans) -> int:
    """The heads ``0..c-1`` that ``spans`` (sorted intervals) cover before the first gap."""
    covered = 0
    for a, b in spans:
        if a > covered:
            break
        covered = max(covered, b)
    return covered


def _arm_heads(mdef) -> int:
    """Heads that run every arm of the mask's ``heads { ... }``: each listed head and one
    more for ``_``, at least 4 and even where heads past the listed ones are kept (so the
    GQA case groups them), and no head that an arm-list without ``_`` leaves uncovered."""
    want, most = 4, None
    for spans, default in _head_arms(mdef):
        if default:
            top = max((b for _, b in spans), default=0) + 1  # `_` runs on head `top - 1`
            want = max(want, top + top % 2)
        else:
            most = _covered(spans) if most is None else min(most, _covered(spans))
    return max(1, min(want, most)) if most is not None else want


def _kv_heads(heads: int) -> int:
    """Key/value heads for the GQA case: ``heads`` over its smallest prime factor (so every
    key/value head serves 2 or more query heads; 1 for a prime, MQA)."""
    factor = next((d for d in range(2, heads + 1) if heads % d == 0), 1)
    return heads // factor


def _test_cases(m, args, device: str, limit: int, fit: int, most: int, runner: str
                ) -> tuple[list, list]:
    """``(cases, notes)``: the shapes ``maskc test`` runs on mask ``m`` (``--cases`` of them),
    each ``dict(q_len, kv_len, heads, kv_heads, batch)``. Heads: ``--heads``, or enough to
    run every arm. Over a grid: its size, GQA, then batch 2 (left out over more than 512
    tokens unless ``--cases`` asks for it). With ``--kv-len``: that shape (``q_len`` from
    ``--q-len``, else the same), MHA, MQA, and GQA with batch 2. Else ``Lq == Lk``, ``Lq > Lk`` (MQA), ``Lq < Lk``
    and GQA with batch 2, from ``--q-len`` or a length that fits the mask's structure (at
    most ``fit``; over it when the mask needs more keys at all)."""
    notes = []
    heads = args.heads
    if heads is None:
        heads = _arm_heads(m.ir)
        if heads > most:
            notes.append(f"{m.name}: its heads {{ ... }} arms reach head {heads - 1}, but maskc "
                         f"test runs at most {most} heads {runner}: heads {most} and up are "
                         "not tested")
            heads = most
        arms = _head_arms(m.ir)
        if any(not default and _covered(spans) == 0 for spans, default in arms):
            raise MaskError(f"mask '{m.name}': head 0 is covered by no arm of its heads {{ ... }} "
                            "(and there is no '_' arm), so no head count runs it", m.ir.span)
        untested = sorted({h for spans, _ in arms for a, b in spans
                           for h in range(max(a, heads), min(b, most))})
        if untested and max(b for spans, _ in arms for _, b in spans) <= most:
            notes.append(f"{m.name}: the arms for head(s) {', '.join(map(str, untested))} are "
                         f"not tested: head {heads} is covered by no arm (add a '_' arm)")
    g = _kv_heads(heads)
    if m.grid:
        n = m.ir.grid.numel
        if args.q_len is not None or args.kv_len is not None:
            notes.append(f"{m.name} is over a grid of {n:,} tokens: --q-len and --kv-len do not "
                         "apply (shrink the grid with -p)")
        cases = [dict(q_len=n, kv_len=n, heads=heads, kv_heads=g, batch=1),
                 dict(q_len=n, kv_len=n, heads=heads, kv_heads=heads, batch=2)]
        if args.cases is None and n > 512:
            cases = cases[:1]  # NOTE: batch 2 doubles the interpreter's time on a long grid
    elif args.kv_len is not None:
        q, k = args.q_len or args.kv_len, args.kv_len
        cases = [dict(q_len=q, kv_len=k, heads=heads, kv_heads=heads, batch=1),
                 dict(q_len=q, kv_len=k, heads=heads, kv_heads=1, batch=1),
                 dict(q_len=q, kv_len=k, heads=heads, kv_heads=g, batch=2)]
    else:
        def short(n):  # the shorter side of the Lq > Lk and Lq < Lk cases
            return n - n // 4 - 1
        soft, hard = _structure_tokens(m.ir.body)
        L = args.q_len
        if L is None:
            L = min(-(-max(96, soft) // 16) * 16, fit)
            if L > 96 and _test_config(device, L) is None and _test_config(device, 256):
                L = 256  # NOTE: 64 x 64 tiles from 256 on: 2.5x faster than 192 tokens' own
            while L < limit and short(L) < hard:
                L += 1
            if short(L) < hard:
                raise MaskSizeError(f"mask '{m.name}' needs at least {hard:,} keys (its random "
                                    f"blocks), more than maskc test runs {runner} (up to "
                                    f"{limit:,}): use larger blocks or fewer random blocks "
                                    "with -p", m.ir.span)
            if soft > L:
                notes.append(f"{m.name}: its structure spans about {soft:,} tokens, more than "
                             f"the {L:,} tested by default {runner} (pass --q-len, at most "
                             f"{limit:,}, or shrink it with -p)")
        cases = [dict(q_len=L, kv_len=L, heads=heads, kv_heads=heads, batch=1),
                 dict(q_len=L, kv_len=short(L), heads=heads, kv_heads=1, batch=1),
                 dict(q_len=short(L), kv_len=L, heads=heads, kv_heads=heads, batch=1),
                 dict(q_len=L - 3, kv_len=L - 3, heads=heads, kv_heads=g, batch=2)]
    unique = []
    for case in cases:  # one head, or a fixed shape, repeats some
        if case not in unique:
            unique.append(case)
    return unique[:args.cases], notes


def _sci(x: float, digits: int = 1) -> str:
    """``3.1e-7``: a short float for ``maskc test``'s lines."""
    if x == 0:
        return "0"
    mant, _, exp = f"{x:.{digits}e}".partition("e")
    return f"{mant}e{int(exp)}"


def chosen_input(spec: str, kind, Lk: int, name: str, grid=None):
    """A selection or a key/diagonal list from the command line: ``random:R`` (R distinct
    entries per row, seeded, the same for every head), ``I,J,...`` (one list for every row),
    or a ``.npy`` file holding the array itself."""
    import numpy as np
    width = kind.rows(Lk, grid) if kind.kind == "select" else Lk
    rows = width if kind.kind == "select" else None
    if spec.endswith(".npy"):
        try:
            return np.load(spec, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise MaskInputError(f"-i {name}: cannot read {spec}: {e}") from None
    if spec.startswith("random:"):
        r = spec.removeprefix("random:")
        if not r.isdigit() or not 0 <= int(r) <= width:
            raise MaskInputError(f"-i {name}=random:R needs 0 <= R <= {width:,}, got {spec!r}")
        rng = np.random.default_rng(0)
        pick = [np.sort(rng.choice(width, int(r), replace=False)) for _ in range(rows or 1)]
        return np.stack(pick) if rows else pick[0]
    try:
        values = [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise MaskInputError(f"-i {name} expects random:R, I,J,... or a .npy file, got "
                             f"{spec!r}") from None
    one = np.array(values, dtype=np.int64)
    return np.broadcast_to(one, (rows, len(one))) if rows else one


def cmd_test(args) -> int:
    """Property-test the generated Triton kernel of each mask against the reference, forward
    and backward: a few shapes per mask (:func:`_test_cases`), a line for each saying what
    ran and its largest errors, then ``N cases passed, M failed``; progress on stderr."""
    import os
    for flag, n in (("--q-len", args.q_len), ("--kv-len", args.kv_len)):
        if n is not None and n > max(TEST_MAX_TOKENS.values()):
            # NOTE: before torch is imported (a second): over every limit, wherever it runs
            raise MaskSizeError(f"{flag} must be at most {max(TEST_MAX_TOKENS.values()):,} "
                                f"(maskc test runs up to {TEST_MAX_TOKENS['cuda']:,} keys on a "
                                f"GPU, {TEST_MAX_TOKENS['interpreter']:,} through Triton's "
                                f"interpreter), got {n:,}")
    if args.q_len is not None and args.q_len < 8:
        raise MaskError(f"--q-len must be at least 8 (maskc test also runs shorter queries), "
                        f"got {args.q_len}")
    if args.kv_len is not None and args.kv_len < 1:
        raise MaskError(f"--kv-len must be at least 1, got {args.kv_len}")
    if args.cases is not None and args.cases < 1:
        raise MaskError(f"--cases must be at least 1, got {args.cases}")
    if not 0 <= args.seed < 2 ** 32:
        raise MaskError(f"--seed must be from 0 to 2**32 - 1, got {args.seed}")
    if os.environ.get("TRITON_INTERPRET") != "1":
        import torch
        if not torch.cuda.is_available():
            os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
    from maskc.api import compile
    from maskc.testing import DEFAULT_TOLERANCES, assert_attention_matches

    params = dict(parse_param(p) for p in args.param)
    device = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"
    on = "interpreter" if device == "cpu" else "cuda"
    limit, most, fit = TEST_MAX_TOKENS[on], TEST_MAX_HEADS[on], TEST_FIT_TOKENS[on]
    runner = "through Triton's interpreter" if device == "cpu" else "on the GPU"
    if args.heads is not None and not 1 <= args.heads <= most:
        raise MaskError(f"--heads must be from 1 to {most} {runner}, got {args.heads}")
    for flag, n in (("--q-len", args.q_len), ("--kv-len", args.kv_len)):
        if n is not None and n > limit:
            raise MaskSizeError(f"{flag} must be at most {limit:,} {runner} (maskc test runs "
                                f"up to {limit:,} keys), got {n:,}")
    module = _module(args.file)
    names = [args.name] if args.name else _masks_in(module)
    masks, skipped = [], []
    for name in names:
        try:
            masks.append(compile(Path(args.file), name=name, **_known(module, name, params)))
        except MaskParamError as err:
            # NOTE: a mask of the file that needs -p is left out (as check does), unless asked
            # for by name
            if args.name or "has no default" not in err.message:
                raise
            skipped.append(name)
    if skipped:
        print(f"note: not tested: {', '.join(skipped)} (parameters without defaults: pass "
              "them with -p, or --name)", flush=True)
    if not masks:
        raise MaskError(f"{args.file}: no mask to test without -p values")
    for m in masks:  # NOTE: every mask is checked before the first one runs
        if m.grid and m.ir.grid.numel > limit:
            raise MaskSizeError(f"mask '{m.name}' is over a grid of {m.ir.grid.numel:,} tokens, "
                                f"more than the {limit:,} that maskc test runs {runner}: "
                                f"shrink the grid with -p", m.ir.grid.span or m.ir.span)
    plans = [(m, *_test_cases(m, args, device, limit, fit, most, runner)) for m in masks]
    atol, rtol = DEFAULT_TOLERANCES[args.dtype]
    tol = f"tol {_sci(atol, 0)}" if atol == rtol else f"atol {_sci(atol, 0)}, rtol {_sci(rtol, 0)}"
    total, failed, i = sum(len(cases) for _, cases, _ in plans), 0, 0
    for m, cases, notes in plans:
        for note in notes:
            print(f"note: {note}", flush=True)
        extent = m.ir.grid.numel if m.grid else \
            max(max(c["q_len"], c["kv_len"]) for c in cases)
        config = _test_config(device, extent)  # NOTE: one per mask: every case the same
        tiles = f", tiles {config.fwd.block_q}" if config else ""
        for case in cases:
            i += 1
            where = f"grid {m.grid}" if m.grid else f"q {case['q_len']} kv {case['kv_len']}"
            label = (f"{m.name}: {where} heads {case['heads']}/{case['kv_heads']} batch "
                     f"{case['batch']} {args.dtype}{tiles}")
            # progress: a case takes seconds through the interpreter
            print(f"[{i}/{total}] {label}: running...", file=sys.stderr, flush=True)
            try:
                errors = assert_attention_matches(
                    lambda q, k, v, **kw: m.attention(q, k, v, backend="triton",
                                                      return_lse=True, config=config, **kw),
                    m, device=device, dtype=args.dtype, seed=args.seed, **case)
                fwd = max(errors.get("output", 0.0), errors.get("lse", 0.0))
                grads = max((e for n, e in errors.items() if n not in ("output", "lse")),
                            default=0.0)
                status = f"ok (fwd max err {_sci(fwd)}, grads {_sci(grads)}; {tol})"
            except AssertionError as err:
                status, failed = f"FAILED: {err}", failed + 1
            except MaskError as err:  # e.g. a head the mask does not cover: report, go on
                status, failed = f"FAILED: {str(err).splitlines()[0]}", failed + 1
            print(f"{label}: {status}", flush=True)
    print(f"{total - failed} case{'s' if total - failed != 1 else ''} passed, {failed} failed")
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="maskc", description="Compile attention-mask specs.")
    ap.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = ap.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="parse and validate .mask files")
    c.add_argument("files", nargs="+")
    c.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE")
    s = sub.add_parser("show", help="draw a mask at tile granularity, with statistics")
    s.add_argument("file")
    s.add_argument("--name", help="which mask of the file (needed when it has several)")
    s.add_argument("--q-len", type=int, help="query length (default 4096, or the grid's size)")
    s.add_argument("--kv-len", type=int, help="key length (default: q_len)")
    s.add_argument("--heads", type=int, default=1)
    s.add_argument("--kv-heads", type=int, help="key/value heads for GQA grouping (default: heads)")
    s.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE")
    s.add_argument("-i", "--input", action="append", default=[], metavar="NAME=VALUE",
                   help="a runtime input: ids as segment lengths LEN,LEN,... (documents of a "
                        "packed batch); a selection, keys or diagonals as random:R, a list "
                        "I,J,... or a .npy file")
    s.add_argument("--block", type=int, help="tile size (default: fit --width columns)")
    s.add_argument("--width", type=int, default=64, help="most tile columns to draw")
    s.add_argument("--target", choices=("triton", "flex", "reference"),
                   help="print only the plan this backend runs (tiles, layout, head groups)")
    s.add_argument("--dtype", help="the input dtype the Triton plan is for (default bfloat16)")
    s.add_argument("--head-dim", type=int, help="the head dim the Triton plan is for "
                                                "(default 128)")
    s.add_argument("--device", help="the device the plan is for (triton default: cuda)")
    g = sub.add_parser("plot", help="draw a mask as an image: pairs for small sizes, full, "
                                    "partial and empty tiles for large ones, a panel per head")
    g.add_argument("file")
    g.add_argument("-o", "--output", help="the image to write, .png, .svg or .pdf "
                                          "(default: MASK.png, after the mask's name)")
    g.add_argument("--name", help="which mask of the file (default: the one named after the "
                                  "file, else the first)")
    g.add_argument("--q-len", type=int, help="query length (default 4096, or the grid's size)")
    g.add_argument("--kv-len", type=int, help="key length (default: q_len)")
    g.add_argument("--heads", type=int, default=1)
    g.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE")
    g.add_argument("-i", "--input", action="append", default=[], metavar="NAME=VALUE",
                   help="a runtime input, as for maskc show (ids as segment lengths "
                        "LEN,LEN,...; a selection, keys or diagonals as random:R, I,J,... or "
                        "a .npy file)")
    g.add_argument("--view", choices=("auto", "pairs", "tiles"), default="auto",
                   help="one pixel per pair or tiles (default: pairs up to 512 tokens a side)")
    g.add_argument("--block", type=int, help="tile size (default: at most 256 tiles a side)")
    g.add_argument("--dpi", type=int, default=100, help="pixels per inch (default 100)")
    k = sub.add_parser("compile", help="write the generated kernel module")
    k.add_argument("file")
    k.add_argument("--name", help="which mask of the file (needed when it has several)")
    k.add_argument("--backend", default="triton")
    k.add_argument("-o", "--output", help="the .py file to write (default: standard output)")
    k.add_argument("--arch", help="also compile the kernels for this GPU (e.g. sm_90) with "
                                  "Triton's compiler, no GPU needed, and report their resources")
    k.add_argument("--dtype", default="bfloat16", help="with --arch: the input dtype")
    k.add_argument("--head-dim", type=int, default=128, help="with --arch: the head dim")
    k.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE")
    t = sub.add_parser("test", help="property-test a spec's generated kernel against the "
                                    "reference (on the CPU through Triton's interpreter)")
    t.add_argument("file")
    t.add_argument("--name", help="test only this mask of the file")
    t.add_argument("--q-len", type=int, help="query length of the first case; the others "
                   "run shorter queries or keys (default: fitted to the mask's windows, "
                   f"chunks and blocks, at most {TEST_FIT_TOKENS['interpreter']:,} through "
                   f"Triton's interpreter; grids fix it); at most "
                   f"{TEST_MAX_TOKENS['interpreter']:,} through Triton's interpreter, "
                   f"{TEST_MAX_TOKENS['cuda']:,} on a GPU")
    t.add_argument("--kv-len", type=int, help="key length: every case then runs --q-len "
                   "(default: this) x --kv-len (default: derived from --q-len)")
    t.add_argument("--heads", type=int, help="query heads (default: enough to run every arm "
                   "of a heads { ... }, else 4; at most "
                   f"{TEST_MAX_HEADS['interpreter']} through Triton's interpreter, "
                   f"{TEST_MAX_HEADS['cuda']} on a GPU)")
    t.add_argument("--dtype", choices=TEST_DTYPES, default="float32",
                   help="q, k and v's dtype, with maskc.testing's tolerance for it "
                        "(default float32)")
    t.add_argument("--cases", type=int, help="run only the first N shapes of each mask "
                   "(default: all: Lq == Lk, Lq > Lk, Lq < Lk, GQA with batch 2)")
    t.add_argument("--seed", type=int, default=0, help="seed of q, k, v and the runtime "
                   "inputs (default 0)")
    t.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = {"check": cmd_check, "show": cmd_show, "compile": cmd_compile,
               "test": cmd_test, "plot": cmd_plot}[args.command]
    try:
        return handler(args)
    except MaskError as err:
        if args.debug:
            raise
        # NOTE: the library's hint names its Python keyword; here the flag is -p
        message = re.sub(r"pass it to maskc\.compile\(\.\.\., (\w+)=\.\.\.\)",
                         r"pass it with -p \1=VALUE", err.message)
        print(err if message == err.message else MaskError(message, err.span),
              file=sys.stderr)
        return 1
    except BrokenPipeError:  # `maskc show ... | head`: the reader has all it wants
        # NOTE: point stdout at devnull so the interpreter's final flush does not fail again
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (OSError, ValueError) as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
