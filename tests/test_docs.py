"""The documentation runs as written.

- docs/language.md: every ```mask block compiles (each mask in it, by name), every
  ```mask-error block raises a MaskError (the exact text when a ```text block follows it),
  every ```python block runs, its table of contents points at its headings, and every row
  of its table of other systems' conventions equals that system's own definition.
- README.md: every ```python block runs as pasted, in a fresh namespace from the repo root
  (blocks tests/test_readme.py and tests/test_hf.py already run, with more checks, are left
  to them; a block preceded by a `<!-- not run: REASON -->` line would be skipped, and
  there are none).
"""

import contextlib
import io
import math
import pathlib
import re

import numpy as np
import pytest
import torch

import maskc
from maskc.frontend.check import mask_names
from maskc.frontend.parser import parse

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
LANGUAGE = ROOT / "docs" / "language.md"

_FENCE = re.compile(r"^```([\w-]*)\n(.*?)^```\s*$", re.DOTALL | re.MULTILINE)
_NOT_RUN = re.compile(r"<!--\s*not run:\s*(.*?)\s*-->\s*$")


def fenced(path: pathlib.Path) -> list[dict]:
    """Every fenced block of ``path``: its language tag, text, first line, the heading of
    its ``## `` section, the line before it, and the next block's tag and text."""
    text = path.read_text()
    blocks = []
    for m in _FENCE.finditer(text):
        before = text[:m.start()]
        heading = next((ln for ln in reversed(before.splitlines()) if ln.startswith("## ")), "")
        prev = before.rstrip("\n").splitlines()[-1] if before.strip() else ""
        blocks.append({"lang": m.group(1), "code": m.group(2), "heading": heading,
                       "line": before.count("\n") + 1, "prev": prev, "start": m.start(),
                       "end": m.end()})
    for a, b in zip(blocks, blocks[1:]):
        a["next"] = (b["lang"], b["code"]) if not text[a["end"]:b["start"]].strip() else None
    if blocks:
        blocks[-1]["next"] = None
    return blocks


def _of(path, lang):
    return [pytest.param(b, id=f"{path.name}:{b['line']}") for b in fenced(path)
            if b["lang"] == lang]


def run_block(code: str, where: str) -> dict:
    scope = {"__name__": "__main__"}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(code, where, "exec"), scope)  # noqa: S102 - the project's own docs
    return scope


# ---------------------------------------------------------------- docs/language.md

@pytest.mark.parametrize("block", _of(LANGUAGE, "mask"))
def test_every_mask_block_compiles(block):
    names = mask_names(parse(block["code"]))
    assert names, f"line {block['line']}: a ```mask block without a mask"
    for name in names:
        maskc.compile(block["code"], name=name)


@pytest.mark.parametrize("block", _of(LANGUAGE, "mask-error"))
def test_every_error_block_fails(block):
    with pytest.raises(maskc.MaskError) as err:
        maskc.compile(block["code"])
    if block["next"] is not None and block["next"][0] == "text":
        assert str(err.value) == block["next"][1].rstrip("\n")


@pytest.mark.parametrize("block", _of(LANGUAGE, "python"))
def test_every_python_block_of_the_language_reference_runs(block, monkeypatch):
    monkeypatch.chdir(ROOT)
    run_block(block["code"], f"docs/language.md:{block['line']}")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to '-'."""
    text = heading.lstrip("#").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def test_the_table_of_contents_points_at_headings():
    text = LANGUAGE.read_text()
    prose = _FENCE.sub("", text)
    anchors = {_slug(ln) for ln in prose.splitlines() if re.match(r"#{1,6} ", ln)}
    links = re.findall(r"\]\(#([^)]+)\)", text)
    assert len(links) >= 16
    assert [a for a in links if a not in anchors] == []


def test_the_readme_links_the_language_reference():
    text = README.read_text()
    assert "(docs/language.md)" in text
    assert "LANGUAGE.md" not in text  # the shared spec is not in the repository


# ---------------------------------------------------------------- conventions table

def convention_rows() -> dict[str, str]:
    """``{system cell: maskc spec}`` of the table in section 16 of docs/language.md."""
    text = LANGUAGE.read_text()
    section = text[text.index("## 16. Other systems' conventions"):]
    rows = {}
    for line in section.splitlines():
        if not line.startswith("| ") or line.startswith("| system") or line.startswith("|---"):
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        assert len(cells) == 3, line
        spec = re.search(r"`([^`]*)`", cells[2]).group(1).replace("\\|", "|")
        assert cells[0] not in rows, f"two rows for {cells[0]}"
        rows[cells[0]] = spec
    return rows


ROWS = convention_rows()


def ours(spec, q_len=None, kv_len=None, heads=1, inputs=None, **params):
    m = maskc.compile(spec, **params)
    return m.dense(q_len, kv_len, heads, **(inputs or {}))


def indices(q_len, kv_len, q_offset=0):
    """Broadcast query and key index tensors, (Lq, 1) and (1, Lk)."""
    return (torch.arange(q_len)[:, None] + q_offset, torch.arange(kv_len)[None, :])


SIZES = [(16, 16), (5, 16), (1, 16)]   # Lq == Lk, a chunk of new queries, one decoding step


def flex_dense(mask_mod, q_len, kv_len=None):
    from torch.nn.attention.flex_attention import create_mask
    return create_mask(mask_mod, None, None, q_len, kv_len or q_len, device="cpu")[0, 0].numpy()


def check_transformers_sliding_causal(spec):
    mu = pytest.importorskip("transformers.masking_utils")
    for W in (1, 2, 5, 16):
        fn = mu.sliding_window_causal_mask_function(W)
        for lq, lk in SIZES:   # transformers' positions are absolute: cache_position
            q, k = indices(lq, lk, lk - lq)
            assert np.array_equal(fn(0, 0, q, k).numpy(), ours(spec, lq, lk, W=W)[0]), (W, lq)
        assert ours(spec, 32, W=W)[0, 31].sum() == W   # W keys, the query's own included


def check_transformers_sliding_bidirectional(spec):
    mu = pytest.importorskip("transformers.masking_utils")
    for W in (0, 1, 3):
        fn = mu.sliding_window_bidirectional_mask_function(W)
        for lq, lk in SIZES:
            q, k = indices(lq, lk, lk - lq)
            assert np.array_equal(fn(0, 0, q, k).numpy(), ours(spec, lq, lk, W=W)[0]), (W, lq)


def check_transformers_chunked(spec):
    mu = pytest.importorskip("transformers.masking_utils")
    for C in (1, 3, 8):
        fn = mu.chunked_causal_mask_function(C, torch.zeros(1, dtype=torch.long))
        for lq, lk in SIZES:
            q, k = indices(lq, lk, lk - lq)
            assert np.array_equal(fn(0, 0, q, k).numpy(), ours(spec, lq, lk, C=C)[0]), (C, lq)


def check_transformers_packed(spec):
    mu = pytest.importorskip("transformers.masking_utils")
    position_ids = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3, 4, 0, 1]])
    ids = mu.find_packed_sequence_indices(position_ids)
    fn = mu.and_masks(mu.causal_mask_function, mu.packed_sequence_mask_function(ids))
    q, k = indices(12, 12)
    want = fn(torch.tensor(0), 0, q, k).numpy()
    assert np.array_equal(want, ours(spec, 12, inputs={"ids": ids[0]})[0])


def flash_rule(q_len, kv_len, causal=False, window=(-1, -1)):
    """FlashAttention's mask as its docstring and its C++ front end define it: query ``i``
    keeps the keys in ``[i + Lk - Lq - left, i + Lk - Lq + right]``, ``-1`` is no limit
    on that side, and ``causal=True`` sets ``right = 0``."""
    left, right = window
    if causal:
        right = 0
    i = np.arange(q_len)[:, None] + kv_len - q_len
    j = np.arange(kv_len)[None, :]
    keep = np.ones((q_len, kv_len), dtype=bool)
    if left >= 0:
        keep &= j >= i - left
    if right >= 0:
        keep &= j <= i + right
    return keep


FLASH_SIZES = [(16, 16), (5, 16), (1, 16), (16, 5)]
WINDOWS = [(0, 0), (3, 0), (2, 5), (0, 4), (20, 1)]


def check_flash_causal(spec):
    for lq, lk in FLASH_SIZES:
        assert np.array_equal(flash_rule(lq, lk, causal=True), ours(spec, lq, lk)[0])


def check_flash_window(spec):
    for left, right in WINDOWS:
        for lq, lk in FLASH_SIZES:
            assert np.array_equal(flash_rule(lq, lk, window=(left, right)),
                                  ours(spec, lq, lk, left=left, right=right)[0])


def check_flash_window_causal(spec):
    for left, right in WINDOWS:
        for lq, lk in FLASH_SIZES:
            assert np.array_equal(flash_rule(lq, lk, True, (left, right)),
                                  ours(spec, lq, lk, left=left, right=right)[0])


def check_flash_left_only(spec):
    for left in (0, 2, 7):
        for lq, lk in FLASH_SIZES:
            assert np.array_equal(flash_rule(lq, lk, window=(left, -1)),
                                  ours(spec, lq, lk, left=left)[0])


def check_flash_right_only(spec):
    for right in (0, 2, 7):
        for lq, lk in FLASH_SIZES:
            assert np.array_equal(flash_rule(lq, lk, window=(-1, right)),
                                  ours(spec, lq, lk, right=right)[0])


def attend(q, k, v, bias):
    """Plain float64 attention with an additive bias (``-inf``: dropped)."""
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + bias
    return torch.softmax(s, dim=-1) @ v


def check_flash_alibi(spec):
    H = 4
    slopes = torch.tensor([0.5, 0.25, 0.125, 0.0625], dtype=torch.float64)
    m = maskc.compile(spec)
    for lq, lk in [(12, 12), (5, 12)]:
        q = torch.randn(1, H, lq, 8, dtype=torch.float64)
        k, v = (torch.randn(1, H, lk, 8, dtype=torch.float64) for _ in range(2))
        i = torch.arange(lq)[:, None] + lk - lq
        j = torch.arange(lk)[None, :]
        bias = -slopes[:, None, None] * (i - j).abs()       # FlashAttention's alibi_slopes
        torch.testing.assert_close(m.attention(q, k, v, backend="reference", slopes=slopes),
                                   attend(q, k, v, bias))


def natten_window_start(i, n, K, d):
    """NATTEN's ``get_window_start`` (its naive CPU kernels): the first key of query ``i``'s
    window on an axis of size ``n``, odd kernel ``K``, dilation ``d``; keys ``start + t * d``."""
    ns = K // 2
    if d <= 1:
        return max(i - ns, 0) + (i + ns >= n) * (n - i - ns - 1)
    if i - ns * d < 0:
        return i % d
    if i + ns * d >= n:
        imodd = i % d
        a = (n // d) * d
        b = n - a
        return n - b + imodd - 2 * ns * d if imodd < b else a + imodd - K * d
    return i - ns * d


def natten_axis(n, K, S, d, causal):
    """One axis of NATTEN's generalized neighborhood attention, (n, n) booleans: the classic
    window start for odd kernels without stride or causality, GNA's rule otherwise."""
    keep = np.zeros((n, n), dtype=bool)
    for i in range(n):
        if K % 2 == 1 and S == 1 and not causal:
            start = natten_window_start(i, n, K, d)
            keep[i, [start + t * d for t in range(K)]] = True
            continue
        g, qi = i % d, i // d
        ng = len(range(g, n, d))
        for kj in range(g, n, d):
            kk = kj // d
            if causal:
                last = min((qi // S) * S + S - 1, ng - 1)
                keep[i, kj] = kk <= qi and last - kk < K
            else:
                left, right = K // 2, K // 2 + K % 2 - 1
                center = min(max(min((qi // S) * S + S // 2, ng - 1), left), ng - 1 - right)
                keep[i, kj] = center - left <= kk <= center + right
    return keep


NATTEN_CASES = [  # (X, Y), kernel, stride, dilation, is_causal
    ((9, 7), 3, 1, 1, False), ((9, 7), (5, 3), 1, (1, 2), False),
    ((12, 8), 7, 1, (1, 1), False), ((10, 10), 3, 1, 3, False),
    ((8, 8), (4, 2), (2, 1), 1, False), ((12, 6), (6, 3), (3, 3), (2, 1), False),
    ((8, 8), 3, 1, 1, (True, False)), ((9, 6), (4, 3), (2, 1), (2, 1), (True, True)),
]


def _tup(v):
    return v if isinstance(v, tuple) else (v, v)


def check_natten(spec):
    for (X, Y), K, S, D, C in NATTEN_CASES:
        per = [natten_axis(n, *cfg) for n, *cfg in zip((X, Y), _tup(K), _tup(S), _tup(D),
                                                        _tup(C))]
        want = (per[0][:, None, :, None] & per[1][None, :, None, :]).reshape(X * Y, X * Y)
        got = ours(spec, X=X, Y=Y, K=K, S=S, D=D, C=C)[0]
        assert np.array_equal(want, got), ((X, Y), K, S, D, C)


def check_flex_raw_causal(spec):
    for lq, lk in [(8, 8), (5, 12), (12, 5)]:
        want = flex_dense(lambda b, h, q, k: q >= k, lq, lk)
        assert np.array_equal(want, ours(spec, lq, lk)[0])
    assert np.array_equal(ours(spec, 8)[0], ours("mask c = causal", 8)[0])


def check_flex_aligned_causal(spec):
    for lq, lk in [(8, 8), (5, 12), (12, 5), (1, 9)]:
        want = flex_dense(lambda b, h, q, k: q + (lk - lq) >= k, lq, lk)
        assert np.array_equal(want, ours(spec, lq, lk)[0])


def check_gym_sliding(spec):
    from attn_gym.masks import generate_sliding_window
    for W in (0, 1, 5):
        assert np.array_equal(flex_dense(generate_sliding_window(W), 24), ours(spec, 24, W=W)[0])


def check_gym_prefix(spec):
    from attn_gym.masks import generate_prefix_lm_mask
    for n in (0, 1, 7):
        assert np.array_equal(flex_dense(generate_prefix_lm_mask(n), 20), ours(spec, 20, n=n)[0])


LENGTHS = [5, 1, 9, 3, 6]   # packed documents, 24 tokens


def check_flex_documents(spec):
    document_id = torch.repeat_interleave(torch.arange(len(LENGTHS)), torch.tensor(LENGTHS))
    want = flex_dense(lambda b, h, q_idx, kv_idx: document_id[q_idx] == document_id[kv_idx], 24)
    assert np.array_equal(want, ours(spec, 24, inputs={"document_id": document_id})[0])


def _gym_docs(inner):
    from attn_gym.masks.document_mask import generate_doc_mask_mod, length_to_offsets
    return flex_dense(generate_doc_mask_mod(inner, length_to_offsets(LENGTHS, "cpu")), 24)


def check_gym_doc_causal(spec):
    from attn_gym.masks import causal_mask
    assert np.array_equal(_gym_docs(causal_mask),
                          ours(spec, 24, inputs={"doc": maskc.document_ids(LENGTHS)})[0])


def check_gym_doc_sliding(spec):
    from attn_gym.masks import generate_sliding_window
    for W in (0, 2):
        assert np.array_equal(_gym_docs(generate_sliding_window(W)), ours(
            spec, 24, inputs={"doc": maskc.document_ids(LENGTHS)}, W=W)[0])


def check_gym_dilated(spec):
    from attn_gym.masks import generate_dilated_sliding_window
    for W, d in [(4, 2), (5, 2), (9, 3), (3, 1)]:
        assert np.array_equal(flex_dense(generate_dilated_sliding_window(W, d), 30),
                              ours(spec, 30, W=W, d=d)[0])


def check_gym_global(spec):
    from attn_gym.masks import generate_global_sliding_window
    is_global = torch.zeros(24, dtype=torch.bool)
    is_global[[0, 9]] = True
    for W in (0, 3):
        assert np.array_equal(flex_dense(generate_global_sliding_window(W, is_global), 24),
                              ours(spec, 24, W=W, G=[0, 9])[0])


def check_gym_natten(spec):
    from attn_gym.masks import generate_natten
    for N, K in [(6, 3), (9, 5), (7, 7)]:
        assert np.array_equal(flex_dense(generate_natten(N, N, K, K), N * N),
                              ours(spec, N=N, K=K)[0])


def _flex_eager(q, k, v, score_mod, mask_mod=None):
    import warnings
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    n = q.shape[2]
    block = create_block_mask(mask_mod, None, None, n, n, device="cpu") if mask_mod else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "flex_attention called without torch.compile()"
        return flex_attention(q, k, v, score_mod=score_mod, block_mask=block)


def check_gym_softcap(spec):
    from attn_gym.mods.softcapping import generate_tanh_softcap
    q, k, v = (torch.randn(1, 2, 16, 8) * 3 for _ in range(3))
    for c in (1.0, 4.0):
        torch.testing.assert_close(
            maskc.compile(spec, c=c).attention(q, k, v, backend="reference"),
            _flex_eager(q, k, v, generate_tanh_softcap(c)), atol=1e-5, rtol=1e-5)


def check_gym_alibi(spec):
    from attn_gym.masks import causal_mask
    from attn_gym.mods.alibi import generate_alibi_bias
    H = 4
    q, k, v = (torch.randn(1, H, 16, 8) for _ in range(3))
    want = _flex_eager(q, k, v, generate_alibi_bias(H), causal_mask)
    got = maskc.compile(spec).attention(q, k, v, backend="reference",
                                        slopes=maskc.alibi_slopes(H))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


CONVENTIONS = {
    "transformers `sliding_window = W`, causal layers (Mistral, Gemma's local layers)":
        check_transformers_sliding_causal,
    "transformers `sliding_window = W`, bidirectional layers": check_transformers_sliding_bidirectional,
    "transformers `attention_chunk_size = C` (Llama 4)": check_transformers_chunked,
    "transformers packed sequences (`position_ids` restarting at 0)": check_transformers_packed,
    "FlashAttention `causal=True`": check_flash_causal,
    "FlashAttention `window_size=(left, right)`": check_flash_window,
    "FlashAttention `window_size=(left, right)`, `causal=True`": check_flash_window_causal,
    "FlashAttention `window_size=(left, -1)`": check_flash_left_only,
    "FlashAttention `window_size=(-1, right)`": check_flash_right_only,
    "FlashAttention `alibi_slopes`": check_flash_alibi,
    "NATTEN `na2d(q, k, v, kernel_size=K, stride=S, dilation=D, is_causal=C)` on "
    "`(B, X, Y, heads, D)`": check_natten,
    "FlexAttention `q_idx >= kv_idx`": check_flex_raw_causal,
    "FlexAttention `q_idx + (Lk - Lq) >= kv_idx`": check_flex_aligned_causal,
    "attention-gym `generate_sliding_window(W)`": check_gym_sliding,
    "attention-gym `generate_prefix_lm_mask(n)`": check_gym_prefix,
    "FlexAttention document masking `document_id[q_idx] == document_id[kv_idx]`":
        check_flex_documents,
    "attention-gym `generate_doc_mask_mod(causal_mask, offsets)`": check_gym_doc_causal,
    "attention-gym `generate_doc_mask_mod(generate_sliding_window(W), offsets)`":
        check_gym_doc_sliding,
    "attention-gym `generate_dilated_sliding_window(W, d)`": check_gym_dilated,
    "attention-gym `generate_global_sliding_window(W, is_global)`": check_gym_global,
    "attention-gym `generate_natten(N, N, K, K)`, odd `K`": check_gym_natten,
    "attention-gym `generate_tanh_softcap(c)`": check_gym_softcap,
    "attention-gym `generate_alibi_bias(H)`, with a causal `mask_mod`": check_gym_alibi,
}


def test_every_convention_row_is_checked():
    assert sorted(ROWS) == sorted(CONVENTIONS)


@pytest.mark.parametrize("system", sorted(ROWS))
def test_convention(system):
    if system not in CONVENTIONS:
        pytest.fail(f"no check for the row {system!r}: add one to CONVENTIONS")
    torch.manual_seed(0)
    CONVENTIONS[system](ROWS[system])


# ---------------------------------------------------------------- README.md

# Sections whose first blocks other tests run (with more checks than "it runs", and the GPU
# training step shrunk): {heading: (test file, its test, how many blocks)}.
RUN_ELSEWHERE = {
    "## Masks chosen from the content":
        ("test_readme.py", "test_the_section_on_chosen_masks_runs", 2),
    "## Scores: softcap, ALiBi, learned biases":
        ("test_readme.py", "test_the_section_on_scores_runs", 1),
    "## Serving: lengths per sequence, offsets, padding, paged caches":
        ("test_readme.py", "test_the_section_on_serving_runs", 2),
    "## Many GPUs: context parallelism":
        ("test_readme.py", "test_the_section_on_many_gpus_runs", 1),
    "## Hugging Face transformers": ("test_hf.py", "test_the_readme_section_runs", 1),
}
NOT_RUN_AT_MOST = 0   # blocks marked `<!-- not run: REASON -->` in README.md


def test_every_readme_python_block_runs(monkeypatch):
    monkeypatch.chdir(ROOT)
    blocks = [b for b in fenced(README) if b["lang"] == "python"]
    assert len(blocks) >= 10
    seen: dict[str, int] = {}
    skipped = []
    for b in blocks:
        where = f"README.md:{b['line']}"
        compile(b["code"], where, "exec")   # every block is valid Python
        n = seen[b["heading"]] = seen.get(b["heading"], 0) + 1
        if b["heading"] in RUN_ELSEWHERE and n <= RUN_ELSEWHERE[b["heading"]][2]:
            file, test, _ = RUN_ELSEWHERE[b["heading"]]
            other = (ROOT / "tests" / file).read_text()
            assert f"def {test}(" in other and b["heading"][3:] in other, (where, file, test)
            continue
        reason = _NOT_RUN.match(b["prev"])
        if reason:
            assert reason.group(1), f"{where}: say why the block is not run"
            skipped.append(where)
            continue
        try:
            run_block(b["code"], where)
        except Exception as err:
            raise AssertionError(f"the block at {where} fails as pasted: "
                                 f"{type(err).__name__}: {err}") from err
    for heading, (_, test, count) in RUN_ELSEWHERE.items():
        assert seen.get(heading, 0) >= count, f"{heading!r} has fewer blocks than {test} runs"
    assert len(skipped) <= NOT_RUN_AT_MOST, skipped
