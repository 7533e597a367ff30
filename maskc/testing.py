"""A property-testing kit for attention kernels: theirs and ours, against the dense reference.

``specs()`` draws `.mask` sources, ``shapes()`` attention shapes, ``runtime_inputs()`` the
inputs a mask needs; ``assert_attention_matches(fn, mask, ...)`` checks any attention
function against maskc's float64 reference, forward and backward::

    from hypothesis import given
    from maskc.testing import specs, shapes, assert_attention_matches

    @given(src=specs(), shape=shapes())
    def test_my_kernel(src, shape):
        mask = maskc.compile(src)
        assert_attention_matches(lambda q, k, v, **kw: my_attention(q, k, v, mask, **kw),
                                 mask, **shape)

Needs numpy and torch; the strategies need hypothesis (the ``test`` extra), imported only when
one is built, so ``runtime_inputs`` and ``assert_attention_matches`` (``maskc compile --arch``,
``maskc test``) work without it.
"""

from __future__ import annotations

import functools
import inspect

import numpy as np

from maskc.api import Mask, compile

__all__ = ["specs", "primitive_specs", "chosen_specs", "shapes", "runtime_inputs",
           "peak_rss_mib", "reset_peak_rss",
           "assert_attention_matches", "DEFAULT_TOLERANCES"]

# (atol, rtol) per dtype for outputs and gradients against the float64 reference
DEFAULT_TOLERANCES = {"float64": (1e-9, 1e-9), "float32": (2e-4, 2e-4),
                      "float16": (2e-2, 2e-2), "bfloat16": (6e-2, 6e-2)}


def _composite(fn):
    """``hypothesis.strategies.composite``, applied when a strategy is asked for.

    NOTE: hypothesis is only in the ``test`` extra; a module-level import would make every
    CLI command that reaches this module (``compile --arch`` reads ``runtime_inputs``) need it.
    """
    @functools.wraps(fn)
    def strategy(*args, **kwargs):
        from hypothesis import strategies as st
        return st.composite(fn)(*args, **kwargs)
    sig = inspect.signature(fn)
    strategy.__signature__ = sig.replace(parameters=list(sig.parameters.values())[1:])
    return strategy


@_composite
def primitive_specs(draw, runtime: bool = True) -> str:
    """One primitive of docs/language.md section 4 with small random parameters, as source text."""
    from hypothesis import strategies as st
    n = st.integers(0, 12)
    pos = st.integers(1, 12)
    options = [
        st.just("causal"), st.just("all"),
        st.builds("window({})".format, n),
        st.builds("window(before = {}, after = {})".format, n, n),
        st.builds("window({}, dilation = {})".format, n, st.integers(1, 3)),
        st.builds("global([{}, {}])".format, n, st.integers(0, 40)),
        st.builds("global({}..{})".format, n, st.integers(0, 20)),
        st.builds("sink({})".format, n), st.builds("prefix({})".format, n),
        st.builds("chunk({})".format, pos), st.builds("strided({})".format, pos),
        st.builds(lambda s, c: f"fixed({s}, {min(c, s)})", pos, n),
        st.builds("where (p - k) % {} == 0".format, pos),
        st.builds("where k + {} >= q and h < 3".format, n),
        st.builds("blocks({}, window(1) | global([0]))".format, st.sampled_from([4, 8, 16])),
        st.builds("heads {{ 0: window({}), _: causal }}".format, n),
    ]
    if runtime:
        options += [st.just("same(doc)"),
                    st.builds("within(doc, causal & window(before = {}, after = 0))".format, n)]
    return draw(st.one_of(options))


@_composite
def specs(draw, max_terms: int = 3, runtime: bool = True) -> str:
    """A `.mask` file with one mask ``m`` combining primitives with ``~ - & |``."""
    from hypothesis import strategies as st
    terms = [draw(primitive_specs(runtime=runtime))
             for _ in range(draw(st.integers(1, max_terms)))]
    expr = terms[0]
    for t in terms[1:]:
        op = draw(st.sampled_from(["|", "&", "-"]))
        expr = f"({expr}) {op} {draw(st.sampled_from(['', '~']))}({t})"
    params = "(input doc)" if runtime and "doc" in expr else ""
    return f"mask m{params} = {expr}\n"


@_composite
def chosen_specs(draw, max_terms: int = 2) -> str:
    """A mask ``m`` mixing static primitives with a selection, keys or diagonals
    (docs/language.md section 10), composed as the content-chosen methods do: the chosen part
    ``|``-ed with static structure, the whole ``&``-ed with more (``runtime_inputs`` makes
    the inputs it reads)."""
    from hypothesis import strategies as st
    chosen = draw(st.lists(st.sampled_from(["blocks({}, select(idx))", "keys(cols)",
                                            "diagonals(diags)"]), min_size=1, max_size=3,
                           unique=True))
    block = draw(st.sampled_from([1, 4, 8, 16]))
    parts = [c.format(block) for c in chosen]
    parts += [draw(primitive_specs(runtime=False)) for _ in range(draw(st.integers(0, 1)))]
    expr = " | ".join(f"({p})" for p in parts)
    for _ in range(draw(st.integers(0, max_terms - 1))):
        expr = f"({draw(primitive_specs(runtime=False))}) & ({expr})"
    names = [n for n in ("idx", "cols", "diags") if f"({n})" in expr]
    return f"mask m({', '.join('input ' + n for n in names)}) = {expr}\n"


@_composite
def shapes(draw, max_len: int = 96, dtypes=("float32",), max_heads: int = 4) -> dict:
    """``batch, heads, kv_heads, q_len, kv_len, head_dim, dtype`` (GQA/MQA included)."""
    from hypothesis import strategies as st
    kv_heads = draw(st.integers(1, max(1, max_heads // 2)))
    return {
        "batch": draw(st.integers(1, 2)),
        "kv_heads": kv_heads,
        "heads": kv_heads * draw(st.integers(1, max(1, max_heads // kv_heads))),
        "q_len": draw(st.integers(1, max_len)),
        "kv_len": draw(st.integers(1, max_len)),
        "head_dim": draw(st.sampled_from([16, 32])),
        "dtype": draw(st.sampled_from(list(dtypes))),
    }


def runtime_inputs(mask: Mask, kv_len: int, seed: int = 0) -> dict:
    """Inputs for every ``input`` of ``mask``: packed-document ids of random lengths; for a
    selection, 3 random key blocks (or padding) per query block, and 5 random keys or
    diagonals for a list (docs/language.md section 10), the same for every head; for a float input
    of the score (section 9), a float32 torch tensor of 8 random entries per axis (indices
    past them are clamped)."""
    from maskc.ir.inputs import input_kinds
    from maskc.ir.scores import float_inputs
    rng = np.random.default_rng(seed)
    out = {}
    if mask.ir.score is not None:
        import torch
        for name, rank in float_inputs(mask.ir.score).items():
            out[name] = torch.from_numpy(rng.standard_normal((8,) * rank).astype(np.float32) * 0.5)
    for name, kind in input_kinds(mask.ir).items():
        if kind.kind == "select":
            nb = kind.rows(kv_len, mask.ir.grid)
            out[name] = rng.integers(-1, nb, (nb, min(3, nb)))
            continue
        if kind.kind == "keys":
            out[name] = rng.integers(-1, kv_len, 5)
            continue
        cuts = np.sort(rng.choice(np.arange(1, kv_len), size=min(3, kv_len - 1), replace=False)) \
            if kv_len > 1 else np.zeros(0, dtype=int)
        out[name] = np.searchsorted(cuts, np.arange(kv_len), side="right")
    return out


def assert_attention_matches(fn, mask, batch: int = 1, heads: int = 2, kv_heads: int | None = None,
                             q_len: int | None = None, kv_len: int | None = None,
                             head_dim: int = 32, dtype: str = "float32", inputs: dict | None = None,
                             grad: bool = True, lse: bool = True, seed: int = 0,
                             tolerances: tuple[float, float] | None = None, device: str = "cpu"):
    """Check ``fn(q, k, v, **inputs)`` (returning ``out`` or ``(out, lse)``) against the reference.

    ``mask`` is a :class:`maskc.Mask` or source text. Compares the output (and the
    log-sum-exp when ``fn`` returns it, with ``-inf`` on rows that keep nothing), then, if
    ``grad``, the gradients of a random linear loss against float64 autograd through the
    reference. Raises ``AssertionError`` naming the first mismatch; else returns the largest
    absolute error of each result it compared (``{"output": ..., "lse": ..., "dq": ...}``).
    """
    import torch

    if not isinstance(mask, Mask):
        mask = compile(mask)
    if mask.grid is not None:
        q_len = kv_len = int(np.prod(mask.grid))
    q_len = q_len or 64
    kv_len = kv_len or q_len
    kv_heads = kv_heads or heads
    inputs = runtime_inputs(mask, kv_len, seed) if inputs is None else inputs
    atol, rtol = tolerances or DEFAULT_TOLERANCES[dtype]
    gen = torch.Generator().manual_seed(seed)
    tdtype = getattr(torch, dtype)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    q64, k64 = rand(batch, heads, q_len, head_dim), rand(batch, kv_heads, kv_len, head_dim)
    v64 = rand(batch, kv_heads, kv_len, head_dim)
    leaves = [t.to(device=device, dtype=tdtype).requires_grad_(grad) for t in (q64, k64, v64)]
    # float inputs of a score: their gradients are checked too
    floats = {n: x for n, x in inputs.items() if isinstance(x, torch.Tensor)
              and x.is_floating_point()}
    f_leaves = {n: x.detach().to(device=device, dtype=torch.float32).requires_grad_(grad)
                for n, x in floats.items()}
    f_refs = {n: x.detach().double().requires_grad_(grad) for n, x in floats.items()}
    got = fn(*leaves, **{**inputs, **f_leaves})
    got_out, got_lse = (got if isinstance(got, tuple) else (got, None))
    refs = [t.clone().requires_grad_(grad) for t in (q64, k64, v64)]
    ref_out, ref_lse = mask.attention(*refs, backend="reference", return_lse=True,
                                      **{**inputs, **f_refs})

    errors: dict[str, float] = {}

    def close(name, a, b):
        a = a.detach().double().cpu()
        if torch.isnan(a).any():
            raise AssertionError(f"{name}: NaN in the result")
        err = (a - b.detach()).abs().max().item() if a.numel() else 0.0
        if not torch.allclose(a, b.detach(), atol=atol, rtol=rtol):
            raise AssertionError(f"{name}: max abs error {err:.3g} over atol {atol}, rtol {rtol}")
        errors[name] = err

    close("output", got_out, ref_out)
    if lse and got_lse is not None:
        empty = torch.isinf(ref_lse)
        if not torch.equal(torch.isinf(got_lse.detach().cpu()) & (got_lse.detach().cpu() < 0),
                           empty):
            raise AssertionError("lse: rows that keep nothing must be exactly -inf, and only they")
        close("lse", torch.where(empty, 0, got_lse.detach().cpu().double()),
              torch.where(empty, 0, ref_lse))
    if grad:
        w = rand(*ref_out.shape)
        (got_out.double().cpu() * w).sum().backward()
        (ref_out * w).sum().backward()
        # NOTE: a leaf the output does not depend on (a score without s) has no gradient
        pairs = [(name, a, b) for name, a, b in zip(("dq", "dk", "dv"), leaves, refs)]
        pairs += [(f"d{n}", f_leaves[n], f_refs[n]) for n in floats]
        for name, a, b in pairs:
            close(name, a.grad if a.grad is not None else torch.zeros_like(a),
                  b.grad if b.grad is not None else torch.zeros_like(b))
    return errors


def _status(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> None:
    """Start :func:`peak_rss_mib` afresh (Linux: ``/proc/self/clear_refs``; else a no-op)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_mib() -> float:
    """This process's peak resident memory (MiB) since it started or
    :func:`reset_peak_rss`.

    NOTE: from ``/proc/self/status`` (``VmHWM``) where Linux has it: ``getrusage``'s
    ``ru_maxrss`` carries over the peak of the process a child was forked from (exec keeps
    it), so a child of a 4 GB test runner reported 4 GB however little it used.
    """
    hwm = _status("VmHWM")
    if hwm is not None:
        return hwm
    import resource
    import sys
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024
