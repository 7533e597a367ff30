"""Issue 11, items 10 and 11 and unreadable UTF-8: bad sizes and files given to the ``maskc``
command exit 1 with a one-message error (located where there is a file) before anything is
read whole, drawn, planned or run; ``maskc test`` states its limits and shows progress."""

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from maskc.cli import SHOW_MAX_TOKENS, SHOW_MAX_WIDTH, TEST_MAX_TOKENS, main

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run(capsys, *argv):
    t0 = time.time()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err, time.time() - t0


@pytest.mark.parametrize("argv, message", [
    (["show", EXAMPLES / "sparse_strided.mask", "--block", 65537],
     "--block 65,537 is larger than the mask (4,096 x 4,096 tokens)"),
    (["show", EXAMPLES / "sparse_strided.mask", "--block", 1],
     "--block 1 makes 4,096 tiles per side, more than the 1024"),
    (["show", EXAMPLES / "streamingllm.mask", "--heads", 7, "--width", 10**9],
     f"--width must be at most {SHOW_MAX_WIDTH} tile columns"),
    (["show", EXAMPLES / "prefix_lm.mask", "--q-len", 10**9],
     f"prefix_lm.mask:12:6: error: q_len 1,000,000,000, kv_len 1,000,000,000: maskc show "
     f"draws and plans at most {SHOW_MAX_TOKENS:,} tokens per side"),
    (["show", EXAMPLES / "prefix_lm.mask", "--q-len", 64, "--kv-len", 10**9], "kv_len"),
    (["show", EXAMPLES / "prefix_lm.mask", "--q-len", 2**31], "q_len must be an integer"),
    (["show", EXAMPLES / "natten.mask", "-p", "height=40000", "-p", "width=40000"],
     "natten.mask:19:15: error: mask 'natten2d' is over a grid of 1,600,000,000 tokens"),
    (["show", EXAMPLES / "mistral.mask", "--heads", 10**6], "heads must be an integer"),
    (["check", "/dev/zero"], "cannot read /dev/zero: it is larger than 16,777,216 bytes"),
    (["test", EXAMPLES / "mistral.mask", "--q-len", 100000], "--q-len must be at most"),
    (["test", EXAMPLES / "natten.mask", "-p", "height=64"],
     "mask 'natten2d' is over a grid of 2,048 tokens, more than the 1,024 that maskc test runs"),
], ids=["block-over-mask", "block-too-small", "width", "q-len", "kv-len", "q-len-2**31",
        "grid", "heads", "dev-zero", "test-q-len", "test-grid"])
def test_sizes_are_refused_quickly_with_a_message(capsys, argv, message):
    code, out, err, seconds = run(capsys, *argv)
    assert code == 1, out
    assert message in err and "Traceback" not in err
    assert out == ""  # nothing drawn or planned first
    assert seconds < 2


def test_show_at_the_largest_size_it_takes_stays_quick(capsys):
    code, out, err, seconds = run(capsys, "show", EXAMPLES / "mistral.mask",
                                  "--q-len", SHOW_MAX_TOKENS)
    assert code == 0, err
    assert "forward tables: 131,072 query" in out
    assert seconds < 30


def test_an_unreadable_utf8_file_points_at_the_byte(capsys, tmp_path):
    f = tmp_path / "bad.mask"
    f.write_bytes(b"mask m = causal\n# caf\xc3\xa9 \xb4\n")
    code, out, err, _ = run(capsys, "check", f)
    assert code == 1
    lines = err.splitlines()
    assert lines[0] == (f"{f}:2:8: error: the file is not UTF-8: byte 0xb4 cannot be decoded "
                        "(invalid start byte)")
    assert lines[2].index("^") == lines[1].index("\ufffd")


def test_test_help_states_the_limits():
    from maskc.cli import build_parser
    sub = build_parser()._subparsers._group_actions[0].choices["test"]
    text = " ".join(sub.format_help().split())
    assert f"at most {TEST_MAX_TOKENS['interpreter']:,} through Triton's interpreter" in text


def test_test_shows_progress_on_stderr(tmp_path):
    f = tmp_path / "w.mask"
    f.write_text("mask w = causal & window(before = 3, after = 0)\n")
    res = subprocess.run([sys.executable, "-m", "maskc.cli", "test", str(f), "--q-len", "16",
                          "--heads", "1"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    started = [x for x in res.stderr.splitlines() if x.endswith(": running...")]
    assert len(started) == 4 and started[0].startswith("[1/4] w: q 16 kv 16 heads 1/1 batch 1")
    assert res.stdout.splitlines()[-1] == "4 cases passed, 0 failed"


def test_show_into_a_closed_pipe_is_quiet():
    """`maskc show FILE | head` printed 'error: [Errno 32] Broken pipe' and exited 1."""
    import subprocess
    import sys
    from pathlib import Path
    example = Path(__file__).parent.parent / "examples" / "longformer.mask"
    proc = subprocess.run(f"{sys.executable} -m maskc.cli show {example} | head -1",
                          shell=True, capture_output=True, text=True, timeout=120)
    assert proc.stdout.startswith("mask longformer:")
    assert "Broken pipe" not in proc.stderr, proc.stderr


def test_test_of_a_long_grid_walks_large_tiles_in_the_interpreter(tmp_path):
    """Fuzz: `maskc test examples/natten.mask` took over 60 s through the interpreter (a
    1024-token grid walked in 32 x 16 tiles). Runs of 1024 keys or more use 128 x 128
    tiles there (still 8 x 8 tiles per head), and the progress line says so."""
    from maskc.cli import _test_config
    assert _test_config("cpu", 101) is None and _test_config("cuda", 4096) is None
    assert _test_config("cpu", 300).fwd.block_q == 64
    assert _test_config("cpu", 1024).dkdv.block_k == 128
    f = tmp_path / "g.mask"
    f.write_text("mask g over grid(32, 32) = neighborhood(5)\n")
    res = subprocess.run([sys.executable, "-m", "maskc.cli", "test", str(f), "--heads", "1"],
                         capture_output=True, text=True, timeout=600,
                         env={**os.environ, "TRITON_INTERPRET": "1"})
    assert res.returncode == 0, res.stderr
    assert "g: grid (32, 32) heads 1/1 batch 1 float32, tiles 128: running..." in res.stderr
    assert res.stdout.splitlines()[-1] == "1 case passed, 0 failed"


def test_test_limits_heads_through_the_interpreter(capsys, monkeypatch):
    """Fuzz: `maskc test examples/mistral.mask --heads 64` ran 44 s through the interpreter."""
    from maskc.cli import TEST_MAX_HEADS
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert main(["test", str(EXAMPLES / "mistral.mask"), "--heads",
                 str(TEST_MAX_HEADS["interpreter"] + 1)]) == 1
    assert "--heads must be from 1 to 8 through Triton's interpreter" in capsys.readouterr().err


def test_show_draws_long_thin_masks_without_padding_them():
    """Fuzz: `show --q-len 24 --kv-len 65537 --width 3` padded the mask to 32,768 x 98,304
    int32 (12 GiB) to count tiles."""
    code = ("import maskc.testing as t, maskc.cli as c; "
            "c.main(['show', 'examples/moa.mask', '--kv-len', '65537', '--heads', '1', "
            "'--width', '3', '--q-len', '24']); "
            "print(t.peak_rss_mib())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=EXAMPLES.parent)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout.split()[-1]) < 600, out.stdout[-200:]  # MiB


def test_show_counts_tiles_without_an_int64_copy_of_the_mask():
    """Fuzz: `show examples/bigbird.mask --heads 16` took 8 s: numpy's reduceat converted the
    whole (16, 4096, 4096) mask to int64 (2 GiB) to count its tiles."""
    code = ("import maskc.testing as t, maskc.cli as c; "
            "c.main(['show', 'examples/bigbird.mask', '--heads', '16']); "
            "print(t.peak_rss_mib())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=EXAMPLES.parent)
    assert out.returncode == 0, out.stderr
    # the mask itself is 256 MiB (16 heads x 4096 x 4096 bools); the int64 copy was 2 GiB
    assert float(out.stdout.split()[-1]) < 256 + 250, out.stdout[-200:]


def test_tile_states_count_every_tile():
    from maskc.cli import tile_states
    rng = np.random.default_rng(0)
    dense = rng.random((3, 37, 53)) < 0.3
    dense[1] = True
    dense[2] = False
    st = tile_states(dense, 8, 16)
    for h, i, j in np.ndindex(*st.shape):
        t = dense[h, i * 8:(i + 1) * 8, j * 16:(j + 1) * 16]
        assert st[h, i, j] == (2 if t.all() else 1 if t.any() else 0)
