"""Issue 15, item 5: ``maskc test`` takes ``--kv-len``, ``--dtype``, ``--heads``, ``--cases``
and ``--seed``; by default it runs ``Lq == Lk``, ``Lq > Lk``, ``Lq < Lk`` and GQA with batch
2 at lengths that fit the mask (``examples/bigbird.mask`` included) and heads that run every
arm; it says what each case ran, shows progress, and lets no library warning through."""

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import maskc
from maskc.cli import (TEST_FIT_TOKENS, TEST_MAX_HEADS, TEST_MAX_TOKENS, _arm_heads,
                       _structure_tokens, _test_cases, main)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
LINE = re.compile(r"^(\w+): q (\d+) kv (\d+) heads (\d+)/(\d+) batch (\d+) (\w+)(, tiles \d+)?: "
                  r"ok \(fwd max err \S+, grads \S+; tol \S+\)$")


def cases_of(out: str) -> list[tuple]:
    """``(name, q, kv, heads, kv_heads, batch, dtype)`` of each passing case line."""
    found = [LINE.match(x) for x in out.splitlines()]
    return [(m[1], *map(int, m.groups()[1:6]), m[7]) for m in found if m]


def cli_args(**kw) -> argparse.Namespace:
    return argparse.Namespace(**{"q_len": None, "kv_len": None, "heads": None, "cases": None,
                                 **kw})


def plan(src_or_path, device="cpu", name=None, **kw):
    m = maskc.compile(src_or_path, name=name) if name else maskc.compile(src_or_path)
    on = "interpreter" if device == "cpu" else "cuda"
    return _test_cases(m, cli_args(**kw), device, TEST_MAX_TOKENS[on], TEST_FIT_TOKENS[on],
                       TEST_MAX_HEADS[on], "here")


def test_kv_len_q_len_dtype_and_cases_are_applied(tmp_path, capsys):
    f = tmp_path / "r.mask"
    f.write_text("mask r = blocks(16, random(3))\n")  # needs 3 key blocks: 33 keys or more
    assert main(["test", str(f), "--q-len", "16", "--kv-len", "64", "--heads", "2",
                 "--dtype", "float16", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert {c[1:3] for c in cases_of(out)} == {(16, 64)}  # every case at the shape asked for
    assert {c[3:] for c in cases_of(out)} == {(2, 2, 1, "float16"), (2, 1, 1, "float16"),
                                              (2, 1, 2, "float16")}
    assert "tol 2e-2" in out and out.splitlines()[-1] == "3 cases passed, 0 failed"
    assert main(["test", str(f), "--q-len", "64", "--kv-len", "16", "--heads", "1"]) == 1
    out = capsys.readouterr().out
    assert "random(3) needs at least 3 key blocks, but there are 1" in out  # kv 16 ran
    assert main(["test", str(f), "--q-len", "48", "--heads", "1", "--cases", "2"]) == 0
    out = capsys.readouterr().out
    assert [c[1:3] for c in cases_of(out)] == [(48, 48), (48, 35)]
    assert out.splitlines()[-1] == "2 cases passed, 0 failed"
    assert main(["test", str(f), "--cases", "0"]) == 1
    assert "--cases must be at least 1" in capsys.readouterr().err


def test_default_cases_cover_both_length_orders_gqa_and_every_head_arm(tmp_path, capsys):
    f = tmp_path / "h.mask"
    f.write_text("mask h = causal & heads { 0: window(before = 3, after = 0), 1: sink(2), "
                 "_: window(before = 9, after = 0) }\n")
    assert main(["test", str(f), "--q-len", "32"]) == 0
    out = capsys.readouterr().out
    cases = cases_of(out)
    assert len(cases) == 4 and out.splitlines()[-1] == "4 cases passed, 0 failed"
    assert all(c[3] >= 3 for c in cases)  # heads 0 and 1, and head 2 for `_`
    assert any(q > kv for _, q, kv, *_ in cases) and any(q < kv for _, q, kv, *_ in cases)
    assert any(q == kv for _, q, kv, *_ in cases)
    assert any(1 < kvh < h and b == 2 for _, _, _, h, kvh, b, _ in cases)  # GQA, batch 2


def test_heads_fit_the_arms():
    moa = EXAMPLES / "moa.mask"
    assert _arm_heads(maskc.compile(moa, name="moa").ir) == 6  # 0..4 listed, `_` on 4, even
    assert _arm_heads(maskc.compile(moa, name="moa_multi").ir) == 10
    assert _arm_heads(maskc.compile("mask m = causal").ir) == 4
    # no `_`: only the heads the arms cover (head 1 is not, in the second)
    assert _arm_heads(maskc.compile("mask m = heads { 0: causal, 1: all }").ir) == 2
    assert _arm_heads(maskc.compile("mask m = heads { [0, 3]: causal, 2: all }").ir) == 1
    cases, notes = plan(moa, name="moa_multi")
    assert {c["heads"] for c in cases} == {TEST_MAX_HEADS["interpreter"]}
    assert "heads 8 and up are not tested" in notes[0]


def test_lengths_fit_the_structure():
    bigbird = maskc.compile(EXAMPLES / "bigbird.mask", name="bigbird")
    assert _structure_tokens(bigbird.ir.body) == (320, 129)  # random(3) of 64-token blocks
    cases, notes = plan(EXAMPLES / "bigbird.mask", name="bigbird")
    assert min(c["kv_len"] for c in cases) >= 129 and max(c["q_len"] for c in cases) == 320
    assert not notes  # 5 blocks: within the interpreter's default size
    # a hard need wins over the default size: every case keeps 5 key blocks
    cases, _ = plan("mask m = blocks(64, random(5))")
    assert min(c["kv_len"] for c in cases) >= 257
    cases, _ = plan("mask m = causal & window(before = 255, after = 0)")
    assert max(c["kv_len"] for c in cases) == 272  # past the window's reach
    cases, notes = plan("mask m = causal")
    assert max(c["q_len"] for c in cases) == 96 and not notes
    cases, _ = plan("mask m over grid(8, 8) = neighborhood(3)")  # the grid's size, 2 cases
    assert [(c["q_len"], c["batch"]) for c in cases] == [(64, 1), (64, 2)]
    cases, _ = plan(EXAMPLES / "natten.mask", name="natten2d")
    assert len(cases) == 1  # 1,024 tokens: batch 2 doubles the interpreter's time
    cases, notes = plan("mask m = causal & window(before = 4095, after = 0)")
    assert max(c["q_len"] for c in cases) == TEST_FIT_TOKENS["interpreter"]
    assert "spans about 4,097 tokens, more than the 320 tested by default" in notes[0]
    cases, _ = plan("mask m = causal & window(before = 4095, after = 0)", device="cuda")
    assert max(c["q_len"] for c in cases) == TEST_FIT_TOKENS["cuda"]


def test_bigbird_passes_at_its_defaults_quietly():
    res = subprocess.run([sys.executable, "-m", "maskc.cli", "test",
                          str(EXAMPLES / "bigbird.mask"), "--name", "bigbird"],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.splitlines()[-1] == "4 cases passed, 0 failed"
    assert len(cases_of(res.stdout)) == 4
    progress = [x for x in res.stderr.splitlines() if x.endswith(": running...")]
    assert [x.split("]")[0] for x in progress] == ["[1/4", "[2/4", "[3/4", "[4/4"]
    assert "Warning" not in res.stdout + res.stderr


def test_no_library_warning_leaks(tmp_path):
    """torch warned that a runtime input's NumPy array is not writable (a selection)."""
    f = tmp_path / "s.mask"
    f.write_text("mask s(input idx) = causal & blocks(16, select(idx))\n")
    res = subprocess.run([sys.executable, "-m", "maskc.cli", "test", str(f), "--q-len", "32",
                          "--heads", "2", "--cases", "2"], capture_output=True, text=True,
                         timeout=600, cwd=ROOT, env={**os.environ, "TRITON_INTERPRET": "1"})
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Warning" not in res.stdout + res.stderr, res.stderr
    assert res.stdout.splitlines()[-1] == "2 cases passed, 0 failed"


def test_what_no_run_can_test_is_said_before_running(tmp_path, capsys):
    """Found by review: random blocks needing more keys than the interpreter's limit ran
    four failing cases; a heads { } without head 0 ran four failing cases; a bad --seed
    failed inside numpy; a mask needing -p stopped the whole file."""
    f = tmp_path / "r.mask"
    f.write_text("mask r = blocks(64, random(20, seed = 1))\n")
    assert main(["test", str(f)]) == 1
    err = capsys.readouterr().err
    assert "needs at least 1,217 keys" in err and "up to 1,024" in err
    f.write_text("mask h = heads { 1..4: causal }\n")
    assert main(["test", str(f)]) == 1
    assert "head 0 is covered by no arm" in capsys.readouterr().err
    f.write_text("mask h = heads { 0: causal, 2: window(2) }\n")
    assert main(["test", str(f), "--cases", "1"]) == 0
    assert "the arms for head(s) 2 are not tested" in capsys.readouterr().out
    assert main(["test", str(f), "--seed", "-1"]) == 1
    assert "--seed must be from 0" in capsys.readouterr().err
    f.write_text("mask a(w) = window(w)\nmask b = causal\n")
    assert main(["test", str(f), "--cases", "1"]) == 0
    out = capsys.readouterr().out
    assert "not tested: a (parameters without defaults" in out and cases_of(out)[0][0] == "b"
    assert main(["test", str(f), "--name", "a"]) == 1
    assert "pass it with -p w=VALUE" in capsys.readouterr().err
