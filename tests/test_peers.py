"""maskc against mask definitions written by others: attn-gym's mask_mods and NATTEN's own.

attn-gym is a test dependency; NATTEN's definition comes from its source distribution
(``pip download natten==0.21.7``; it imports on the CPU), fetched once into pytest's cache.
"""

import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch.nn.attention.flex_attention import and_masks, create_mask

import maskc

NATTEN = "natten==0.21.7"


def peer_dense(mask_mod, n, kv=None):
    return create_mask(mask_mod, None, None, n, kv or n, device="cpu")[0, 0].numpy()


def ours(src, n=None, **inputs):
    return maskc.compile(src).dense(n, **inputs)[0]


@pytest.mark.parametrize("w", [0, 1, 7, 64])
def test_attn_gym_sliding_window(w):
    from attn_gym.masks import generate_sliding_window
    assert np.array_equal(peer_dense(generate_sliding_window(w), 200),
                          ours(f"mask m = causal & window(before = {w}, after = 0)", 200))


@pytest.mark.parametrize("w, d", [(8, 2), (9, 2), (12, 3), (5, 1)])
def test_attn_gym_dilated_sliding_window(w, d):
    from attn_gym.masks import generate_dilated_sliding_window
    # attn-gym's window is a radius in positions; maskc's counts dilated steps
    assert np.array_equal(peer_dense(generate_dilated_sliding_window(w, d), 150),
                          ours(f"mask m = window({w // d}, dilation = {d})", 150))


@pytest.mark.parametrize("n", [0, 1, 33])
def test_attn_gym_prefix_lm(n):
    from attn_gym.masks import generate_prefix_lm_mask
    assert np.array_equal(peer_dense(generate_prefix_lm_mask(n), 100),
                          ours(f"mask m = causal | prefix({n})", 100))


def test_attn_gym_documents():
    from attn_gym.masks import generate_sliding_window
    from attn_gym.masks.document_mask import generate_doc_mask_mod, length_to_offsets
    from torch.nn.attention.flex_attention import _mask_mod_signature  # noqa: F401
    lengths = [13, 40, 1, 66, 8]
    offsets = length_to_offsets(lengths, "cpu")
    doc = maskc.document_ids(lengths)
    causal = lambda b, h, q, k: q >= k  # noqa: E731
    assert np.array_equal(peer_dense(generate_doc_mask_mod(causal, offsets), 128),
                          ours("mask m(input doc) = causal & same(doc)", 128, doc=doc))
    swa = generate_doc_mask_mod(generate_sliding_window(5), offsets)
    assert np.array_equal(peer_dense(swa, 128), ours(
        "mask m(input doc) = within(doc, causal & window(before = 5, after = 0))", 128,
        doc=doc))


@pytest.mark.parametrize("n, k", [(12, 3), (16, 7), (9, 9)])
def test_attn_gym_natten_odd_kernels(n, k):
    from attn_gym.masks.natten import generate_natten
    # attn-gym's NATTEN matches NATTEN for odd kernels on square canvases (NOTES.md)
    assert np.array_equal(peer_dense(generate_natten(n, n, k, k), n * n),
                          ours(f"mask m over grid({n}, {n}) = neighborhood({k})"))


@pytest.fixture(scope="session")
def natten_flex(pytestconfig):
    root = pytestconfig.cache.mkdir("natten-sdist")
    src = root / "natten-0.21.7" / "src"
    if not src.is_dir():
        # NOTE: pip prepares an sdist's metadata even for a download; in an isolated build
        # environment that means installing NATTEN's build requirements (torch with CUDA
        # wheels: 55-86 s). This environment has what egg_info needs: 5 s.
        # NOTE: test processes (pytest-xdist workers) may get here at once: each downloads
        # into its own folder and renames what it extracts into place; the first rename wins
        tmp = Path(tempfile.mkdtemp(dir=root))
        got = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q",
                              "--no-build-isolation", "-d", str(tmp), NATTEN],
                             capture_output=True, text=True)
        if got.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            pytest.skip(f"cannot download {NATTEN}: {got.stderr.strip()[-200:]}")
        with tarfile.open(tmp / "natten-0.21.7.tar.gz") as tar:
            tar.extractall(tmp, filter="data")
        try:
            (tmp / "natten-0.21.7").rename(root / "natten-0.21.7")
        except OSError:  # another process's copy is in place
            pass
        shutil.rmtree(tmp, ignore_errors=True)
    sys.path.insert(0, str(src))
    try:
        from natten.backends.flex import get_na_flex_mask
    finally:
        sys.path.remove(str(src))
    return get_na_flex_mask


def _fmt(values):
    text = [str(v).lower() for v in values]
    return text[0] if len(text) == 1 else "(" + ", ".join(text) + ")"


@st.composite
def na_configs(draw):
    nd = draw(st.integers(1, 3))
    shape = tuple(draw(st.integers(3, 12 if nd < 3 else 6)) for _ in range(nd))
    kernel = tuple(draw(st.integers(2, s)) for s in shape)
    dilation = tuple(draw(st.integers(1, s // k)) for s, k in zip(shape, kernel))
    stride = tuple(draw(st.integers(1, k)) for k in kernel)
    causal = tuple(draw(st.booleans()) for _ in range(nd))
    return shape, kernel, dilation, stride, causal


@settings(max_examples=40, deadline=None)
@given(cfg=na_configs())
def test_neighborhood_equals_nattens_own_definition(natten_flex, cfg):
    shape, kernel, dilation, stride, causal = cfg
    block_mask = natten_flex("cpu", len(shape), shape, kernel, stride, dilation, causal)
    n = int(np.prod(shape))
    src = (f"mask m over grid({', '.join(map(str, shape))}) = neighborhood({_fmt(kernel)}, "
           f"dilation = {_fmt(dilation)}, causal = {_fmt(causal)}, stride = {_fmt(stride)})")
    assert np.array_equal(peer_dense(block_mask.mask_mod, n), ours(src)), src
