"""Pictures of masks (LANGUAGE.md section 12): ``Mask.plot`` and ``maskc plot``.

Each test renders a PNG, reads its pixels back and checks the colour at known pairs or
tiles: the axes' data transform says where a (key, query) position lands in the image.
"""

from __future__ import annotations

import pathlib
import sys

import numpy as np
import pytest

import maskc
from maskc.cli import main
from maskc.plot import COLORS, MAX_PANELS, heads_label

matplotlib = pytest.importorskip("matplotlib", reason="maskc plot needs matplotlib "
                                 "(pip install 'maskc[plot]')")
from matplotlib.colors import to_rgb  # noqa: E402
from matplotlib.image import imread  # noqa: E402

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
CAUSAL = "mask m = causal"
PER_HEAD = "mask m = heads { 0: causal, _: window(before = 8, after = 8) }"


def render(fig, path):
    fig.savefig(path)
    return imread(path)[..., :3]


def colour_at(img, ax, key, query):
    """The RGB of the pixel showing position (``key``, ``query``) in the panel ``ax``."""
    x, y = ax.transData.transform((key, query))
    return img[int(img.shape[0] - y), int(x)]


def is_(rgb, state) -> bool:
    return np.allclose(rgb, to_rgb(COLORS[state]), atol=0.02)


def around(img, ax, key, query, r=2):
    """The pixels within ``r`` of a position (for one-pixel features such as a diagonal)."""
    x, y = ax.transData.transform((key, query))
    row, col = int(img.shape[0] - y), int(x)
    return img[row - r:row + r + 1, col - r:col + r + 1].reshape(-1, 3)


def title(fig) -> str:
    """The figure's title on one line (it is wrapped to the figure's width)."""
    return " ".join(fig.get_suptitle().split())


def panels(fig):
    return [ax for ax in fig.axes if ax.get_images()]


# --------------------------------------------------------------------------- pairs


def test_small_causal_draws_pairs(tmp_path):
    fig = maskc.compile(CAUSAL).plot(64)
    img = render(fig, tmp_path / "c.png")
    (ax,) = panels(fig)
    assert is_(colour_at(img, ax, 50.5, 10.5), "empty")    # key after the query: masked
    assert is_(colour_at(img, ax, 10.5, 50.5), "full")     # key before it: kept
    assert is_(colour_at(img, ax, 30.5, 30.5), "full")     # the diagonal is kept
    assert is_(colour_at(img, ax, 31.5, 30.5), "empty")
    text = title(fig)
    assert "mask m: causal" in text and "one pixel per (query, key) pair" in text
    assert "density 50.78%" in text and "q_len 64, kv_len 64" in text
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["kept", "masked"]
    assert img.shape[0] > 300 and img.shape[1] > 300


def test_key_and_query_lengths_differ(tmp_path):
    """q_len < kv_len: the queries are the last ones (causal ends on the last key)."""
    fig = maskc.compile(CAUSAL).plot(16, 48)
    img = render(fig, tmp_path / "r.png")
    (ax,) = panels(fig)
    assert is_(colour_at(img, ax, 40.5, 2.5), "empty")     # query 2 sits at position 34
    assert is_(colour_at(img, ax, 33.5, 2.5), "full")
    assert is_(colour_at(img, ax, 47.5, 15.5), "full")


def test_runtime_inputs(tmp_path):
    m = maskc.compile(EXAMPLES / "packed_documents.mask", name="packed_documents")
    fig = m.plot(96, doc=maskc.document_ids([40, 56]))
    img = render(fig, tmp_path / "d.png")
    (ax,) = panels(fig)
    assert is_(colour_at(img, ax, 10.5, 30.5), "full")     # both in document 0
    assert is_(colour_at(img, ax, 10.5, 60.5), "empty")    # query in document 1
    assert is_(colour_at(img, ax, 45.5, 60.5), "full")


# --------------------------------------------------------------------------- tiles


def test_large_causal_draws_tiles(tmp_path):
    fig = maskc.compile(CAUSAL).plot(65536)
    img = render(fig, tmp_path / "big.png")
    (ax,) = panels(fig)
    text = title(fig)
    assert "tiles of 256 x 256" in text and "q_len 65,536" in text
    assert "32,640 full, 256 partial, 32,640 empty" in text
    assert "density" not in text  # from block analysis: no dense mask, no density
    tile = 256
    assert is_(colour_at(img, ax, 10.5 * tile, 200.5 * tile), "full")     # far below
    assert is_(colour_at(img, ax, 200.5 * tile, 10.5 * tile), "empty")    # far above
    # the diagonal tiles are partial (about a pixel wide at this size)
    assert any(is_(p, "partial") for p in around(img, ax, 100.5 * tile, 100.5 * tile))
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["full tile", "partial tile", "empty tile"]


def test_tiles_with_a_given_block(tmp_path):
    fig = maskc.compile(CAUSAL).plot(65536, block=8192)  # 8 x 8 tiles
    img = render(fig, tmp_path / "b.png")
    (ax,) = panels(fig)
    assert "tiles of 8,192 x 8,192" in title(fig)
    for i in range(8):
        for j in range(8):
            want = "full" if j < i else "partial" if j == i else "empty"
            assert is_(colour_at(img, ax, (j + 0.5) * 8192, (i + 0.5) * 8192), want), (i, j)


def test_mid_size_tiles_come_with_the_density(tmp_path):
    """Up to 2**24 elements the tiles come from the dense mask: exact, with its density."""
    fig = maskc.compile("mask m = window(before = 100, after = 0)").plot(4096)
    kept = 101 * 4096 - 100 * 101 // 2
    assert "tiles of 16 x 16" in title(fig) and f"density {kept / 4096**2:.2%}" in title(fig)
    img = render(fig, tmp_path / "w.png")
    (ax,) = panels(fig)
    assert is_(colour_at(img, ax, 2000 - 40, 2000), "full")
    assert is_(colour_at(img, ax, 1000, 3000), "empty")
    assert is_(colour_at(img, ax, 3000, 1000), "empty")


def test_tile_view_of_a_small_mask(tmp_path):
    fig = maskc.compile(CAUSAL).plot(64, view="tiles", block=16)
    img = render(fig, tmp_path / "t.png")
    (ax,) = panels(fig)
    assert is_(colour_at(img, ax, 8, 40), "full")
    assert is_(colour_at(img, ax, 40, 40), "partial")
    assert is_(colour_at(img, ax, 56, 8), "empty")


def test_grid_mask(tmp_path):
    m = maskc.compile("mask g over grid(y = 16, x = 16) = tile(4, 4)")
    fig = m.plot()
    assert "grid 16 x 16 (256 tokens)" in title(fig)
    img = render(fig, tmp_path / "g.png")
    (ax,) = panels(fig)
    # query 85 is (y 5, x 5), in the 4 x 4 tile of y 4..7, x 4..7
    assert is_(colour_at(img, ax, 85.5, 85.5), "full")     # (5, 5)
    assert is_(colour_at(img, ax, 101.5, 85.5), "full")    # (6, 5): the row below, same tile
    assert is_(colour_at(img, ax, 89.5, 85.5), "empty")    # (5, 9): the next tile
    assert is_(colour_at(img, ax, 133.5, 85.5), "empty")   # (8, 5): the tile below


# --------------------------------------------------------------------------- heads


def test_a_panel_per_head_pattern(tmp_path):
    fig = maskc.compile(PER_HEAD).plot(64, heads=4)
    img = render(fig, tmp_path / "h.png")
    a, b = panels(fig)
    assert a.get_title().startswith("head 0") and b.get_title().startswith("heads 1-3")
    assert is_(colour_at(img, a, 0.5, 40.5), "full")     # causal keeps key 0
    assert is_(colour_at(img, b, 0.5, 40.5), "empty")    # the window does not
    assert is_(colour_at(img, b, 44.5, 40.5), "full")    # but keeps 4 keys ahead
    assert is_(colour_at(img, a, 44.5, 40.5), "empty")


def test_panels_per_head_from_block_analysis():
    m = maskc.compile(EXAMPLES / "moa.mask", name="moa")
    fig = m.plot(1 << 16, heads=8)
    titles = [ax.get_title() for ax in panels(fig)]
    assert [t.split("  ")[0] for t in titles] == ["heads 0-3", "heads 4-7"]


def test_at_most_so_many_panels():
    fig = maskc.compile("mask m = causal & where(k >= q - h)").plot(32, heads=MAX_PANELS + 4)
    assert len(panels(fig)) == MAX_PANELS
    assert f"showing {MAX_PANELS} of {MAX_PANELS + 4} head patterns" in title(fig)


def test_heads_label():
    assert heads_label([3]) == "head 3"
    assert heads_label([0, 1, 2, 3]) == "heads 0-3"
    assert heads_label([0, 2, 5, 6, 7]) == "heads 0, 2, 5-7"


# --------------------------------------------------------------------------- errors


def test_matplotlib_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib: ImportError
    with pytest.raises(maskc.MaskError, match=r"pip install 'maskc\[plot\]'"):
        maskc.compile(CAUSAL).plot(64)


def test_matplotlib_missing_on_the_command_line(monkeypatch, tmp_path, capsys):
    spec = tmp_path / "c.mask"
    spec.write_text(CAUSAL)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["plot", str(spec), "-o", str(tmp_path / "c.png"), "--q-len", "64"]) == 1
    assert "pip install 'maskc[plot]'" in capsys.readouterr().err
    assert not (tmp_path / "c.png").exists()


@pytest.mark.parametrize("args, kwargs, match", [
    ((0,), {}, "q_len"),
    ((64,), {"heads": 0}, "heads"),
    ((), {}, "needs q_len"),
    ((1 << 25,), {}, "at most 16,777,216 tokens per side"),
    ((64,), {"block": 0}, "block must be a positive integer"),
    ((64,), {"block": 65}, "larger than the mask"),
    ((1 << 20,), {"block": 16}, "65,536 tiles per side"),
    ((4096,), {"view": "pairs"}, "at most 2,048 tokens per side"),
    ((64,), {"view": "dots"}, "view must be one of"),
    ((64,), {"view": "pairs", "block": 8}, "block applies to the tile view"),
    ((64,), {"dpi": 0}, "dpi"),
])
def test_bad_sizes(args, kwargs, match):
    with pytest.raises(maskc.MaskError, match=match):
        maskc.compile(CAUSAL).plot(*args, **kwargs)


def test_pairs_over_the_dense_limit():
    maskc.set_dense_limit(1000)
    try:
        with pytest.raises(maskc.MaskSizeError, match="dense_limit"):
            maskc.compile(CAUSAL).plot(64, view="pairs")
    finally:
        maskc.set_dense_limit(None)


# --------------------------------------------------------------------------- maskc plot


def test_command_line_draws_what_the_api_draws(tmp_path, capsys):
    spec = tmp_path / "causal.mask"
    spec.write_text(CAUSAL)
    out = tmp_path / "c.png"
    assert main(["plot", str(spec), "-o", str(out), "--q-len", "64"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    fig = maskc.compile(CAUSAL).plot(64)
    want = render(fig, tmp_path / "api.png")
    got = imread(out)[..., :3]
    assert got.shape == want.shape and np.array_equal(got, want)
    (ax,) = panels(fig)
    assert is_(colour_at(got, ax, 50.5, 10.5), "empty")
    assert is_(colour_at(got, ax, 10.5, 50.5), "full")


def test_command_line_inputs_heads_and_params(tmp_path, capsys):
    out = tmp_path / "docs.png"
    code = main(["plot", str(EXAMPLES / "packed_documents.mask"), "--name",
                 "packed_sliding_window", "-o", str(out), "--q-len", "1024", "--heads", "2",
                 "-i", "doc=300,500,224", "-p", "w=64"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert out.stat().st_size > 1000
    img = imread(out)
    assert img.shape[0] > 300


def test_command_line_default_output_and_notes(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = main(["plot", str(EXAMPLES / "packed_documents.mask"), "--q-len", "256"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert (tmp_path / "packed_documents.png").exists()   # named after the mask
    assert "doc: 4 equal segments" in captured.out        # the inputs it chose
    assert "the file also defines packed_sliding_window" in captured.out


@pytest.mark.parametrize("argv, match", [
    (["--q-len", "0"], "q_len"),
    (["--heads", "0"], "heads"),
    (["--q-len", str(1 << 25)], "tokens per side"),
    (["--block", "0"], "block"),
    (["-i", "doc=1,2"], "add up to"),
    (["-o", "x.txt"], "png"),
    (["-o", "/no/such/dir/x.png"], "cannot write"),
])
def test_command_line_errors(tmp_path, capsys, argv, match):
    spec = tmp_path / "p.mask"
    spec.write_text("mask p(input doc) = causal & same(doc)")
    argv = [a.replace("x.txt", str(tmp_path / "x.txt")) for a in argv]
    if "-o" not in argv:
        argv += ["-o", str(tmp_path / "p.png")]
    if "--q-len" not in argv:
        argv += ["--q-len", "64"]
    assert main(["plot", str(spec), *argv]) == 1
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err
    assert not (tmp_path / "p.png").exists()
