"""The README's examples of masks chosen from the content run as written (at small sizes).

The training-step example is written for a GPU; here it runs on the CPU through Triton's
interpreter with the sizes shrunk (4,096 tokens -> 256, 8 heads -> 2, head dim 128 -> 16,
bfloat16 -> float32, 2 steps), which changes no call in it.
"""

import pathlib
import re

import pytest
import torch

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def blocks_after(heading: str) -> list[str]:
    text = README.read_text()
    section = text[text.index(heading):]
    section = section[:section.index("\n## ", 1)]
    return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)


def test_the_section_on_chosen_masks_runs(monkeypatch):
    monkeypatch.chdir(README.parent)
    code = blocks_after("## Masks chosen from the content")
    assert len(code) == 2 and "topk_blocks" in code[1] and "backward()" in code[1]
    exec(compile(code[0], "README.md", "exec"), {})  # noqa: S102 - the project's own README
    small = (code[1].replace('device="cuda"', 'device="cpu"').replace("4096", "256")
             .replace("128,", "16,").replace("torch.bfloat16", "torch.float32")
             .replace("# (1, 8, 64, 8), on the GPU", "").replace("(1, 8,", "(1, 2,")
             .replace("for step in range(3)", "for step in range(2)"))
    scope: dict = {}
    exec(compile(small, "README.md", "exec"), scope)  # noqa: S102
    assert tuple(scope["idx"].shape) == (1, 2, 4, 8)
    assert scope["q"].grad is not None and scope["q"].grad.abs().sum() > 0


def test_the_section_on_scores_runs():
    (code,) = blocks_after("## Scores: softcap, ALiBi, learned biases")
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the project's own README
    assert scope["rel"].grad is not None and scope["rel"].grad.abs().sum() > 0
    assert scope["slopes"].shape == (4,)


def test_the_section_on_serving_runs():
    code, duo = blocks_after("## Serving: lengths per sequence, offsets, padding, paged caches")
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the project's own README
    out, lens = scope["out"], scope["lens"]
    assert out.shape == (2, 4, 1, 16) and lens.tolist() == [8, 12]
    # the last step against attention over the cached keys of sequence 1 (12 keys, all kept)
    m, kc, vc, pages = scope["m"], scope["k_cache"], scope["v_cache"], scope["pages"]
    keys = kc[pages[1]].permute(1, 0, 2, 3).reshape(4, -1, 16)[None, :, :12]
    vals = vc[pages[1]].permute(1, 0, 2, 3).reshape(4, -1, 16)[None, :, :12]
    want = m.attention(scope["q"][1:2], keys, vals, backend="reference")
    torch.testing.assert_close(out[1:2], want)

    # the DuoAttention step: per sequence, the reference over its valid keys
    exec(compile(duo, "README.md", "exec"), scope)  # noqa: S102
    out, d = scope["out"], scope["duo"]
    q, k, v, valid = scope["q"], scope["k"], scope["v"], scope["valid"]
    assert out.shape == (2, 4, 1, 16)
    want = d.attention(q.double(), k.double(), v.double(), backend="reference",
                       q_lens=torch.tensor([1, 1]), kv_lens=torch.tensor([300, 200]),
                       kv_valid=valid)
    torch.testing.assert_close(out.double(), want, atol=2e-5, rtol=2e-5)
    # sequence 1 by hand: keys 40..199, streaming heads 0-1 keep a window and 4 sinks
    # (the sinks are padding there, so only the window)
    keys = torch.arange(200)
    for h in range(4):
        keep = (keys >= 40) & ((keys >= 199 - 63) | (keys < 4) if h < 2 else True)
        kk, vv = k[1, h // 2, :200][keep].double(), v[1, h // 2, :200][keep].double()
        p = torch.softmax(q[1, h].double() @ kk.T / 4.0, -1)
        torch.testing.assert_close(out[1, h].double(), p @ vv, atol=2e-5, rtol=2e-5)


def test_the_section_on_many_gpus_runs():
    blocks = blocks_after("## Many GPUs: context parallelism")
    scope: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), scope)  # noqa: S102 - the project's own README
    stats = scope["plan"].stats()
    assert stats["recv_tokens_max"] == 1024 and stats["ring_recv_tokens"] == 28672
    assert stats["visited_max"] == 2304 and stats["visited_mean"] == 2268.0
    section = README.read_text().split("## Many GPUs: context parallelism")[1]
    # the command tests/test_distributed.py runs (test_the_torchrun_example_runs)
    assert "torchrun --standalone --nproc-per-node 2 examples/context_parallel.py" in section
