"""Pictures of a mask (the README): ``Mask.plot(...)`` and ``maskc plot``.

Two views:

* **pairs**: one pixel per (query, key) pair, kept pairs dark, masked ones white; chosen by
  default when both lengths are at most ``PAIRS_AUTO`` (512) and the dense mask of every
  head fits :func:`maskc.dense_limit`;
* **tiles**: square tiles, full ones dark, partial ones orange, empty ones white; the tile
  is the smallest power of two that gives at most ``TILES_AUTO`` (256) tiles per side
  unless ``block`` is given. Up to ``EXACT_TILES`` (2**24) elements the tiles come from the
  dense mask (exact, with the density); above that from block analysis
  (:meth:`maskc.Mask.block_map`), which never allocates the dense mask.

Heads with the same pattern share a panel, labelled with its heads ("heads 1-3"); at most
``MAX_PANELS`` panels are drawn. The title holds the mask's name and spec, the sizes, the
view and the statistics. matplotlib is an optional extra (``pip install 'maskc[plot]'``),
imported only here and only when a picture is drawn; the figure is a plain
:class:`matplotlib.figure.Figure` on the Agg canvas (no display, no pyplot state).
"""

from __future__ import annotations

import re
import textwrap

import numpy as np

from maskc.errors import MaskError, MaskSizeError

__all__ = ["plot", "choose", "heads_label", "COLORS", "PAIRS_AUTO", "TILES_AUTO", "MAX_PANELS"]

# NOTE: RGB of each state; the tests read them back from the PNGs
COLORS = {"empty": "#ffffff", "partial": "#f4a261", "full": "#1d3557"}
PAIRS_AUTO = 512          # both lengths at most this: one pixel per pair by default
PAIRS_MAX = 2048          # view="pairs" refuses longer sides (a picture, not a data dump)
TILES_AUTO = 256          # tiles per side at most, when the tile size is chosen
TILES_MAX = 1024          # tiles per side at most, with an explicit block
EXACT_TILES = 1 << 24     # heads x q_len x kv_len up to this: tiles from the dense mask
MAX_TOKENS = 1 << 24      # tokens per side (as maskc show)
MAX_PANELS = 16           # distinct head patterns drawn (the title says how many more)
VIEWS = ("auto", "pairs", "tiles")


def _matplotlib():
    """``(Figure, FigureCanvasAgg, ListedColormap, Patch)``, or a MaskError saying how to install."""
    try:
        import matplotlib  # noqa: F401 - first, so that a missing package fails here
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.colors import ListedColormap
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch
    except ImportError as err:
        raise MaskError("drawing a mask needs matplotlib, which is not installed: "
                        "pip install 'maskc[plot]' (or pip install 'matplotlib>=3.7')"
                        f" [{err}]") from None
    return Figure, FigureCanvasAgg, ListedColormap, Patch


def plot(mask, q_len=None, kv_len=None, heads: int = 1, *, block=None, view: str = "auto",
         dpi: int = 100, **inputs):
    """The picture of ``mask`` at this size, a :class:`matplotlib.figure.Figure`.

    ``view`` is ``"auto"``, ``"pairs"`` or ``"tiles"``; ``block`` (tiles of ``block x
    block`` tokens) implies the tile view. Runtime inputs are passed by name as for
    :meth:`maskc.Mask.dense`; with batched inputs the first row is drawn. Sizes are checked
    (a :class:`~maskc.MaskSizeError`) before anything is computed or drawn.
    """
    from maskc.analysis.sizes import dense_limit

    if isinstance(dpi, bool) or not isinstance(dpi, (int, np.integer)) or not 10 <= dpi <= 600:
        raise MaskError(f"dpi must be an integer from 10 to 600, got {dpi!r}")
    Lq, Lk, H, pairs, block = choose(mask, q_len, kv_len, heads, block, view)
    Figure, FigureCanvasAgg, ListedColormap, Patch = _matplotlib()  # before any work

    notes = []
    if pairs or Lq * Lk * H <= min(EXACT_TILES, dense_limit()):
        dense = mask.dense(q_len, kv_len, H, **inputs)
        if dense.ndim == 4:
            notes.append(f"batch row 0 of {dense.shape[0]}")
            dense = dense[0]
        groups = _groups([dense[h].tobytes() for h in range(H)])
        if pairs:
            images = [dense[hs[0]].astype(np.int8) * 2 for hs in groups]
        else:
            from maskc.cli import tile_states
            states = tile_states(dense[[hs[0] for hs in groups]], block, block)
            images = [s.astype(np.int8) for s in states]
        kept = [int(dense[hs[0]].sum()) for hs in groups]
    else:  # never the dense mask: the tables of block analysis, a picture per table row
        bm = mask.block_map(q_len, kv_len, H, block, block, **inputs)
        if bm.kv_num_blocks.shape[0] > 1:
            notes.append(f"batch row 0 of {bm.kv_num_blocks.shape[0]}")
        table = {g: _tile_image(bm, g) for g in sorted(set(int(g) for g in bm.head_group))}
        by_row = _groups([int(g) for g in bm.head_group])
        # NOTE: two table rows may still draw the same picture: merge them
        merged = _groups([table[int(bm.head_group[hs[0]])].tobytes() for hs in by_row])
        groups = [sorted(h for i in m for h in by_row[i]) for m in merged]
        images = [table[int(bm.head_group[hs[0]])] for hs in groups]
        kept = None
    return _figure(mask, Lq, Lk, H, block, pairs, groups, images, kept, notes, dpi,
                   Figure, FigureCanvasAgg, ListedColormap, Patch)


def choose(mask, q_len=None, kv_len=None, heads: int = 1, block=None, view: str = "auto"):
    """``(q_len, kv_len, heads, pairs, block)`` of a picture, checked before anything is
    computed: the lengths (a grid's own), whether it draws pairs, and its tile size."""
    from maskc.analysis.sizes import check_heads, dense_limit, resolve_lengths

    mdef = mask.ir
    if view not in VIEWS:
        raise MaskError(f"view must be one of {', '.join(VIEWS)}, got {view!r}")
    Lq, Lk = resolve_lengths(mdef, q_len, kv_len)
    H = check_heads(mdef, heads)
    side = max(Lq, Lk)
    if side > MAX_TOKENS:
        raise MaskSizeError(f"q_len {Lq:,}, kv_len {Lk:,}: a picture is drawn of at most "
                            f"{MAX_TOKENS:,} tokens per side", mdef.span)
    if block is not None:
        if view == "pairs":
            raise MaskError("block applies to the tile view, not view='pairs'")
        if isinstance(block, bool) or not isinstance(block, (int, np.integer)) or block < 1:
            raise MaskError(f"block must be a positive integer, got {block!r}")
        block = int(block)
        if block > side:
            raise MaskSizeError(f"block {block:,} is larger than the mask ({Lq:,} x {Lk:,} "
                                f"tokens): use at most {side:,}", mdef.span)
        if -(-side // block) > TILES_MAX:
            raise MaskSizeError(f"block {block:,} makes {-(-side // block):,} tiles per side, "
                                f"more than the {TILES_MAX} a picture draws: use block "
                                f"{-(-side // TILES_MAX):,} or more", mdef.span)
    dense_fits = Lq * Lk * H <= dense_limit()
    if view == "pairs":
        if side > PAIRS_MAX:
            raise MaskSizeError(f"view='pairs' draws at most {PAIRS_MAX:,} tokens per side, "
                                f"got q_len {Lq:,}, kv_len {Lk:,}: use the tile view",
                                mdef.span)
        if not dense_fits:
            raise MaskSizeError(f"view='pairs' needs the dense mask of {H:,} heads x {Lq:,} x "
                                f"{Lk:,}, over maskc.dense_limit() ({dense_limit():,}): use "
                                "fewer heads or the tile view", mdef.span)
    pairs = view == "pairs" or (view == "auto" and block is None and side <= PAIRS_AUTO
                                and dense_fits)
    if not pairs and block is None:  # the smallest power of two within TILES_AUTO per side
        block = 1 << ((side - 1) // TILES_AUTO).bit_length()
    return Lq, Lk, H, pairs, block


def _groups(keys: list) -> list[list[int]]:
    """Indices with equal keys, in order of first appearance."""
    out: dict = {}
    for i, k in enumerate(keys):
        out.setdefault(k, []).append(i)
    return list(out.values())


def _tile_image(bm, g: int) -> np.ndarray:
    """``(n_q_tiles, n_k_tiles)`` int8 of 0 empty / 1 partial / 2 full for table row ``g``."""
    nq, nk = bm.n_q_tiles, bm.n_k_tiles
    out = np.zeros((nq, nk + 1), dtype=np.int8)  # column nk takes the padding (-1)
    rows = np.arange(nq)[:, None]
    for idx, state in ((bm.kv_indices, 1), (bm.full_kv_indices, 2)):
        part = idx[0, g]
        if part.size:
            out[rows, np.where(part < 0, nk, part)] = state
    return out[:, :nk]


def heads_label(heads: list[int]) -> str:
    """``head 3``, ``heads 0-3``, ``heads 0, 2, 5-7``."""
    runs, start = [], heads[0]
    for a, b in zip(heads, heads[1:] + [None]):
        if b != a + 1:
            runs.append(f"{start}" if start == a else f"{start}-{a}")
            start = b
    return ("head " if len(heads) == 1 else "heads ") + ", ".join(runs)


def _tokens(x, _pos=None) -> str:
    """An axis label: 512, 4K, 64K, 1.5M."""
    x = int(round(x))
    for unit, suffix in ((1 << 20, "M"), (1 << 10, "K")):
        if x >= unit and x % (unit // 4) == 0:
            return f"{x / unit:g}{suffix}"
    return f"{x:,}"


def _step(length: int) -> int:
    """Tick spacing: the power of two giving at most 4 steps along ``length`` tokens."""
    return max(1, 1 << max(0, (length - 1) // 4).bit_length())


def _short(text: str, most: int = 110) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= most else text[:most - 1].rstrip() + "…"


def _figure(mask, Lq, Lk, H, block, pairs, groups, images, kept, notes, dpi,
            Figure, FigureCanvasAgg, ListedColormap, Patch):
    from maskc.ir.pretty import pretty_mask
    from maskc.ir.scores import pretty_score

    mdef = mask.ir
    total = len(groups)
    shown = min(total, MAX_PANELS)
    cols = min(shown, 4)
    nrows = -(-shown // cols)
    ratio = Lq / Lk
    equal = 0.2 <= ratio <= 1.5
    panel_w = 5.0 if cols == 1 else 4.0  # one panel: room for the title
    panel_h = 4.0 * min(max(ratio, 0.2), 1.5)
    fig = Figure(figsize=(panel_w * cols + 0.4, panel_h * nrows + 1.5), dpi=dpi,
                 layout="constrained")
    FigureCanvasAgg(fig)
    cmap = ListedColormap([COLORS["empty"], COLORS["partial"], COLORS["full"]])
    axes = fig.subplots(nrows, cols, squeeze=False)
    from matplotlib.ticker import FuncFormatter, MultipleLocator

    for n, ax in enumerate(axes.flat):
        if n >= shown:
            ax.set_axis_off()
            continue
        img, hs = images[n], groups[n]
        ax.imshow(img, cmap=cmap, vmin=0, vmax=2, interpolation="nearest",
                  extent=(0, Lk, Lq, 0), aspect="equal" if equal else "auto")
        label = heads_label(hs) if H > 1 else ""
        if pairs:
            stat = f"{kept[n] / (Lq * Lk):.1%} kept"
        else:
            full, part = int((img == 2).sum()), int((img == 1).sum())
            stat = f"{full:,} full, {part:,} partial"
        if H > 1:
            ax.set_title(f"{label}  ·  {stat}", fontsize=10)
        for axis, length in ((ax.xaxis, Lk), (ax.yaxis, Lq)):
            axis.set_major_formatter(FuncFormatter(_tokens))
            axis.set_major_locator(MultipleLocator(_step(length)))
        ax.tick_params(labelsize=8)
        if n % cols == 0:
            ax.set_ylabel("query", fontsize=9)
        if n >= shown - cols:
            ax.set_xlabel("key", fontsize=9)

    score = f" with {pretty_score(mdef.score)}" if mdef.score is not None else ""
    spec = _short(f"mask {mask.name}: {pretty_mask(mdef.body)}{score}")
    where = (f"grid {' x '.join(map(str, mask.grid))} ({Lq:,} tokens)" if mask.grid
             else f"q_len {Lq:,}, kv_len {Lk:,}")
    what = "one pixel per (query, key) pair" if pairs else f"tiles of {block:,} x {block:,}"
    lines = [spec, f"{where}, heads {H:,}; {what}"]
    if pairs or kept is not None:
        kept_all = sum(k * len(hs) for k, hs in zip(kept, groups))
        stats = [f"density {kept_all / (H * Lq * Lk):.2%}"]
    else:
        stats = []
    if not pairs:
        tiles = sum(img.size * len(hs) for img, hs in zip(images, groups))
        full = sum(int((img == 2).sum()) * len(hs) for img, hs in zip(images, groups))
        part = sum(int((img == 1).sum()) * len(hs) for img, hs in zip(images, groups))
        stats.append(f"tiles: {full:,} full, {part:,} partial, {tiles - full - part:,} empty "
                     f"(a block-sparse kernel visits {(full + part) / tiles:.1%})")
    if total > shown:
        notes.append(f"showing {shown} of {total} head patterns")
    if notes:
        stats.append("; ".join(notes))
    lines += stats
    width = max(48, int(fig.get_figwidth() * 14.5))  # characters of 9 pt text a line
    fig.suptitle("\n".join(textwrap.fill(line, width, subsequent_indent="  ")
                           for line in lines), fontsize=9)
    if pairs:
        legend = [("kept", COLORS["full"]), ("masked", COLORS["empty"])]
    else:
        legend = [("full tile", COLORS["full"]), ("partial tile", COLORS["partial"]),
                  ("empty tile", COLORS["empty"])]
    fig.legend(handles=[Patch(facecolor=c, edgecolor="#888888", label=t) for t, c in legend],
               loc="outside lower center", ncols=len(legend), fontsize=9, frameon=False)
    return fig
