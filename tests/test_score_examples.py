"""The score examples (gemma2, bloom, t5, swin in examples/) forward and backward on every
backend, against formulas written here from the papers: Gemma 2's soft-capping, ALiBi's
linear biases, T5's bucketed relative biases (pair by pair, from the buckets of k - q), and
Swin's window bias."""

import importlib.util
import math
import pathlib

import pytest
import torch

import maskc

from formulas import attention64

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def _t5_module():
    spec = importlib.util.spec_from_file_location("t5_buckets", EXAMPLES / "t5_buckets.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


T5 = _t5_module()


def rand(*shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g)


def where(keep, x):
    return torch.where(keep, x, torch.tensor(-math.inf, dtype=torch.float64))


def case(name):
    """(mask, (Lq, Lk), heads, scale, float inputs as functions of the leaves, leaves,
    logits(s, leaves)) for one example."""
    H = 4
    qi = lambda Lq, Lk: torch.arange(Lq).view(-1, 1) + (Lk - Lq)  # noqa: E731  aligned p
    ki = lambda Lk: torch.arange(Lk).view(1, -1)  # noqa: E731
    if name in ("gemma2_local", "gemma2_global"):
        params = dict(cap=2.0, **({"w": 7} if name == "gemma2_local" else {}))
        Lq, Lk = 23, 40
        p, k = qi(Lq, Lk), ki(Lk)
        keep = (k <= p) & ((p - k <= 7) if name == "gemma2_local" else True)
        logits = lambda s, x: where(keep, 2.0 * torch.tanh(s / 2.0))  # noqa: E731
        return "gemma2.mask", name, params, (Lq, Lk), H, None, {}, {}, logits
    if name == "bloom":
        Lq, Lk = 30, 30
        p, k = qi(Lq, Lk), ki(Lk)
        # the paper's slopes for 4 heads: 2^-2, 2^-4, 2^-6, 2^-8 (start 2^(-8/n), ratio the same)
        slopes = torch.tensor([2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8])
        leaves = {"slopes": slopes}
        logits = lambda s, x: where(k <= p, s - x["slopes"].double().view(-1, 1, 1)  # noqa
                                    * (p - k).abs())
        return "bloom.mask", "bloom", {}, (Lq, Lk), H, None, leaves, \
            {"slopes": lambda x: x["slopes"]}, logits
    if name in ("t5_encoder", "t5_decoder"):
        enc = name == "t5_encoder"
        R, nb = 16, 8
        Lq, Lk = (35, 35) if enc else (20, 33)
        p, k = qi(Lq, Lk), ki(Lk)
        leaves = {"weight": rand(nb, H, seed=11)}
        rel = k - p   # T5's relative position: memory - query

        def logits(s, x):
            b = x["weight"].double()[T5.bucket(rel, enc, nb, R)].permute(2, 0, 1)
            return where((k <= p) | enc, s + b)
        bias = lambda x: T5.bias_table(x["weight"], enc, max_distance=R)  # noqa: E731
        return "t5.mask", name, {"R": R}, (Lq, Lk), H, 1.0, leaves, {"bias": bias}, logits
    if name == "swin":
        W, side = 4, 8   # Swin's 7 x 7 windows need 196 tokens: slow in Triton's interpreter
        n = side * side
        t = torch.arange(n)
        y, x_ = t // side, t % side
        same = ((y.view(-1, 1) // W == y.view(1, -1) // W)
                & (x_.view(-1, 1) // W == x_.view(1, -1) // W))
        dy = (y % W).view(-1, 1) - (y % W).view(1, -1) + W - 1
        dx = (x_ % W).view(-1, 1) - (x_ % W).view(1, -1) + W - 1
        leaves = {"rpb": rand(H, 2 * W - 1, 2 * W - 1, seed=12)}
        logits = lambda s, x: where(same, s + x["rpb"].double()[:, dy, dx])  # noqa: E731
        return "swin.mask", "swin", {"height": side, "width": side, "win": W}, (n, n), H, None, \
            leaves, \
            {"rpb": lambda x: x["rpb"]}, logits
    raise KeyError(name)


NAMES = ["gemma2_local", "gemma2_global", "bloom", "t5_encoder", "t5_decoder", "swin"]


def run(name, backend, grad):
    file, mask, params, (Lq, Lk), H, scale, leaves, make, logits = case(name)
    m = maskc.compile(EXAMPLES / file, name=mask, **params)
    D, B = 16, 2
    q, k, v = rand(B, H, Lq, D, seed=1), rand(B, H, Lk, D, seed=2), rand(B, H, Lk, D, seed=3)
    leaves = {n: x.clone().requires_grad_(grad) for n, x in leaves.items()}
    q, k, v = (x.requires_grad_(grad) for x in (q, k, v))
    floats = {n: f(leaves) for n, f in make.items()}
    out = m.attention(q, k, v, scale=scale, backend=backend, **floats)
    # logits(s) gives -inf where a pair is masked: every pair is "kept" for attention64
    want, _ = attention64(q, k, v, torch.tensor(True), lambda s: logits(s, leaves),
                          scale or 1 / math.sqrt(D))
    torch.testing.assert_close(out.double(), want, atol=3e-5, rtol=1e-4)
    if grad:
        wts = rand(*out.shape, seed=5)
        xs = [q, k, v, *leaves.values()]
        got = torch.autograd.grad((out * wts).sum(), xs)
        exp = torch.autograd.grad((want * wts.double()).sum(), xs)
        for g, e, what in zip(got, exp, ["q", "k", "v", *leaves]):
            torch.testing.assert_close(g.double(), e.double(), atol=1e-4, rtol=3e-4,
                                       msg=lambda s, what=what: f"d{what}: {s}")


@pytest.mark.parametrize("name", NAMES)
def test_examples_forward_and_backward_on_triton(name):
    run(name, "triton", grad=True)


@pytest.mark.parametrize("name", NAMES)
def test_examples_forward_and_backward_on_the_reference(name):
    run(name, "reference", grad=True)


@pytest.mark.parametrize("name", NAMES)
def test_examples_forward_on_flex(name):
    # NOTE: FlexAttention on the CPU has no backward (a GPU run covers it: MASKC_GPU_TESTS)
    run(name, "flex-eager", grad=False)
    if name == "gemma2_local":  # compiled: seconds per mask on the CPU
        run(name, "flex", grad=False)


@pytest.mark.gpu
@pytest.mark.parametrize("name", NAMES)
def test_examples_backward_on_flex_gpu(name):
    run(name, "flex", grad=True)


def test_t5_table_reads_as_the_buckets_do():
    # every distance, including far past max_distance, reads the bucket T5 gives it
    w = rand(32, 4, seed=3)
    enc = T5.bias_table(w)                  # (4, 257)
    dec = T5.bias_table(w, bidirectional=False)
    for d in [-1000, -129, -128, -40, -9, -8, -1, 0, 1, 7, 8, 100, 128, 129, 5000]:
        torch.testing.assert_close(enc[:, max(-128, min(d, 128)) + 128],
                                   w[T5.bucket(torch.tensor(d))])
        if d >= 0:
            torch.testing.assert_close(dec[:, min(d, 128)],
                                       w[T5.bucket(torch.tensor(-d), bidirectional=False)])
    assert T5.bucket(torch.tensor(0)).item() == 0 and T5.bucket(torch.tensor(1)).item() == 17
    assert T5.bucket(torch.tensor(200)).item() == 31
