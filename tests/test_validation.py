"""Issue 11, items 3-5, 8, 9 and unreadable UTF-8: every bad argument of the Python API is a
MaskError (also the builtin it means: TypeError, ValueError) raised by one validation layer
(maskc.validate) before any expensive work."""

import time
from pathlib import Path

import numpy as np
import pytest
import torch

import maskc
from maskc import MaskError, MaskInputError, MaskSizeError, MaskTypeError, MaskValueError

CAUSAL = maskc.compile("mask m = causal")
GRID = maskc.compile("mask m over grid(4, 5) = neighborhood(3)")


def test_a_path_with_a_nul_byte_is_a_value_error():
    with pytest.raises(MaskValueError, match="cannot read .*embedded null byte") as err:
        maskc.compile(Path("mask m = causal\x00"))
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize("source", [b"mask m = causal", None, 1, [], {}, bytearray(b"x")])
def test_source_of_the_wrong_type_is_a_mask_type_error(source):
    with pytest.raises(MaskTypeError, match="takes source text") as err:
        maskc.compile(source)
    assert isinstance(err.value, TypeError) and isinstance(err.value, MaskError)


def test_name_of_the_wrong_type_is_a_mask_type_error():
    with pytest.raises(MaskTypeError, match="name must be"):
        maskc.compile("mask m = causal", name=5)


@pytest.mark.parametrize("target", [5, [], None])
def test_a_target_that_is_not_a_name_is_a_mask_error(target):
    with pytest.raises(MaskError, match="unknown target"):
        CAUSAL.plan(8, target=target)


def test_a_file_that_is_not_utf8_points_at_the_byte(tmp_path):
    f = tmp_path / "bad.mask"
    f.write_bytes(b"mask m = causal\n# caf\xc3\xa9 \xb4 here\nmask n = all\n")
    with pytest.raises(MaskValueError) as err:
        maskc.compile(f)
    e = err.value
    assert (e.line, e.column) == (2, 8)  # characters, not bytes: the e-acute is one column
    text = str(e).splitlines()
    assert text[0] == f"{f}:2:8: error: the file is not UTF-8: byte 0xb4 cannot be decoded " \
                      "(invalid start byte)"
    assert text[2].index("^") == text[1].index("\ufffd")


def test_an_endless_file_is_read_only_up_to_the_limit():
    t0 = time.time()
    with pytest.raises(MaskSizeError, match="larger than 16,777,216 bytes"):
        maskc.compile(Path("/dev/zero"))
    assert time.time() - t0 < 2


@pytest.mark.parametrize("given", [[float("nan")], [0, float("inf")], "abc", [object()],
                                   [1.5], [True, 2], [None], [[1], [2]], [1, [2]],
                                   np.array([True]), [10**20]])
def test_document_ids_refuse_what_is_not_lengths(given):
    for kw in ({"lengths": given}, {"cu_seqlens": given}):
        with pytest.raises(MaskInputError, match="lengths|cu_seqlens"):
            maskc.document_ids(**kw)


@pytest.mark.parametrize("kw", [{"lengths": [10**10]}, {"cu_seqlens": [0, 10**11]},
                                {"lengths": [2**30, 2**30]}])
def test_document_ids_check_the_total_before_allocating(kw):
    t0 = time.time()
    with pytest.raises(MaskSizeError, match="tokens"):
        maskc.document_ids(**kw)
    assert time.time() - t0 < 1


def test_document_ids_still_take_integral_numbers():
    want = [0, 0, 0, 1, 1, 1, 1, 1, 2, 2]
    assert maskc.document_ids([3, 5, 2]).tolist() == want
    assert maskc.document_ids(cu_seqlens=[0, 3, 8, 10]).tolist() == want
    assert maskc.document_ids(np.array([3.0, 5.0, 2.0])).tolist() == want
    assert maskc.document_ids((np.int32(3), 5, 2.0)).tolist() == want
    assert maskc.document_ids(torch.tensor([3, 5, 2])).tolist() == want
    with pytest.raises(MaskInputError, match="never decrease"):
        maskc.document_ids(cu_seqlens=[0, 5, 3])


@pytest.mark.parametrize("call", [
    lambda: CAUSAL.block_map(162, block_q=16, block_k=10**30),
    lambda: CAUSAL.block_map(10**30),
    lambda: CAUSAL.flex_block_mask(8, block_size=10**30),
    lambda: CAUSAL.plan(8, head_dim=10**30),
    lambda: GRID.block_map(np.array([4, 5])),
    lambda: GRID.dense(np.array([4, 5])),
    lambda: GRID.dense(kv_len=np.array([20, 20])),
    lambda: CAUSAL.dense(q_len=True),
    lambda: CAUSAL.dense(8, kv_len=np.bool_(True)),
    lambda: CAUSAL.block_map(8, block_q=True),
    lambda: CAUSAL.mask_mod(True),
    lambda: CAUSAL.flex_block_mask(True),
    lambda: CAUSAL.plan(True),
    lambda: CAUSAL.plan(8, heads=4, kv_heads=True),
    lambda: CAUSAL.plan(8, heads=4, kv_heads=8),
    lambda: CAUSAL.dense(8, heads=np.array([2])),
], ids=["block_k-huge", "q_len-huge", "block_size-huge", "head_dim-huge", "grid-array-bm",
        "grid-array-dense", "grid-kv-array", "bool-q_len", "numpy-bool", "bool-block",
        "bool-mask_mod", "bool-flex", "bool-plan", "bool-kv_heads", "kv_heads-over-heads",
        "array-heads"])
def test_sizes_are_integers_in_range(call):
    with pytest.raises(MaskSizeError, match="must be"):
        call()


def test_numpy_integer_sizes_are_python_ints():
    # a numpy uint8 tile size used to wrap around (OverflowError: -162 out of bounds)
    want = CAUSAL.block_map(162, block_q=3).states()
    got = CAUSAL.block_map(np.int64(162), block_q=np.uint8(3), heads=np.int8(1)).states()
    assert np.array_equal(got, want)
    assert CAUSAL.dense(np.uint8(200)).shape == (1, 200, 200)
    assert CAUSAL.dense(np.array(8)).shape == (1, 8, 8)  # a 0-d integer array is a number
    assert GRID.dense(np.int32(20)).shape == (1, 20, 20)
    assert CAUSAL.plan(np.uint16(300), heads=np.uint8(4), kv_heads=np.uint8(2)).kv_heads == 2
    bm = CAUSAL.flex_block_mask(np.int16(256), block_size=(np.uint8(128), np.int64(64)))
    assert tuple(bm.BLOCK_SIZE) == (128, 64)


def test_scale_takes_0d_real_tensors_and_numpy_scalars():
    q, k, v = (torch.randn(1, 1, 8, 4) for _ in range(3))
    want = CAUSAL.attention(q, k, v, backend="reference", scale=0.5)
    for scale in (torch.tensor(0.5), torch.tensor(0.5, dtype=torch.float64), np.float32(0.5),
                  np.array(0.5)):
        got = CAUSAL.attention(q, k, v, backend="reference", scale=scale)
        torch.testing.assert_close(got, want)
    for scale in (torch.tensor([0.5]), np.array([0.5]), torch.tensor(True), True, 1j, "0.5",
                  [0.5]):
        with pytest.raises(MaskTypeError, match="scale must be a finite real number"):
            CAUSAL.attention(q, k, v, backend="reference", scale=scale)
    for scale in (float("inf"), torch.tensor(float("nan"))):
        with pytest.raises(MaskValueError, match="scale must be a finite real number"):
            CAUSAL.attention(q, k, v, backend="reference", scale=scale)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "nope", 123])
def test_a_device_that_is_not_here_is_refused_before_any_analysis(device):
    big = maskc.compile("mask m = causal")  # 2**20 tokens: the analysis would take long
    for call in (lambda: big.flex_block_mask(2**20, block_size=128, device=device),
                 lambda: big.mask_mod(2**20, device=device)):
        t0 = time.time()
        with pytest.raises(MaskError, match="device .* is not available here"):
            call()
        assert time.time() - t0 < 1


def test_a_tiled_layout_too_large_to_analyse_falls_back_to_row_major(monkeypatch):
    # issue 11 item 10: `maskc show natten.mask` at 4096 x 4096 allocated 64 GiB of tile pairs
    from maskc.backends import reference
    from maskc.passes.layoutmap import choose_layout, permuted_block_map, tiled_layout
    m = maskc.compile("mask m over grid(64, 64) = neighborhood(7)")
    layout, bm = choose_layout(m.ir, 128, 128, "tiled", evaluate=reference.evaluate)
    assert layout is not None  # 32 x 32 tile pairs: analysed
    monkeypatch.setattr(maskc.analysis.sizes, "_limit", 1000)  # under 32 * 32
    assert choose_layout(m.ir, 128, 128, "auto", evaluate=reference.evaluate) == (None, None)
    with pytest.raises(MaskSizeError, match="tiled layout's analysis"):
        choose_layout(m.ir, 128, 128, "tiled", evaluate=reference.evaluate)
    with pytest.raises(MaskSizeError, match="32 x 32 tile pairs"):
        permuted_block_map(m.ir, tiled_layout(m.ir, 128), 128)


@pytest.mark.parametrize("call", [
    lambda q: CAUSAL.plan(8, heads=2, kv_heads=[1]),
    lambda q: CAUSAL.plan(8, heads=2, kv_heads=np.array([1, 2])),
    lambda q: CAUSAL.attention(q, q, q, backend=np.array([1, 2])),
    lambda q: CAUSAL.attention(q, q, q, backend=["reference"]),
    lambda q: CAUSAL.attention(q, q, q, backend="reference", return_lse=np.array([1, 2])),
    lambda q: CAUSAL.attention(q, q, q, backend="reference", return_lse="yes"),
], ids=["kv_heads-list", "kv_heads-array", "backend-array", "backend-list", "lse-array",
        "lse-str"])
def test_arguments_that_are_no_keys_or_flags_are_mask_errors(call):
    with pytest.raises(MaskError):
        call(torch.randn(1, 2, 8, 4))


def test_the_triton_kernels_refuse_head_dims_past_256():
    """The README promises head dims 16-256; 300 was planned and run without a word."""
    import torch
    m = maskc.compile("mask m = causal")
    with pytest.raises(maskc.MaskSizeError, match="more than the Triton kernels take"):
        m.plan(16, head_dim=300)
    assert m.plan(16, head_dim=256).tiles["fwd"].block_q > 0
    q = torch.randn(1, 1, 16, 300)
    with pytest.raises(maskc.MaskSizeError, match="backend='flex' or 'reference'"):
        m.attention(q, q, q, backend="triton")
    assert m.attention(q, q, q, backend="reference").shape == q.shape
