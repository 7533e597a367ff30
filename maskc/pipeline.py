"""The back half of the compiler, in one place: :func:`plan` lists its stages in order.

``maskc.compile`` runs the front half (parse -> check -> verify -> simplify -> verify) and
returns a :class:`~maskc.Mask`; ``Mask.plan(...)`` runs this back half for one size and one
target and returns a frozen :class:`KernelPlan`. Every backend runs a plan and decides
nothing itself: the tiles, the token layout and the head groups it uses are the plan's.

    bind -> tiles -> layout -> block analysis -> head grouping [-> chosen tiles]

1. **bind** (:mod:`maskc.passes.bind`): lengths, heads, kv heads and runtime inputs are
   checked, and the host tables of ``within``/``random``/``layout`` built, once;
2. **tiles** (:mod:`maskc.passes.tiles`): the tiles of each kernel of the target;
3. **layout** (:mod:`maskc.passes.layoutmap`): the token order of a grid mask;
4. **block analysis** (:mod:`maskc.analysis.blocktable`): each kernel's tables at its tiles;
5. **head grouping** (:mod:`maskc.passes.heads`): heads with equal tables share one row;
6. **chosen tiles** (:mod:`maskc.passes.chosen`), for a Triton plan whose selections
   (``select``/``keys``/``diagonals``) come as tensors: stages 1-5 run on the static part
   (each chosen primitive ``none``), and each call merges the tiles its tensors choose into
   those tables on the device;
7. **sequences** (:mod:`maskc.passes.sequences`), for a call with lengths, offsets or valid
   keys per sequence (docs/language.md section 13): ``KernelPlan.sequence_map`` gives each
   sequence its own tables at a kernel's tiles (the plan is at the tensors' lengths).

The forward kernel's tables are built by :func:`plan`; the backward kernels' (dq, dk/dv) on
first use, since inference never needs them. ``KernelPlan.lint()`` checks the invariants.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

import numpy as np

from maskc import ir
from maskc.analysis.blocktable import BlockMap, build, head_patterns
from maskc.errors import MaskError, MaskSizeError
from maskc.ir.pretty import pretty_mask
from maskc.passes.bind import Bound, bind
from maskc.passes.chosen import ChosenTiles, check_shapes, static_mask
from maskc.passes.chosen import mode as chosen_mode, sources as chosen_sources
from maskc.passes.heads import HeadGroups, group_heads
from maskc.passes.layout import TokenLayout
from maskc.passes.layoutmap import choose_layout, permuted_block_map
from maskc.passes.tiles import KERNELS, KernelConfig, Tiles, dtype_name, kernel_tiles
from maskc.validate import MAX_LENGTH, integer

__all__ = ["plan", "normalize_options", "target_options", "KernelPlan", "TARGETS", "STAGES", "STAGES_OF"]

TARGETS = tuple(KERNELS)
_LINT = os.environ.get("MASKC_LINT") == "1"  # lint every plan as it is built (tests)
STAGES = ("bind", "tiles", "layout", "block analysis", "head grouping")
# the stages that do something for each target (FlexAttention runs in the tokens' order; the
# reference groups heads by their resolved mask, evaluating every pair)
STAGES_OF = {"triton": STAGES, "flex": ("bind", "tiles", "block analysis", "head grouping"),
             "reference": ("bind", "head grouping")}
# the options each target takes, with their defaults (the GPU the Triton kernels are for)
_OPTIONS = {
    "triton": {"device": "cuda", "dtype": "bfloat16", "head_dim": 128, "config": None},
    "flex": {"block_size": 128, "device": "cpu"},
    "reference": {},
}


@dataclass(frozen=True, eq=False)
class KernelPlan:
    """One mask at one size for one target: what its backend runs. Build with :func:`plan`.

    ``groups``: tuples of query heads that share one block table (forward kernel), numbered
    by their smallest head; ``tiles``: kernel name -> :class:`~maskc.passes.tiles.Tiles`;
    ``layout``: the :class:`~maskc.passes.layout.TokenLayout` the kernels run in, or ``None``
    for row-major order. ``block_map(kernel)`` gives a kernel's grouped tables.
    """

    bound: Bound
    target: str
    options: dict
    tiles: dict
    layout: TokenLayout | None
    groups: tuple
    head_groups: HeadGroups | None
    evaluate: object = field(repr=False)
    _maps: dict = field(default_factory=dict, repr=False)
    cache: dict = field(default_factory=dict, repr=False)  # backends' derived data (tensors)
    chosen: ChosenTiles | None = None  # selections merged on the device per call

    # ---------------------------------------------------------------- the bound sizes
    @property
    def mdef(self) -> ir.MaskDef:
        return self.bound.mdef

    @property
    def q_len(self) -> int:
        return self.bound.q_len

    @property
    def kv_len(self) -> int:
        return self.bound.kv_len

    @property
    def heads(self) -> int:
        return self.bound.heads

    @property
    def kv_heads(self) -> int:
        return self.bound.kv_heads

    @property
    def batch(self) -> int:
        return self.bound.batch

    @property
    def kernels(self) -> tuple[str, ...]:
        return tuple(self.tiles)

    # ---------------------------------------------------------------- tables
    def block_map(self, kernel: str = "fwd") -> BlockMap:
        """The grouped tables of ``kernel`` at its tiles, in the plan's layout."""
        if kernel not in self.tiles:
            raise MaskError(f"the {self.target} plan has no kernel {kernel!r}; its kernels: "
                            + (", ".join(self.tiles) or "none"))
        t = self.tiles[kernel]
        key = (t.block_q, t.block_k)
        if key not in self._maps:
            bound = self.chosen.static if self.chosen is not None else self.bound
            bm = group_heads(_analyse(bound, t, self.layout, self.evaluate), self.kv_heads)[0]
            if _LINT:
                self._lint_map(kernel, bm)
            self._maps[key] = bm
        return self._maps[key]

    def sequence_map(self, kernel: str, sequences, q_len: int, kv_len: int) -> BlockMap:
        """``kernel``'s tables for a batch of sequences (stage 7): row ``b`` is sequence
        ``b``'s own analysis, over the tensors' ``q_len`` x ``kv_len`` tiles; ``sequences`` is
        a checked :class:`~maskc.analysis.sequences.Sequences`."""
        from maskc.passes.sequences import sequence_map
        t = self.tiles[kernel]
        return sequence_map(self, sequences, q_len, kv_len, t.block_q, t.block_k)

    def transposed(self, kernel: str = "dkdv"):
        """``kernel``'s tables transposed (key tile -> query tiles), as the dk/dv kernel walks them."""
        t = self.tiles[kernel]
        key = ("T", t.block_q, t.block_k)
        if key not in self._maps:
            self._maps[key] = self.block_map(kernel).transposed()
        return self._maps[key]

    def retiled(self, kernel: str, tiles: Tiles) -> "KernelPlan":
        """This plan with ``kernel`` at other tiles (a GPU that lacks the resources for the
        planned ones); the layout and every other decision stay."""
        if tiles == self.tiles[kernel]:
            return self
        key = ("retiled", kernel, tiles)
        if key not in self.cache:
            # NOTE: tables are keyed by their tiles in this one layout, so the retiled plan
            # shares them: the other kernels' tables are not built again
            self.cache[key] = replace(self, tiles={**self.tiles, kernel: tiles}, cache={})
        return self.cache[key]

    # ---------------------------------------------------------------- checks and display
    def lint(self) -> "KernelPlan":
        """Check the plan's invariants (builds every kernel's tables); returns the plan.

        Groups partition the heads; each kernel's ``head_group`` maps every head to a table
        row, and heads of one group to one row; table entries lie in ``[0, n_k_tiles)``,
        sorted, without repeats, and a tile is never both full and partial; counts are within
        the table widths; each kernel's tables are at its tiles (so the tiles divide the
        table blocks); the layout is a permutation of the grid's tokens. With
        ``MASKC_LINT=1`` in the environment (the test suite sets it) every plan is linted as
        it is built, and every kernel's tables when they are.
        """
        self._lint_plan()
        for kernel in self.tiles:
            self._lint_map(kernel, self.block_map(kernel))
        return self

    def _lint_plan(self) -> None:
        H = self.heads
        flat = sorted(h for g in self.groups for h in g)
        _check(flat == list(range(H)), f"groups {self.groups} do not partition {H} heads")
        if self.layout is not None:
            _check(self.mdef.grid is not None and self.layout.numel == self.q_len,
                   "a token layout without a grid of q_len tokens")
            _check(bool(np.array_equal(np.sort(self.layout.perm), np.arange(self.q_len))),
                   "the layout is not a permutation")
            _check(bool(np.array_equal(self.layout.perm[self.layout.inv],
                                       np.arange(self.q_len))), "the layout's inverse is wrong")

    def _lint_map(self, kernel: str, bm: BlockMap) -> None:
        H, t, where = self.heads, self.tiles[kernel], f"kernel {kernel}"
        _check((bm.block_q, bm.block_k) == (t.block_q, t.block_k),
               f"{where}: tables at {bm.block_q} x {bm.block_k}, tiles {t}")
        _check(bm.head_group.shape == (H,), f"{where}: head_group has shape "
               f"{bm.head_group.shape}, not ({H},)")
        G = bm.kv_num_blocks.shape[1]
        _check(bool(((bm.head_group >= 0) & (bm.head_group < G)).all()),
               f"{where}: head_group outside the {G} table rows")
        if kernel == "fwd":
            for g in self.groups:
                _check(len({int(bm.head_group[h]) for h in g}) == 1,
                       f"{where}: heads {g} of one group read different rows")
        _check(bm.kv_num_blocks.shape[0] in (1, self.batch),
               f"{where}: tables for batch {bm.kv_num_blocks.shape[0]}")
        nk = bm.n_k_tiles
        rows = []
        for num, idx in ((bm.kv_num_blocks, bm.kv_indices),
                         (bm.full_kv_num_blocks, bm.full_kv_indices)):
            _check(bm.kv_num_blocks.shape == num.shape == idx.shape[:3],
                   f"{where}: table shapes {num.shape}, {idx.shape}")
            _check(bool(((num >= 0) & (num <= idx.shape[-1])).all()),
                   f"{where}: counts outside the table width {idx.shape[-1]}")
            used = np.arange(idx.shape[-1]) < num[..., None]
            _check(bool(((idx[used] >= 0) & (idx[used] < nk)).all()),
                   f"{where}: key tiles outside [0, {nk})")
            _check(bool((idx[~used] == -1).all()), f"{where}: padding is not -1")
            rows.append(np.where(used, idx, -1))
        srt = np.sort(np.concatenate(rows, axis=-1), axis=-1)
        dup = (srt[..., 1:] == srt[..., :-1]) & (srt[..., 1:] >= 0)
        _check(not dup.any(), f"{where}: a key tile listed twice (or full and partial)")
        for r in rows:
            d = np.diff(np.where(r < 0, nk, r), axis=-1)
            _check(bool((d >= 0).all()), f"{where}: key tiles not sorted")

    def __str__(self) -> str:
        return "\n".join(self._lines())

    def _lines(self) -> list[str]:
        opts = ", ".join(f"{k} {v}" for k, v in self.options.items() if k != "config")
        grid = self.mdef.grid
        over = "" if grid is None else " over grid(" + ", ".join(
            f"{a.name} = {a.size}" if a.name else str(a.size) for a in grid.axes) + ")"
        out = [f"plan for mask {self.mdef.name}{over}: {pretty_mask(self.mdef.body)}",
               f"target {self.target}" + (f" ({opts})" if opts else "")
               + f"; q_len {self.q_len}, kv_len {self.kv_len}, heads {self.heads}, "
               f"kv heads {self.kv_heads}, batch {self.batch}",
               "stages: " + " -> ".join(STAGES_OF[self.target])
               + (" -> chosen tiles (per call, on the device)" if self.chosen else "")]
        if not self.tiles:
            out.append("tiles: none (the reference evaluates every pair)")
        for kernel, t in self.tiles.items():
            out.append(f"tiles {kernel}: " + (str(t) if self.target == "triton" else
                                              f"{t.block_q} x {t.block_k}"))
        if self.mdef.grid is not None:
            if self.layout is None:
                out.append("layout: row-major")
            else:
                out.append(f"layout: tiles {' x '.join(map(str, self.layout.tile_shape))} of "
                           f"the grid {' x '.join(map(str, self.layout.grid_shape))} made "
                           "contiguous")
        what = "pattern" if self.target == "reference" else "table"  # the reference has none
        out.append(f"head groups: {len(self.groups)} {what}{'s' if len(self.groups) != 1 else ''}"
                   f" for {self.heads} head{'s' if self.heads != 1 else ''}: " + ", ".join(_span(g) for g in self.groups[:8])
                   + (" ..." if len(self.groups) > 8 else ""))
        if self.head_groups is not None and self.kv_heads != self.heads:
            kv = self.head_groups.kv_groups
            out.append("kv groups: " + ", ".join(f"kv{k}:{_span(hs)}" for k, hs in kv[:8])
                       + (" ..." if len(kv) > 8 else ""))
        if "fwd" in self.tiles:
            bm = self.block_map("fwd")
            st = bm.stats
            # NOTE: per head, through its group's row: what the kernels' programs visit
            rows = bm.head_group
            full = int(bm.full_kv_num_blocks[:, rows].sum())
            part = int(bm.kv_num_blocks[:, rows].sum())
            tiles = bm.kv_num_blocks.shape[0] * self.heads * bm.n_q_tiles * bm.n_k_tiles
            if self.chosen is not None:
                srcs = ", ".join(f"{c.kind}({c.input})" for c in self.chosen.sources)
                out.append(f"chosen tiles: {srcs}, merged into the static tables below on "
                           "the device at each call (visited as partial tiles)")
            out.append(f"{'static' if self.chosen else 'forward'} tables: {bm.n_q_tiles:,} "
                       f"query x {bm.n_k_tiles:,} key tiles, "
                       f"{bm.kv_num_blocks.shape[1]} row{'s' if rows.max() else ''} per batch "
                       f"entry; over all heads {full:,} full + {part:,} partial tiles visited "
                       f"of {tiles:,}; estimated speed-up over dense "
                       f"{tiles / max(full + part, 1):.1f}x")
            if st.get("unproven"):
                out.append(f"  {st['unproven']:,} of the partial tiles may really be empty or "
                           "full ('where' is analysed soundly, not exactly)")
            for i, v in enumerate(bm.variants[:6]):
                out.append(f"  live predicate {i}: {pretty_mask(v)}")
            if len(bm.variants) > 6:
                out.append(f"  ... {len(bm.variants) - 6} more live predicates")
        return out


def _span(heads: tuple) -> str:
    """``0..4`` for consecutive heads (half-open, as the language writes ranges), else a list."""
    if len(heads) > 1 and list(heads) == list(range(heads[0], heads[-1] + 1)):
        return f"[{heads[0]}..{heads[-1] + 1}]"
    return "[" + ", ".join(map(str, heads)) + "]"


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise AssertionError(f"KernelPlan.lint: {what}")


def _analyse(bound: Bound, tiles: Tiles, layout: TokenLayout | None, evaluate) -> BlockMap:
    """Block analysis at one kernel's tiles, in the plan's token order."""
    mdef = bound.mdef
    if layout is not None:
        return permuted_block_map(mdef, layout, tiles.block_q, bound.heads, evaluate,
                                  block_k=tiles.block_k, **bound.inputs)
    grid = mdef.grid is not None
    return build(mdef, None if grid else bound.q_len, None if grid else bound.kv_len,
                 bound.heads, tiles.block_q, tiles.block_k, evaluate=evaluate, **bound.inputs)


def target_options(target: str) -> tuple[str, ...]:
    """The names of ``target``'s options."""
    if not isinstance(target, str) or target not in _OPTIONS:
        raise MaskError(f"unknown target {target!r}; targets: " + ", ".join(TARGETS))
    return tuple(_OPTIONS[target])


def normalize_options(target: str, given: dict) -> dict:
    """The target's options with defaults filled in and values checked (a :class:`MaskError`
    naming the option otherwise)."""
    if not isinstance(target, str) or target not in _OPTIONS:
        raise MaskError(f"unknown target {target!r}; targets: " + ", ".join(TARGETS))
    allowed = _OPTIONS[target]
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise MaskError(f"target {target!r} has no option {unknown[0]!r}; its options: "
                        + (", ".join(allowed) or "none"))
    opts = {**allowed, **given}
    if "device" in opts:
        opts["device"] = str(opts["device"])  # "cuda:1" stays: a flex block mask lives there
    if "dtype" in opts:
        opts["dtype"] = dtype_name(opts["dtype"])
    if "head_dim" in opts:
        d = opts["head_dim"]
        # NOTE: the Triton kernels keep a query tile's head dim in registers, as
        # FlashAttention does (its limit is 256 too); larger ones run on flex or reference
        opts["head_dim"] = integer(d, "head_dim", 1, 65536)
        if target == "triton" and opts["head_dim"] > MAX_HEAD_DIM:
            raise MaskSizeError(f"head_dim {opts['head_dim']} is more than the Triton kernels "
                                f"take ({MAX_HEAD_DIM}); use backend='flex' or 'reference'")
    if opts.get("config") is not None and not isinstance(opts["config"], KernelConfig):
        raise MaskError(f"config must be a maskc.KernelConfig, got "
                        f"{type(opts['config']).__name__}")
    if "block_size" in opts:
        b = opts["block_size"]
        pair = tuple(b) if isinstance(b, (tuple, list)) else (b, b)
        if len(pair) != 2:
            raise MaskSizeError(f"block_size must be a positive int or (block_q, block_k), got "
                                f"{b!r}")
        opts["block_size"] = tuple(integer(x, "block_size", 1, MAX_LENGTH) for x in pair)
    return opts


MAX_HEAD_DIM = 256  # the Triton kernels' largest head dim (FlashAttention's too)


def plan(mdef: ir.MaskDef, q_len=None, kv_len=None, heads: int = 1, kv_heads=None,
         target: str = "triton", evaluate=None, inputs: dict | None = None,
         **target_options) -> KernelPlan:
    """Run the back half for one size and target; see the module docstring.

    ``target_options``: for ``"triton"`` ``device`` (default ``"cuda"``: the plan describes
    the GPU kernels), ``dtype`` (``"bfloat16"``), ``head_dim`` (128) and ``config`` (a
    :class:`~maskc.passes.tiles.KernelConfig` overriding the tile rule, whose ``layout`` also
    picks the token order); for ``"flex"`` ``block_size`` (128, or ``(block_q, block_k)``)
    and ``device``; the reference takes none. ``evaluate`` is the reference evaluator that
    block analysis resolves undecided tiles with (exact tables; without it they stay partial).
    """
    opts = normalize_options(target, target_options)
    inputs = dict(inputs or {})
    chosen = None
    if chosen_mode(mdef, target, inputs) == "device":                         # 1. bind
        # NOTE: selections given as tensors are read per call (chosen tiles, below): the plan
        # binds the static part, and only the shapes of the selections
        static_def = static_mask(mdef)
        static = bind(static_def, q_len, kv_len, heads, kv_heads,
                      {k: v for k, v in inputs.items() if k in static_def.inputs})
        shapes = check_shapes(mdef, static.kv_len, inputs, static.heads)
        batch = max([static.batch] + [s[0] for s in shapes.values()])
        bound = replace(static, mdef=mdef, batch=batch)
        chosen = ChosenTiles(mdef, chosen_sources(mdef), static, shapes)
    else:
        bound = bind(mdef, q_len, kv_len, heads, kv_heads, inputs)
    config = opts.get("config")                                                 # 2. tiles
    tiles = kernel_tiles(mdef, target, opts.get("device", "cpu").split(":")[0],
                         opts.get("dtype", "float32"), opts.get("head_dim", 64), config,
                         opts.get("block_size", (128, 128)))
    layout, fwd = None, None                                                    # 3. layout
    if target == "triton":
        t = tiles["fwd"]
        layout, fwd = choose_layout(mdef, t.block_q, t.block_k,
                                    config.layout if config is not None else "auto",
                                    bound.heads, evaluate, **bound.inputs)
    maps, head_groups = {}, None
    if "fwd" in tiles:
        t = tiles["fwd"]
        fwd = fwd if fwd is not None else _analyse(                            # 4. analysis
            chosen.static if chosen is not None else bound, t, layout, evaluate)
        merged, head_groups = group_heads(fwd, bound.kv_heads)                 # 5. grouping
        maps[(t.block_q, t.block_k)] = merged
        rows = merged.head_group
    else:
        rows = head_patterns(mdef, bound.heads)
    groups = tuple(tuple(int(h) for h in np.flatnonzero(rows == g)) for g in
                   sorted(set(rows.tolist()), key=lambda g: int(np.flatnonzero(rows == g)[0])))
    out = KernelPlan(bound, target, opts, tiles, layout, groups, head_groups, evaluate, maps,
                     chosen=chosen)                                # 6. chosen tiles, per call
    if _LINT:
        out._lint_plan()
        for kernel, t in tiles.items():
            if (t.block_q, t.block_k) in maps:
                out._lint_map(kernel, maps[(t.block_q, t.block_k)])
    return out
