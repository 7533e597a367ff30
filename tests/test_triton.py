"""The generated Triton kernels against the NumPy reference (interpreter on CPU, GPU if asked)."""

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import maskc
from maskc.backends import triton as tb
from maskc.testing import assert_attention_matches, shapes, specs

from conftest import GPU_RUN

GOLDEN = Path(__file__).parent / "golden"
EXAMPLES = Path(__file__).parent.parent / "examples"
GOLDEN_CASES = {  # golden name -> (example file, mask name)
    "mistral": ("mistral.mask", "mistral"),
    "packed_sliding_window": ("packed_documents.mask", "packed_sliding_window"),
    "bigbird": ("bigbird.mask", "bigbird"),
    "natten2d": ("natten.mask", "natten2d"),
    "moa": ("moa.mask", "moa"),
    "gemma2_local": ("gemma2.mask", "gemma2_local"),   # scores: softcap
    "t5_encoder": ("t5.mask", "t5_encoder"),           # scores: a float input with a gradient
}
DTYPES = ("float32", "float16") + (("bfloat16",) if GPU_RUN else ())  # NOTES: bf16 is garbage
# a GPU run compiles each example, so it draws few
PROFILE = dict(max_examples=12 if GPU_RUN else 20, deadline=None,
               suppress_health_check=list(HealthCheck))


def triton_attention(mask):
    return lambda q, k, v, **kw: mask.attention(q, k, v, backend="triton", return_lse=True, **kw)


@settings(**PROFILE)
@given(src=specs(), shape=shapes(max_len=512 if GPU_RUN else 80, dtypes=DTYPES))
def test_random_masks_forward_and_backward(src, shape, device):
    m = maskc.compile(src)
    try:
        assert_attention_matches(triton_attention(m), m, device=device, **shape)
    except maskc.MaskError as err:  # e.g. random(r) with fewer key blocks than r
        assert "key blocks" in str(err)


@pytest.mark.parametrize("file, name", sorted(GOLDEN_CASES.values()))
def test_examples_match_the_reference(file, name, device):
    overrides = {"natten2d": dict(height=12, width=10, kernel=5), "bigbird": dict(b=16)}
    m = maskc.compile(EXAMPLES / file, name=name, **overrides.get(name, {}))
    assert_attention_matches(triton_attention(m), m, device=device, heads=4, kv_heads=2,
                             q_len=150, kv_len=150, head_dim=16)


@pytest.mark.parametrize("head_dim", [16, 24, 64, 128, 256])
def test_head_dims(head_dim, device):
    m = maskc.compile("mask m = causal & window(before = 30, after = 0) | sink(2)")
    assert_attention_matches(triton_attention(m), m, device=device, q_len=40, kv_len=53,
                             head_dim=head_dim, grad=GPU_RUN or head_dim <= 64)


def test_fully_masked_rows_give_zeros_and_minus_inf(device):
    m = maskc.compile("mask m = where q >= 20 & causal")
    q = torch.randn(1, 2, 48, 16, device=device, requires_grad=True)
    k = torch.randn(1, 2, 48, 16, device=device, requires_grad=True)
    v = torch.randn(1, 2, 48, 16, device=device, requires_grad=True)
    out, lse = m.attention(q, k, v, backend="triton", return_lse=True)
    assert torch.equal(out[:, :, :20], torch.zeros_like(out[:, :, :20]))
    assert torch.isneginf(lse[:, :, :20]).all() and torch.isfinite(lse[:, :, 20:]).all()
    out.sum().backward()
    assert not any(torch.isnan(t.grad).any() for t in (q, k, v))
    assert torch.equal(q.grad[:, :, :20], torch.zeros_like(q.grad[:, :, :20]))


def test_no_mask_tensor_and_no_length_in_the_source():
    m = maskc.compile("mask m(input doc) = within(doc, causal & window(before = 9, after = 0))")
    src = m.kernel_source()
    assert src == tb.generate(maskc.compile(m.pretty()).ir)[0]  # deterministic
    for length in ("4096", "1024", "100"):
        assert length not in src
    assert "def mask_m(" in src and "window" in src  # the spec is shown in the header


def test_new_lengths_reuse_one_kernel(device):
    m = maskc.compile("mask m = causal & chunk(24)")
    before = len(tb._MODULES)
    for n in (30, 61, 95):
        q = torch.randn(1, 1, n, 16, device=device)
        m.attention(q, q, q, backend="triton")
    assert len(tb._MODULES) - before <= 1
    mod = tb.load_module(m.ir)
    assert getattr(mod, "fwd_m") is getattr(tb.load_module(m.ir), "fwd_m")


def test_kernel_file_is_content_hashed_and_importable(tmp_path, monkeypatch):
    monkeypatch.setenv("MASKC_CACHE_DIR", str(tmp_path))
    m = maskc.compile("mask m = causal & window(before = 3, after = 0)")
    path = m.kernel_path()
    assert path.parent == tmp_path and path.read_text() == m.kernel_source()
    assert path.name.startswith("maskc_m_") and path == m.kernel_path()


def test_two_processes_writing_one_kernel(tmp_path):
    code = ("import maskc; from maskc.backends import triton as tb; "
            "m = maskc.compile('mask m = causal & sink(3)'); "
            "[tb.write_source(m.kernel_source() + '#' * 0, 'm') for _ in range(50)]")
    env = {"MASKC_CACHE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent.parent), *sys.path])}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env) for _ in range(2)]
    assert all(p.wait() == 0 for p in procs)
    files = list(tmp_path.glob("maskc_m_*.py"))
    assert len(files) == 1 and not list(tmp_path.glob("*.tmp"))
    assert files[0].read_text() == maskc.compile("mask m = causal & sink(3)").kernel_source()


def test_unsupported_device_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    m = maskc.compile("mask m = causal")
    q = torch.randn(1, 1, 8, 16)
    with pytest.raises(maskc.MaskError, match="TRITON_INTERPRET"):
        m.attention(q, q, q, backend="triton")


def test_compile_command_writes_an_importable_module(tmp_path, device):
    from maskc.cli import main
    out = tmp_path / "swa_kernel.py"
    assert main(["compile", str(EXAMPLES / "mistral.mask"), "-p", "w=7", "-o", str(out)]) == 0
    sys.path.insert(0, str(tmp_path))
    try:
        import swa_kernel
    finally:
        sys.path.remove(str(tmp_path))
    m = maskc.compile(EXAMPLES / "mistral.mask", w=7)
    assert_attention_matches(lambda q, k, v: swa_kernel.attention(q, k, v), m, device=device,
                             q_len=33)
    q = torch.randn(1, 2, 33, 32, device=device)
    swa_kernel.attention(q, q, q)  # a second call reuses the module's mask and its tables
    assert len(swa_kernel._MASK) == 1 and len(swa_kernel._MASK[0]._plans) == 1
    # the module runs its own kernels (an edited copy runs as edited), not a cached copy
    calls = []
    forward = swa_kernel.fwd_mistral
    swa_kernel.fwd_mistral = type("Spy", (), {"__getitem__": lambda self, grid: (
        calls.append(grid), forward[grid])[1]})()
    swa_kernel.attention(q, q, q)
    assert len(calls) == 1


def test_an_unwritable_cache_is_a_clear_error(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("MASKC_CACHE_DIR", str(blocker))
    m = maskc.compile("mask m = causal & window(before = 5, after = 0)")
    with pytest.raises(maskc.MaskError, match="set MASKC_CACHE_DIR to a writable directory"):
        m.kernel_path()


def test_test_command_runs_the_kit(capsys):
    from maskc.cli import main
    assert main(["test", str(EXAMPLES / "streamingllm.mask"), "-p", "w=20", "-p", "n=2",
                 "--q-len", "50"]) == 0
    assert "4 cases passed, 0 failed" in capsys.readouterr().out
    assert main(["test", str(EXAMPLES / "streamingllm.mask"), "--name", "nope"]) == 1
    assert "no mask named 'nope'" in capsys.readouterr().err  # not a StopIteration


def test_test_command_heads_and_failures_per_mask(tmp_path, capsys):
    from maskc.cli import main
    f = tmp_path / "two.mask"
    f.write_text("mask two = heads { 0: causal, 1: window(3) }\nmask ok = causal\n")
    assert main(["test", str(f), "--q-len", "16", "--heads", "4"]) == 1  # 'two' covers 2
    out = capsys.readouterr().out
    assert "head 2 is not covered" in out
    assert "ok: q 16 kv 16 heads 4/4 batch 1 float32: ok (fwd max err" in out
    assert "4 cases passed, 4 failed" in out  # the second mask still ran
    assert main(["test", str(f), "--q-len", "16"]) == 0  # by default, the heads it covers
    out = capsys.readouterr().out
    assert "two: q 16 kv 16 heads 2/2 batch 1" in out and "8 cases passed, 0 failed" in out


@pytest.mark.parametrize("golden", sorted(GOLDEN_CASES))
def test_golden_kernels(golden, request):
    file, name = GOLDEN_CASES[golden]
    src = maskc.compile(EXAMPLES / file, name=name).kernel_source()
    path = GOLDEN / f"{golden}.py.golden"
    if request.config.getoption("--update-golden"):
        path.write_text(src)
    assert path.read_text() == src, (f"generated code for {golden} changed: review the diff and "
                                     "rerun with --update-golden")


@pytest.mark.gpu
@pytest.mark.parametrize("spec, heads, kv_heads", [
    ("mask m over grid(24, 40) = neighborhood((7, 13), dilation = (1, 2))", 4, 4),
    ("mask m = blocks(64, window(1) | global([0]) | random(3, seed = 7))", 4, 1),
])
@pytest.mark.parametrize("dtype, head_dim", [("float16", 64), ("bfloat16", 128)])
def test_benchmark_patterns_on_gpu(spec, heads, kv_heads, dtype, head_dim):
    m = maskc.compile(spec)
    assert_attention_matches(triton_attention(m), m, device="cuda", heads=heads,
                             kv_heads=kv_heads, q_len=None if m.grid else 2048,
                             head_dim=head_dim, dtype=dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("spec", ["mask m over grid(40, 48) = neighborhood((11, 15))",
                                  "mask m over grid(10, 12, 16) = neighborhood((5, 7, 7), "
                                  "stride = (1, 2, 2))"])
def test_tiled_layout_on_gpu(spec):
    m = maskc.compile(spec)
    config = dataclasses.replace(tb.default_config("cuda", torch.bfloat16, 128), layout="tiled")
    assert_attention_matches(
        lambda q, k, v: m.attention(q, k, v, backend="triton", return_lse=True, config=config),
        m, device="cuda", heads=4, kv_heads=2, head_dim=128, dtype="bfloat16")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_realistic_sizes_on_gpu(dtype):
    m = maskc.compile("mask m(input doc) = causal & same(doc) & window(before = 500, after = 0)")
    doc = maskc.document_ids([1000, 3000, 96])
    assert_attention_matches(triton_attention(m), m, device="cuda", batch=2, heads=8,
                             kv_heads=2, q_len=4096, head_dim=128, dtype=dtype,
                             inputs={"doc": doc})


def test_equal_masks_compiled_twice_share_a_module_but_not_runtime_tables(device):
    q = torch.randn(1, 2, 40, 16, device=device)
    for _ in range(2):  # the second compile has new IR nodes for the same source
        m = maskc.compile("mask m = blocks(8, layout([[1, 0], [1, 1], [0, 1]]) | random(1))")
        out = m.attention(q, q, q, backend="triton")
        assert torch.allclose(out, m.attention(q, q, q, backend="reference"), atol=1e-5)


@pytest.mark.parametrize("bad", [0, 24, -16, 4.0])
def test_bad_block_sizes_are_located_errors(bad):
    m = maskc.compile("mask m = causal")
    q = torch.randn(1, 1, 32, 16)
    with pytest.raises(maskc.MaskSizeError, match="block_q"):
        tb.forward(m, q, q, q, block_q=bad)


@pytest.mark.parametrize("spec", [
    "within(doc, blocks(4, random(1, seed = 3) | window(1)))",
    "within(doc, causal & blocks(8, layout([[1, 0], [1, 1]])))",
])
@pytest.mark.parametrize("q_len, kv_len", [(60, 60), (50, 70), (70, 50)])
def test_block_tables_inside_within(spec, q_len, kv_len, device):
    m = maskc.compile(f"mask m(input doc) = {spec}")
    doc = maskc.document_ids([kv_len // 2, kv_len - kv_len // 2])
    assert_attention_matches(triton_attention(m), m, device=device, q_len=q_len,
                             kv_len=kv_len, inputs={"doc": doc})


@pytest.mark.parametrize("spec, align", [
    ("blocks(64, window(1) | global([0]) | random(3, seed = 7))", 64),
    ("blocks(96, window(1)) | heads { 0: blocks(32, causal), _: none }", 32),
    ("blocks(8, window(1))", None),          # below the smallest GPU tile
    ("blocks(64, window(1)) | sink(4)", None),  # a token-level term breaks alignment
    ("causal", None),
])
def test_block_alignment(spec, align):
    assert tb.block_alignment(maskc.compile(f"mask m = {spec}").ir) == align


def test_aligned_tiles_are_all_full_and_exact(device):
    m = maskc.compile("mask m = blocks(32, window(1) | global([0]) | random(2, seed = 5))")
    config = tb.aligned(tb.default_config("cuda", torch.bfloat16, 64), tb.block_alignment(m.ir))
    for t in (config.fwd, config.dq, config.dkdv):
        assert (t.block_q, t.block_k) == (32, 32)
        assert m.block_map(256, block_q=32).stats["partial"] == 0  # no tile evaluates the mask
    assert_attention_matches(
        lambda q, k, v: m.attention(q, k, v, backend="triton", config=config), m,
        device=device, q_len=200, heads=2, kv_heads=1)


@pytest.mark.parametrize("spec", [
    "mask m over grid(12, 10) = neighborhood(5)",
    "mask m over grid(9, 14) = neighborhood((3, 7), dilation = (1, 2), causal = (true, false)) "
    "| heads { 0: tile(3, 7), _: none }",
    "mask m over grid(4, 6, 5) = neighborhood((3, 3, 5), stride = 2)",
])
def test_tiled_token_layout_is_exact(spec, device):
    m = maskc.compile(spec)
    config = dataclasses.replace(tb.default_config(device, torch.float32, 32), layout="tiled")
    q = torch.randn(1, 2, int(np.prod(m.grid)), 32, device=device)
    assert tb.Launch(m, q, q, q, None, config).plan.layout is not None
    assert_attention_matches(
        lambda q, k, v: m.attention(q, k, v, backend="triton", return_lse=True, config=config),
        m, device=device, heads=4, kv_heads=2)


def test_auto_layout_only_when_it_visits_fewer_tiles(device):
    q = torch.randn(1, 1, 64 * 64, 16, device=device)
    config = tb.KernelConfig.uniform(64, 64)
    natten = maskc.compile("mask m over grid(64, 64) = neighborhood(13)")  # 484 tiles, not 832
    launch = tb.Launch(natten, q, q, q, None, config)
    assert launch.plan.layout is not None and launch.plan.layout.tile_shape == (8, 8)
    tiled = launch.bm.stats["full"] + launch.bm.stats["partial"]
    plain = natten.block_map(block_q=64).stats
    assert tiled <= 0.8 * (plain["full"] + plain["partial"])
    rows = maskc.compile("mask m over grid(64, 64) = neighborhood((1, 31))")  # along rows only
    assert tb.Launch(rows, q, q, q, None, config).plan.layout is None
    row_major = dataclasses.replace(config, layout="row-major")
    assert tb.Launch(natten, q, q, q, None, row_major).plan.layout is None


def test_kernels_compile_for_hopper_without_a_gpu():
    # Triton's real compiler (not the interpreter) down to a cubin for sm_90: catches code
    # the interpreter accepts but the compiler does not, and tiles that do not fit
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent.parent), *sys.path])
    out = subprocess.run([sys.executable, "-m", "maskc.cli", "compile",
                          str(EXAMPLES / "natten.mask"), "--name", "natten2d", "--arch", "sm_90",
                          "--dtype", "float16", "--head-dim", "64"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = {line.split()[0]: line.split() for line in out.stdout.splitlines()[2:]}
    assert set(rows) == {"fwd_natten2d", "bwd_delta_natten2d", "bwd_dq_natten2d",
                         "bwd_dkdv_natten2d"}
    assert all(int(r[4].replace(",", "")) > 0 for r in rows.values())  # shared memory used
    assert rows["fwd_natten2d"][1] == "128x128"  # the Hopper tiles for half precision, D=64


def test_a_new_length_compiles_nothing():
    # Triton's own launcher binder (what it keys compiled variants on), on the recorded
    # launches of forward, backward and a decoding step: lengths that are 1, multiples of 16 or neither,
    # with runtime inputs and host-built block tables, all map to one variant per kernel
    code = """if True:
        import json, numpy as np, maskc
        from maskc.backends.triton.aot import specializations
        keys = {}
        for src, inputs in [
                ("mask m(input doc) = same(doc) & causal & window(before = 100, after = 0)",
                 True),
                ("mask m = blocks(64, window(1) | random(2, seed = 1)) | global([0])", False)]:
            m = maskc.compile(src)
            for lq, lk in [(1, 1024), (1000, 1024), (1024, 1024), (999, 4097), (4097, 4097)]:
                kw = {"doc": np.arange(lk) // 300} if inputs else {}
                for kernel, key in specializations(m, q_len=lq, kv_len=lk, **kw).items():
                    keys.setdefault(src + kernel, set()).add(key)
        print(json.dumps({k: len(v) for k, v in keys.items()}))
    """
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent.parent), *sys.path])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    counts = json.loads(out.stdout.splitlines()[-1])
    # forward, delta, dq, dk/dv, decode and its combine, for each of the two masks
    assert len(counts) == 12 and set(counts.values()) == {1}, counts


@pytest.mark.gpu
def test_a_new_length_compiles_nothing_on_gpu():
    # the launcher's own cache: one compiled variant per kernel across lengths
    m = maskc.compile("mask m(input doc) = same(doc) & causal & window(before = 100, after = 0)")
    for n in (1000, 1024, 1, 4097):
        q = torch.randn(1, 2, n, 64, device="cuda", dtype=torch.float16, requires_grad=True)
        m.attention(q, q, q, backend="triton", doc=torch.arange(n) // 300).sum().backward()
    mod = tb.load_module(m.ir)
    for name in ("fwd_m", "bwd_delta_m", "bwd_dq_m", "bwd_dkdv_m"):
        caches = getattr(mod, name).device_caches
        assert [len(c[0]) for c in caches.values()] == [1], name


def test_compile_arch_argument_errors(capsys):
    from maskc.cli import main
    assert main(["compile", str(EXAMPLES / "mistral.mask"), "--arch", "hopper"]) == 1
    assert "--arch must look like sm_90" in capsys.readouterr().err
    for arch in ("sm_30", "sm_1000"):  # Triton would abort or fail deep inside
        assert main(["compile", str(EXAMPLES / "mistral.mask"), "--arch", arch]) == 1
        assert "use one of sm_80, sm_86, sm_89, sm_90" in capsys.readouterr().err


def test_plans_are_cached_per_size_and_input_content(device):
    m = maskc.compile("mask m(input doc) = causal & same(doc)")
    q = torch.randn(1, 2, 40, 16, device=device)
    doc = np.repeat([0, 1], 20)
    first = tb.Launch(m, q, q, q, doc=doc).plan
    assert tb.Launch(m, q, q, q, doc=doc.copy()).plan is first  # same content, same tables
    assert tb.Launch(m, q, q, q, doc=np.repeat([0, 1], [10, 30])).plan is not first
    assert tb.Launch(m, q[:, :, :30], q, q, doc=doc).plan is not first  # another q_len
    for _ in range(12):  # a bounded cache: old plans go
        tb.Launch(m, q, q, q, doc=np.random.default_rng(_).integers(0, 3, 40))
    assert len(m._plans) == maskc.api.PLANS_PER_MASK


def test_out_of_resources_falls_back_to_smaller_tiles_once(device):
    class OutOfResources(Exception):  # matched by name, like Triton's
        pass
    m = maskc.compile("mask m = causal & window(before = 9, after = 0)")
    q = torch.randn(1, 1, 70, 16, device=device)
    launch = tb.Launch(m, q, q, q, None, tb.KernelConfig.uniform(32, 32))
    tried = []

    def run(plan, tiles):
        tried.append(tiles)
        assert plan.tiles["fwd"] == tiles  # the plan is retiled, its tables at those tiles
        assert plan.block_map("fwd").block_q == tiles.block_q
        if tiles.block_q * tiles.block_k > 256:
            raise OutOfResources("shared memory")
        return tiles
    start = tb.Tiles(32, 32, 4, 3)
    assert launch.plan.tiles["fwd"] == start
    assert launch._run("fwd", q.dtype, run) == tb.Tiles(16, 16, 4, 1)
    assert tried == [start, tb.Tiles(32, 32, 4, 1), tb.Tiles(16, 32, 4, 1),
                     tb.Tiles(16, 16, 4, 1)]
    tried.clear()
    launch._run("fwd", q.dtype, run)  # remembered: straight to the tiles that fit
    assert tried == [tb.Tiles(16, 16, 4, 1)]
    with pytest.raises(ValueError):  # other errors are not resource problems
        launch._run("dq", q.dtype, lambda p, t: (_ for _ in ()).throw(ValueError("x")))


def test_tiled_layout_with_batched_runtime_inputs(device):
    m = maskc.compile("mask m(input doc) over grid(12, 12) = neighborhood(9) & same(doc)")
    doc = np.stack([np.zeros(144, int), np.repeat([0, 1], [75, 69])])  # per-batch ids
    config = dataclasses.replace(tb.default_config(device, torch.float32, 16), layout="tiled")
    assert_attention_matches(
        lambda q, k, v, **kw: m.attention(q, k, v, backend="triton", return_lse=True,
                                          config=config, **kw),
        m, batch=2, heads=1, head_dim=16, inputs={"doc": doc}, device=device)


def test_backward_uses_the_inputs_of_the_forward(device):
    m = maskc.compile("mask m(input doc) = causal & same(doc)")
    doc = np.repeat([0, 1], [32, 32])
    before = doc.copy()
    q, k, v = (torch.randn(1, 2, 64, 16, device=device, requires_grad=True) for _ in range(3))
    out = m.attention(q, k, v, backend="triton", doc=doc)
    doc[:] = 0  # the caller refills its buffer for the next batch before backward
    out.sum().backward()
    refs = [t.detach().double().cpu().requires_grad_() for t in (q, k, v)]
    m.attention(*refs, backend="reference", doc=before).sum().backward()
    for got, want in zip((q, k, v), refs):
        assert torch.allclose(got.grad.double().cpu(), want.grad, atol=2e-4, rtol=2e-4)


def test_shape_errors_match_the_reference():
    grid = maskc.compile("mask m over grid(7, 11) = neighborhood(3)")
    q = torch.randn(1, 1, 100, 16)
    for layout in ("row-major", "tiled"):
        config = dataclasses.replace(tb.KernelConfig.uniform(16, 16), layout=layout)
        with pytest.raises(maskc.MaskSizeError, match="grid of 77 tokens"):
            grid.attention(q, q, q, backend="triton", config=config)
    packed = maskc.compile("mask m(input doc) = causal & same(doc)")
    q = torch.randn(3, 1, 20, 16)
    with pytest.raises(maskc.MaskSizeError, match="batch 2 but q has 3"):
        packed.attention(q, q, q, backend="triton", doc=np.stack([np.repeat([0, 1], 10)] * 2))


def _scopes(fn_lines):
    """The assignment lines each scope of a generated function can see: the function's own
    lines, and each ``if`` block with the lines above it (blocks do not see each other)."""
    outer = [ln for ln in fn_lines if not ln.startswith("        ")]
    blocks, cur = [], None
    for ln in fn_lines:
        if ln.startswith("    if "):
            cur = []
            blocks.append(cur)
        elif ln.startswith("        ") and cur is not None:
            cur.append(ln.strip())
        else:
            cur = None
    return [[ln.strip() for ln in outer]] + [[ln.strip() for ln in outer] + b for b in blocks]


@pytest.mark.parametrize("golden", sorted(GOLDEN_CASES))
def test_golden_kernels_compute_each_expression_once(golden):
    """In each generated mask function, no right-hand side is computed twice in one scope,
    and no neutral arithmetic (`% 1`, `// 1`, `+ 0`, `* 1`, `- 0`) is left unfolded."""
    src = (GOLDEN / f"{golden}.py.golden").read_text()
    fn = re.search(r"^def mask_\w+\(.*?(?=^\S)", src, re.S | re.M).group(0).splitlines()[1:]
    for scope in _scopes(fn):
        rhs = [ln.split(" = ", 1)[1] for ln in scope
               if re.match(r"\w+ = ", ln) and not ln.startswith("keep =")]
        assert len(rhs) == len(set(rhs)), f"{golden}: an expression is computed twice: {rhs}"
    body = "\n".join(fn)
    assert not re.search(r"(%|//|\*) 1\b(?!\d)|[+-] 0\b(?![\d.])", body), body
    assert "Lk_in" not in body


# bfloat16 in Triton's interpreter is computed in float32 (its tl.dot multiplies bf16 bit
# patterns as integers: issue 11 item 15); on a GPU it runs in bfloat16
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("spec, heads, kv_heads, q_len, kv_len", [
    ("mask m = causal & window(before = 20, after = 0)", 4, 2, 70, 70),
    ("mask m = heads { 0: causal, _: window(5) } | sink(2)", 2, 1, 40, 57),
    ("mask m over grid(6, 7) = neighborhood((3, 5))", 2, 2, None, None),
])
def test_half_precision_matches_the_reference(dtype, spec, heads, kv_heads, q_len, kv_len,
                                              device):
    m = maskc.compile(spec)
    assert_attention_matches(triton_attention(m), m, heads=heads, kv_heads=kv_heads,
                             q_len=q_len, kv_len=kv_len, head_dim=32, dtype=dtype,
                             device=device)


def test_bfloat16_keeps_its_dtype_and_auto_with_gradients_is_right(device):
    m = maskc.compile("mask m = causal & window(before = 12, after = 0)")
    gen = torch.Generator().manual_seed(3)
    q64, k64, v64 = (torch.randn(1, 2, 50, 16, generator=gen, dtype=torch.float64)
                     for _ in range(3))
    leaves = [x.to(device=device, dtype=torch.bfloat16).requires_grad_() for x in (q64, k64, v64)]
    out = m.attention(*leaves)  # auto: triton with gradients (interpreter, or a GPU)
    refs = [x.detach().double().cpu().requires_grad_() for x in leaves]
    ref = m.attention(*refs, backend="reference")
    w = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    (out.double().cpu() * w).sum().backward()
    (ref * w).sum().backward()
    assert out.dtype == torch.bfloat16
    assert torch.allclose(out.double().cpu(), ref, atol=2e-2, rtol=2e-2)
    for leaf, r in zip(leaves, refs):
        assert leaf.grad.dtype == torch.bfloat16
        assert torch.allclose(leaf.grad.double().cpu(), r.grad, atol=3e-2, rtol=3e-2)
    out1, lse1 = tb.forward(m, *(x.detach() for x in leaves))
    assert out1.dtype == torch.bfloat16 and lse1.dtype == torch.float32
    assert torch.allclose(out1.double().cpu(), ref, atol=2e-2, rtol=2e-2)
