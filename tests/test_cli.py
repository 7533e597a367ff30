"""The ``maskc`` command line: ``check`` and ``show`` (LANGUAGE.md section 5).

Most cases call ``maskc.cli.main([...])`` in-process and read stdout/stderr with capsys;
one runs ``python -m maskc.cli`` in a subprocess. Pictures and statistics are checked
against masks and tile states computed here with plain numpy, not with maskc.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

import maskc
from maskc.cli import EMPTY, FULL, PARTIAL, main

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
ALL_EXAMPLES = sorted(EXAMPLES.glob("*.mask"))


def run(capsys, *argv):
    """``main(argv)`` in-process: (exit code, stdout, stderr)."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def write(tmp_path, text, name="spec.mask"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def picture(mask: np.ndarray, block: int) -> list[str]:
    """The tile picture of a bool (Lq, Lk) mask, computed independently of maskc.cli."""
    Lq, Lk = mask.shape
    rows = []
    for i in range(0, Lq, block):
        line = ""
        for j in range(0, Lk, block):
            tile = mask[i:i + block, j:j + block]
            line += FULL if tile.all() else EMPTY if not tile.any() else PARTIAL
        rows.append(line)
    return rows


def drawn(out: str) -> list[str]:
    """The picture rows of a `show` output (lines indented by two spaces, tile characters)."""
    chars = re.escape(FULL + PARTIAL + EMPTY)
    return [line[2:] for line in out.splitlines() if re.fullmatch(rf"  [{chars}]+", line)]


def blocks_after(out: str, label: str) -> list[str]:
    """The picture rows printed under the line ``label``."""
    lines = out.splitlines()
    start = lines.index(label) + 1
    chars = re.escape(FULL + PARTIAL + EMPTY)
    rows = []
    for line in lines[start:]:
        if not re.fullmatch(rf"  [{chars}]+", line):
            break
        rows.append(line[2:])
    return rows


def stats_lines(mask: np.ndarray) -> list[str]:
    """The density and FLOPs numbers, formatted as a user would read them."""
    kept, total = int(mask.sum()), mask.size
    return [f"{kept / total:.2%}", f"{kept:,} of {total:,}", f"{1 - kept / total:.2%}"]


# --------------------------------------------------------------------------- check


def test_check_all_examples(capsys):
    code, out, err = run(capsys, "check", *ALL_EXAMPLES)
    assert code == 0, err
    assert err == ""
    lines = out.splitlines()
    assert len(lines) == len(ALL_EXAMPLES)
    for path, line in zip(ALL_EXAMPLES, lines):
        n = len(re.findall(r"^mask\s+\w+", path.read_text(), flags=re.M))
        assert line.startswith(f"{path}: ok, {n} mask"), line


def test_check_bad_file(capsys, tmp_path):
    bad = write(tmp_path, "mask good = causal\n\nmask bad = causal &\n    window(-1)\n", "bad.mask")
    code, out, err = run(capsys, "check", bad)
    assert code == 1
    assert "Traceback" not in err and "Traceback" not in out
    m = re.search(rf"^{re.escape(str(bad))}:(\d+):(\d+): error: (.*)$", err, flags=re.M)
    assert m, err
    assert (int(m.group(1)), int(m.group(2))) == (4, 12)
    lines = err.splitlines()
    src = lines.index(next(line for line in lines if "window(-1)" in line))
    caret = lines[src + 1]
    assert set(caret.strip()) == {"^"}
    assert caret.index("^") == lines[src].index("-1")


def test_check_syntax_error(capsys, tmp_path):
    bad = write(tmp_path, "mask a = causal &&& window(3)\n", "syntax.mask")
    code, _, err = run(capsys, "check", bad)
    assert code == 1
    assert re.search(rf"^{re.escape(str(bad))}:1:\d+: error: ", err, flags=re.M), err
    assert "^" in err and "Traceback" not in err


def test_check_reports_every_bad_file_and_goes_on(capsys, tmp_path):
    bad = write(tmp_path, "mask a = causal & nosuch(3)\n", "undefined.mask")
    good = EXAMPLES / "mistral.mask"
    code, out, err = run(capsys, "check", bad, good)
    assert code == 1
    assert f"{good}: ok, 1 mask" in out
    assert f"{bad}:1:19: error: " in err and "nosuch" in err


def test_check_missing_file(capsys, tmp_path):
    code, out, err = run(capsys, "check", tmp_path / "nope.mask")
    assert code == 1
    assert "nope.mask" in err and "Traceback" not in err


def test_check_param_without_default(capsys, tmp_path):
    spec = write(tmp_path, "mask a(w) = causal & window(w)\nmask b = causal\n")
    code, out, _ = run(capsys, "check", spec)
    assert code == 0
    assert "ok, 2 masks" in out and "needs -p" in out and "a" in out
    code, out, _ = run(capsys, "check", spec, "-p", "w=3")
    assert code == 0
    assert "needs -p" not in out
    code, _, err = run(capsys, "check", spec, "-p", "w=-3")
    assert code == 1 and "error:" in err


def test_debug_raises_show(capsys):
    with pytest.raises(maskc.MaskParamError):
        main(["--debug", "show", str(EXAMPLES / "mistral.mask"), "-p", "nosuch=1"])


def test_debug_raises_check(capsys, tmp_path):
    """``--debug`` shows the traceback: the error propagates out of main()."""
    bad = write(tmp_path, "mask a = causal & window(-1)\n")
    with pytest.raises(maskc.MaskError) as err:
        main(["--debug", "check", str(bad)])
    assert err.value.line == 1


def test_subprocess_python_m(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(PYTHONPATH=str(ROOT), PYTHONIOENCODING="utf-8")
    res = subprocess.run([sys.executable, "-m", "maskc.cli", "check", *map(str, ALL_EXAMPLES)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.count(": ok, ") == len(ALL_EXAMPLES)
    bad = write(tmp_path, "mask a = causal & window(-1)\n")
    res = subprocess.run([sys.executable, "-m", "maskc.cli", "check", str(bad)], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1
    assert f"{bad}:1:26: error:" in res.stderr and "Traceback" not in res.stderr
    res = subprocess.run([sys.executable, "-m", "maskc.cli", "--debug", "show", str(bad)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "Traceback" in res.stderr and "MaskValueError" in res.stderr


# --------------------------------------------------------------------------- show


def test_show_causal_picture(capsys, tmp_path):
    spec = write(tmp_path, "mask c = causal\n")
    code, out, err = run(capsys, "show", spec, "--q-len", 64, "--block", 16)
    assert code == 0, err
    want = [FULL * i + PARTIAL + EMPTY * (3 - i) for i in range(4)]
    assert want == ["▒···", "█▒··", "██▒·", "███▒"]
    assert drawn(out) == want
    kept, total = 64 * 65 // 2, 64 * 64
    assert f"{kept / total:.2%}" == "50.78%"
    assert f"density 50.78%: {kept:,} of {total:,}" in out
    assert "2,080 of 4,096" in out
    assert "49.22%" in out                                   # FLOPs saved: 1 - 2080/4096
    assert "6 full, 4 partial, 6 empty of 16" in out
    assert f"{10 / 16:.2%}" in out                           # tiles a kernel visits
    assert "q_len 64, kv_len 64, heads 1, tiles 16 x 16" in out
    assert out.splitlines()[0] == "mask c: causal"


def test_show_prints_the_score(capsys, tmp_path):
    spec = write(tmp_path, "mask c(cap = 30.0) = causal with softcap(cap)\n")
    code, out, err = run(capsys, "show", spec, "--q-len", 64, "--block", 16)
    assert code == 0, err
    assert out.splitlines()[0] == "mask c: causal with softcap(30.0)"


def test_show_q_len_differs_from_kv_len(capsys, tmp_path):
    spec = write(tmp_path, "mask c = causal & window(before = 20, after = 0)\n")
    code, out, err = run(capsys, "show", spec, "--q-len", 48, "--kv-len", 80, "--block", 16)
    assert code == 0, err
    p = np.arange(48)[:, None] + 32
    k = np.arange(80)[None, :]
    mask = (k <= p) & (p - k <= 20)
    assert drawn(out) == picture(mask, 16)
    for s in stats_lines(mask):
        assert s in out


def test_show_default_length_and_width(capsys):
    code, out, _ = run(capsys, "show", EXAMPLES / "llama4_chunked.mask", "-p", "n=1024")
    assert code == 0
    assert "q_len 4096, kv_len 4096" in out
    rows = drawn(out)
    assert len(rows) == 64 and all(len(r) == 64 for r in rows)   # 64 columns by default


@pytest.mark.parametrize("value,param,want", [
    ("8", "w", lambda p, k: np.abs(p - k) <= 8),
    ("2 * 4", "w", lambda p, k: np.abs(p - k) <= 8),
])
def test_show_int_param(capsys, value, param, want):
    code, out, err = run(capsys, "show", EXAMPLES / "longformer.mask", "--q-len", 64,
                         "--block", 4, "-p", f"{param}={value}", "-p", "g=[]")
    assert code == 0, err
    assert out.startswith("mask longformer: window(8)\n")      # an empty global set folds away
    q = np.arange(64)[:, None]
    k = np.arange(64)[None, :]
    mask = want(q, k)
    assert drawn(out) == picture(mask, 4)
    assert f"{int(mask.sum()):,} of 4,096" in out


@pytest.mark.parametrize("g,globals_", [("[0, 1]", [0, 1]), ("0..4", [0, 1, 2, 3]),
                                        ("[5]", [5]), ("10..12", [10, 11])])
def test_show_list_and_range_params(capsys, g, globals_):
    code, out, err = run(capsys, "show", EXAMPLES / "longformer.mask", "--q-len", 64,
                         "--block", 4, "-p", "w=8", "-p", f"g={g}")
    assert code == 0, err
    q = np.arange(64)[:, None]
    k = np.arange(64)[None, :]
    mask = (np.abs(q - k) <= 8) | np.isin(q, globals_) | np.isin(k, globals_)
    assert drawn(out) == picture(mask, 4)
    assert f"{int(mask.sum()):,} of 4,096" in out


def natten_mask(n: int, kernel: int) -> np.ndarray:
    """1-D neighborhood attention (dilation 1, stride 1): every query sees `kernel` keys."""
    q = np.arange(n)[:, None]
    k = np.arange(n)[None, :]
    left, right = kernel // 2, kernel // 2 + kernel % 2 - 1
    center = np.clip(q, left, n - 1 - right)
    return (center - left <= k) & (k <= center + right)


def grid_mask(shape, kernels) -> np.ndarray:
    """An N-D neighborhood mask on a row-major grid, from the 1-D masks of each axis."""
    out = np.ones((1, 1), dtype=bool)
    for n, kern in zip(shape, kernels):
        out = np.kron(out, natten_mask(n, kern))
    return out


@pytest.mark.parametrize("kernel,kernels", [("(3, 3)", (3, 3)), ("(3, 5)", (3, 5)),
                                            ("3", (3, 3)), ("(1, 7)", (1, 7))])
def test_show_tuple_param_on_grid(capsys, tmp_path, kernel, kernels):
    spec = write(tmp_path, "mask g(k = 3, n = 4) over grid(y = n, x = 8) = neighborhood(k)\n")
    code, out, err = run(capsys, "show", spec, "-p", f"k={kernel}", "-p", "n=8", "--block", 8)
    assert code == 0, err
    mask = grid_mask((8, 8), kernels)
    assert "grid 8 x 8, q_len 64, kv_len 64, heads 1, tiles 8 x 8" in out
    assert drawn(out) == picture(mask, 8)
    for s in stats_lines(mask):
        assert s in out


def test_show_natten_example(capsys):
    code, out, err = run(capsys, "show", EXAMPLES / "natten.mask", "--name", "natten2d",
                         "-p", "height=8", "-p", "width=8", "-p", "kernel=5", "--block", 8)
    assert code == 0, err
    mask = grid_mask((8, 8), (5, 5))
    assert drawn(out) == picture(mask, 8)
    assert f"{int(mask.sum()):,} of 4,096" in out
    assert int(mask.sum()) == 64 * 25                     # every query sees 5 x 5 keys


def test_show_grid_header(capsys):
    """The first line shows the mask's body; the grid's own `y = 8` must not confuse it."""
    code, out, err = run(capsys, "show", EXAMPLES / "natten.mask", "--name", "natten2d",
                         "-p", "height=8", "-p", "width=8", "-p", "kernel=3")
    assert code == 0, err
    first = out.splitlines()[0]
    assert first.startswith("mask natten2d: ")
    assert "x = 8)" not in first and first.endswith("neighborhood(3)"), first


def test_show_grid_uses_grid_size(capsys):
    """A mask over a grid is drawn at the grid's size, whatever the default length is."""
    code, out, err = run(capsys, "show", EXAMPLES / "gna.mask", "--name", "gna_blocked",
                         "-p", "height=16", "-p", "width=16", "-p", "b=4", "--block", 16)
    assert code == 0, err
    assert "grid 16 x 16, q_len 256, kv_len 256" in out
    y = np.arange(256) // 16
    x = np.arange(256) % 16
    mask = ((y[:, None] // 4) == (y[None, :] // 4)) & ((x[:, None] // 4) == (x[None, :] // 4))
    assert drawn(out) == picture(mask, 16)
    assert f"{int(mask.sum()):,} of 65,536" in out
    # with the default tile size the grid's 256 tokens fit in 64 columns
    code, out, _ = run(capsys, "show", EXAMPLES / "gna.mask", "--name", "gna_blocked",
                       "-p", "height=16", "-p", "width=16", "-p", "b=4")
    assert code == 0
    rows = drawn(out)
    assert len(rows) == 64 and len(rows[0]) == 64


def test_show_heads_groups_identical_pictures(capsys, tmp_path):
    spec = write(tmp_path, "mask m = heads { [0, 2]: causal, _: causal & window(before = 16, "
                           "after = 0) }\n")
    code, out, err = run(capsys, "show", spec, "--q-len", 64, "--block", 16, "--heads", 4)
    assert code == 0, err
    q = np.arange(64)[:, None]
    k = np.arange(64)[None, :]
    causal = k <= q
    window = causal & (q - k <= 16)
    assert blocks_after(out, "heads 0, 2:") == picture(causal, 16)
    assert blocks_after(out, "heads 1, 3:") == picture(window, 16)
    assert "head 0:" not in out and "head 1:" not in out
    both = np.stack([causal, window, causal, window])
    assert f"{int(both.sum()):,} of {both.size:,}" in out
    assert "heads 4" in out


def test_show_heads_example(capsys):
    code, out, err = run(capsys, "show", EXAMPLES / "moa.mask", "--name", "moa_multi",
                         "--heads", 9, "--q-len", 256, "--block", 32, "-p", "w=15", "-p", "w2=63")
    assert code == 0, err
    assert "heads 0, 1, 2, 3:" in out and "heads 4, 5, 6, 7:" in out and "head 8:" in out


def test_show_single_head_of_many(capsys, tmp_path):
    spec = write(tmp_path, "mask m = heads { 1: none, _: causal }\n")
    code, out, _ = run(capsys, "show", spec, "--q-len", 32, "--block", 16, "--heads", 3)
    assert code == 0
    assert blocks_after(out, "head 1:") == [EMPTY * 2] * 2
    assert blocks_after(out, "heads 0, 2:") == [PARTIAL + EMPTY, FULL + PARTIAL]


def test_show_packed_documents_input(capsys):
    code, out, err = run(capsys, "show", EXAMPLES / "packed_documents.mask", "--name",
                         "packed_documents", "--q-len", 64, "--block", 8, "-i", "doc=10,20,34")
    assert code == 0, err
    doc = np.repeat([0, 1, 2], [10, 20, 34])
    q = np.arange(64)[:, None]
    k = np.arange(64)[None, :]
    mask = (k <= q) & (doc[:, None] == doc[None, :])
    assert int(mask.sum()) == 55 + 210 + 595
    assert drawn(out) == picture(mask, 8)
    assert "860 of 4,096" in out
    assert "equal segments" not in out


def test_show_packed_documents_default_segments(capsys):
    code, out, _ = run(capsys, "show", EXAMPLES / "packed_documents.mask", "--name",
                       "packed_documents", "--q-len", 64, "--block", 16)
    assert code == 0
    assert "equal segments" in out
    assert drawn(out) == [PARTIAL + EMPTY * 3, EMPTY + PARTIAL + EMPTY * 2,
                          EMPTY * 2 + PARTIAL + EMPTY, EMPTY * 3 + PARTIAL]


@pytest.mark.parametrize("spec", ["doc=10,20", "doc=10,x,44", "doc=0,64"])
def test_show_bad_input(capsys, spec):
    code, out, err = run(capsys, "show", EXAMPLES / "packed_documents.mask", "--name",
                         "packed_documents", "--q-len", 64, "-i", spec)
    assert code == 1
    assert "error" in err and "Traceback" not in err


def test_show_unknown_param(capsys):
    code, out, err = run(capsys, "show", EXAMPLES / "mistral.mask", "-p", "zz=3")
    assert code == 1
    assert "zz" in err and "error:" in err and "Traceback" not in err
    assert re.search(r"mistral\.mask:\d+:\d+: error: ", err), err


@pytest.mark.parametrize("param", ["w", "w=", "w=[1,", "1w=3", "w=foo"])
def test_show_malformed_param(capsys, param):
    code, out, err = run(capsys, "show", EXAMPLES / "mistral.mask", "-p", param)
    assert code == 1
    assert "error" in err and "Traceback" not in err


def test_a_list_without_brackets_gets_a_hint(capsys):
    code, out, err = run(capsys, "show", EXAMPLES / "longformer.mask", "-p", "g=0,5")
    assert code == 1
    assert "-p g:1:2: error: unexpected ','" in err
    assert "a list is written -p g=[0,5], a tuple (0,5)" in err
    code, out, err = run(capsys, "show", EXAMPLES / "longformer.mask", "-p", "g=[0,5]",
                         "--q-len", "512")
    assert code == 0 and "global([0, 5])" in out


def test_show_picks_mask_of_multi_mask_file(capsys):
    code, out, _ = run(capsys, "show", EXAMPLES / "longformer.mask", "--q-len", 256)
    assert code == 0
    assert out.startswith("mask longformer: ")
    assert "longformer_dilated" in out          # the note names the other masks
    code, out, _ = run(capsys, "show", EXAMPLES / "longformer.mask", "--q-len", 256,
                       "--name", "longformer_dilated")
    assert code == 0 and out.startswith("mask longformer_dilated: ")
    code, _, err = run(capsys, "show", EXAMPLES / "longformer.mask", "--name", "nosuch")
    assert code == 1 and "nosuch" in err


def test_show_over_dense_limit_uses_block_analysis(capsys, monkeypatch):
    monkeypatch.delenv("MASKC_DENSE_LIMIT", raising=False)
    maskc.set_dense_limit(10_000)
    try:
        code, out, err = run(capsys, "show", EXAMPLES / "mistral.mask", "-p", "w=255",
                             "--q-len", 1024, "--block", 128)
    finally:
        maskc.set_dense_limit(None)
    assert code == 0, err
    assert "block analysis" in out
    q = np.arange(1024)[:, None]
    k = np.arange(1024)[None, :]
    assert drawn(out) == picture((k <= q) & (q - k <= 255), 128)
    assert "density" not in out


def test_show_with_mask_error_in_size(capsys, tmp_path):
    """Errors raised when the mask is used (not compiled) also print cleanly."""
    spec = write(tmp_path, "mask m = heads { 0: causal }\n")
    code, out, err = run(capsys, "show", spec, "--q-len", 32, "--heads", 2)
    assert code == 1
    assert "head 1" in err and "Traceback" not in err


@pytest.mark.parametrize("argv, message", [
    (["show", "{a}", "--q-len", "8", "--width", "0"], "--width must be at least 1"),
    (["show", "{a}", "--q-len", "8", "--block", "0"], "--block must be at least 1"),
    (["show", "{a}", "--heads", "3", "--kv-heads", "2"], "not a multiple of --kv-heads"),
    (["show", "{d}", "--q-len", "64", "-i", "doc"], "-i expects NAME=LEN"),
    (["show", "{d}", "--q-len", "64", "-i", "nosuch=1,63"], "no runtime input 'nosuch'"),
    (["check", "{a}", "-p", "w=3"], "no mask in the file has a parameter 'w'"),
    (["test", "{a}", "--q-len", "5"], "--q-len must be at least 8"),
])
def test_bad_arguments_are_one_line_errors(tmp_path, capsys, argv, message):
    from maskc.cli import main
    a, d = tmp_path / "a.mask", tmp_path / "d.mask"
    a.write_text("mask a = causal & window(before = 9, after = 0)\n")
    d.write_text("mask m(input doc) = causal & same(doc)\n")
    assert main([x.format(a=a, d=d) for x in argv]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_byte_order_mark_is_not_code(tmp_path, capsys):
    from maskc.cli import main
    f = tmp_path / "bom.mask"
    f.write_bytes(b"\xef\xbb\xbfmask b = causal\n")
    assert main(["check", str(f)]) == 0


def test_file_level_errors_point_at_a_mask(capsys):
    # not at an unrelated first item (longformer.mask starts with a `let`)
    assert main(["show", str(EXAMPLES / "longformer.mask"), "--name", "nope"]) == 1
    err = capsys.readouterr().err
    assert "no mask named 'nope'" in err and "mask longformer(" in err and "let " not in err


# --------------------------------------------------------------------------- issue 15, item 5


def test_show_reports_the_tiles_it_draws_and_the_tiles_the_kernels_run(capsys):
    """The picture, its statistics and the compiled view name the same tile sizes: the
    picture's (which fit --width) and the Triton forward kernel's (the plan's)."""
    code, out, err = run(capsys, "show", EXAMPLES / "mistral.mask", "--q-len", 512)
    assert code == 0, err
    assert "tiles 8 x 8 " in out.splitlines()[1]
    assert len(drawn(out)) == 512 // 8
    assert "tiles of 8 x 8: " in out
    fwd = re.search(r"^tiles fwd: (\d+) x (\d+) ", out, flags=re.M)
    assert fwd, out
    assert (f"what the Triton kernels run at this size (forward tiles {fwd[1]} x {fwd[2]}, "
            "the picture's are 8 x 8):") in out
    # too large to plan: the line that says so uses the forward kernel's tiles as well
    m = maskc.compile(EXAMPLES / "prefix_lm.mask")
    tiles = m.plan(256, dtype="float32", head_dim=64).tiles["fwd"]
    assert (tiles.block_q, tiles.block_k) != (128, 128)
    code, out, err = run(capsys, "show", EXAMPLES / "prefix_lm.mask", "--q-len", 1 << 24,
                         "--dtype", "float32", "--head-dim", 64)
    assert code == 0, err
    line = next(x for x in out.splitlines() if x.startswith("compiled: skipped"))
    assert line.endswith(f" tiles of {tiles.block_q} x {tiles.block_k} (the picture's are "
                         "262144 x 262144)"), line
    assert "tiles of 262144 x 262144: " in out


def test_segment_lengths_define_the_lengths(capsys):
    """`-i doc=300,500,224` needed `--q-len 1024`; the lengths now define it (ids are per
    key: they give the key length, and the query length unless --q-len says otherwise)."""
    spec = [EXAMPLES / "packed_documents.mask", "--name", "packed_documents", "--block", 64,
            "-i", "doc=300,500,224"]
    doc = np.repeat([0, 1, 2], [300, 500, 224])
    k = np.arange(1024)[None, :]
    code, out, err = run(capsys, "show", *spec)
    assert code == 0, err
    assert "q_len 1024, kv_len 1024, heads 1" in out
    q = np.arange(1024)[:, None]
    mask = (k <= q) & (doc[:, None] == doc[None, :])
    assert drawn(out) == picture(mask, 64)
    assert f"{int(mask.sum()):,} of {mask.size:,}" in out
    for flags in (["--q-len", 1024], ["--kv-len", 1024], ["--q-len", 1024, "--kv-len", 1024]):
        code, again, err = run(capsys, "show", *spec, *flags)
        assert code == 0 and again == out, err
    # fewer queries than keys: --q-len with the keys' length
    code, out, err = run(capsys, "show", *spec, "--q-len", 512, "--kv-len", 1024)
    assert code == 0, err
    assert "q_len 512, kv_len 1024" in out
    q = np.arange(512)[:, None] + 512
    assert drawn(out) == picture((k <= q) & (doc[q] == doc[k]), 64)


@pytest.mark.parametrize("flags, message", [
    (["--q-len", "512"], "the segment lengths add up to 1,024 keys, but --q-len is 512 and "
                         "kv_len defaults to q_len"),
    (["--kv-len", "1000"], "the segment lengths add up to 1,024 keys, but --kv-len is 1,000"),
    (["--q-len", "1024", "--kv-len", "2048"], "but --kv-len is 2,048"),
])
def test_segment_lengths_that_disagree_with_the_lengths_given(capsys, flags, message):
    code, out, err = run(capsys, "show", EXAMPLES / "packed_documents.mask", "--name",
                         "packed_documents", "-i", "doc=300,500,224", *flags)
    assert code == 1 and out == ""
    assert message in err and err.startswith("error: -i doc: ") and "Traceback" not in err


def test_segment_lengths_of_two_inputs_must_agree(capsys, tmp_path):
    spec = write(tmp_path, "mask m(input a, input b) = same(a) & same(b)\n")
    code, out, err = run(capsys, "show", spec, "-i", "a=3,4", "-i", "b=5")
    assert code == 1 and "a add up to 7 and b add up to 5" in err
    code, out, err = run(capsys, "show", spec, "-i", "a=3,4", "-i", "b=5,2", "--block", 1)
    assert code == 0 and "q_len 7, kv_len 7" in out, err
