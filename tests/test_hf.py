"""maskc.hf: tiny random-init transformers models (no weights) give the same logits,
generated tokens and gradients through maskc as through transformers' own eager attention."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

import maskc  # noqa: E402
import maskc.hf  # noqa: E402
from maskc.errors import MaskError  # noqa: E402

COMMON = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)


def _models():
    from transformers import (Gemma2Config, Gemma2ForCausalLM, LlamaConfig, LlamaForCausalLM,
                              MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM)
    return {
        "llama": (LlamaForCausalLM, LlamaConfig(**COMMON)),
        # every layer slides over 16 keys
        "mistral": (MistralForCausalLM, MistralConfig(**COMMON, sliding_window=16)),
        # layer 0 full, layer 1 sliding (max_window_layers = 1)
        "qwen2": (Qwen2ForCausalLM, Qwen2Config(**COMMON, use_sliding_window=True,
                                                sliding_window=16, max_window_layers=1)),
        # alternating sliding / global layers, logits soft-capped at 50 by default
        "gemma2": (Gemma2ForCausalLM, Gemma2Config(**COMMON, head_dim=8, sliding_window=16)),
    }


@pytest.fixture(scope="module")
def registered():
    return maskc.hf.register()


def _model(name):
    cls, config = _models()[name]
    torch.manual_seed(0)
    return cls(config).eval()


@pytest.mark.parametrize("name", ["llama", "mistral", "qwen2", "gemma2"])
def test_logits_equal_eager_with_padding(registered, name):
    model = _model(name)
    ids = torch.randint(0, 97, (2, 40), generator=torch.Generator().manual_seed(1))
    pad = torch.ones(2, 40, dtype=torch.long)
    pad[1, :7] = 0  # left padding, as generation pads
    for kw in ({}, {"attention_mask": pad}):
        model.set_attn_implementation("eager")
        want = model(ids, **kw).logits
        model.set_attn_implementation(registered)
        got = model(ids, **kw).logits
        # 40 tokens > the 16-token window: a lost window would differ by far more
        torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got[1, 7:] if kw else got[1], want[1, 7:] if kw else want[1],
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["mistral", "gemma2"])
def test_greedy_generation_with_a_cache_gives_the_same_tokens(name):
    """32 new tokens after a 12-token left-padded prompt: the sliding layers' caches drop
    keys (offsets), the padding stays masked. (The float64 reference backend: the Triton
    interpreter would take a minute; the logits tests above run the kernels.)"""
    registered = maskc.hf.register("maskc-reference", backend="reference")
    model = _model(name)
    ids = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(2))
    pad = torch.ones_like(ids)
    pad[1, :3] = 0
    out = {}
    for impl in ("eager", registered):
        model.set_attn_implementation(impl)
        out[impl] = model.generate(ids, attention_mask=pad, max_new_tokens=32, do_sample=False,
                                   pad_token_id=0)
    assert out["eager"].shape == (2, 44)
    assert torch.equal(out["eager"], out[registered])


def test_packed_sequences_from_position_ids(registered):
    model = _model("mistral")
    ids = torch.randint(0, 97, (1, 30), generator=torch.Generator().manual_seed(3))
    pos = torch.cat([torch.arange(10), torch.arange(20)])[None]  # two packed sequences
    model.set_attn_implementation("eager")
    want = model(ids, position_ids=pos, use_cache=False).logits
    model.set_attn_implementation(registered)
    got = model(ids, position_ids=pos, use_cache=False).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    alone = model(ids[:, 10:], position_ids=pos[:, 10:], use_cache=False).logits
    torch.testing.assert_close(got[:, 10:], alone, atol=1e-5, rtol=1e-5)


def test_training_step_with_a_custom_spec():
    """A given Mask replaces the model's pattern: logits and gradients equal eager attention
    with that mask passed as a 4-D mask."""
    spec = maskc.compile("mask m = causal & (sink(2) | window(before = 7, after = 0))")
    name = maskc.hf.register("maskc-streaming", mask=spec)
    model = _model("llama").train()
    ids = torch.randint(0, 97, (2, 24), generator=torch.Generator().manual_seed(4))
    model.set_attn_implementation(name)
    loss = model(ids, labels=ids).loss
    loss.backward()
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_attn_implementation("eager")
    dense = torch.from_numpy(spec.dense(24))[None]  # (1, 1, L, L)
    bias = torch.zeros(2, 1, 24, 24).masked_fill(~dense, torch.finfo(torch.float32).min)
    want = model(ids, labels=ids, attention_mask=bias).loss
    want.backward()
    torch.testing.assert_close(loss, want, atol=1e-6, rtol=1e-6)
    for g, p in zip(got, model.parameters()):
        torch.testing.assert_close(g, p.grad, atol=1e-6, rtol=1e-5)
    assert sum(g.abs().sum() for g in got) > 0


def test_spec_for_follows_transformers_conventions():
    assert maskc.hf.spec_for(True, 4096) == "mask hf = causal & window(before = 4095, after = 0)"
    assert maskc.hf.spec_for(True, None, 8192, 50.0) == \
        "mask hf = causal & chunk(8192) with softcap(50.0)"
    assert maskc.hf.spec_for(False) == "mask hf = true"
    # transformers' sliding_window_overlay keeps kv_idx > q_idx - W
    from transformers.masking_utils import causal_mask_function, sliding_window_overlay
    q, k = torch.arange(40).view(-1, 1), torch.arange(40).view(1, -1)
    theirs = sliding_window_overlay(16)(0, 0, q, k) & causal_mask_function(0, 0, q, k)
    ours = maskc.compile(maskc.hf.spec_for(True, 16)).dense(40)[0]
    assert (theirs.numpy() == ours).all()


def test_bad_arguments():
    with pytest.raises(MaskError, match="mask must be"):
        maskc.hf.register("x", mask="causal")
    with pytest.raises(MaskError, match="unknown backend"):
        maskc.hf.register("x", backend="sdpa")


def test_the_readme_section_runs():
    import pathlib
    import re
    text = (pathlib.Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = text[text.index("## Hugging Face transformers"):]
    section = section[:section.index("\n## ", 1)]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the project's own README
    assert scope["tokens"].shape == (2, 20)
    grads = [p.grad for p in scope["model"].parameters() if p.grad is not None]
    assert grads and sum(g.abs().sum() for g in grads) > 0
