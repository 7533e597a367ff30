"""Hugging Face transformers drop-in: ``maskc.hf.register()`` (the README).

``register(name)`` adds two functions to transformers under ``name``: an attention function
(``AttentionInterface``) and a mask function (``AttentionMaskInterface``). The mask function
builds no mask: it returns a :class:`Layout` with what transformers worked out for the call
(query and key lengths, the absolute positions of the first query and key from the cache,
the 2-D padding mask). The attention function then reads the layer's own pattern from the
module and its arguments (causal or not, ``sliding_window``, chunked layers, ``softcap``,
packed sequences from ``position_ids``), compiles it once as a maskc spec, and runs
``Mask.attention`` with the offsets and ``kv_valid`` of the layout. A given ``Mask`` (or
``layer_idx -> Mask``) replaces the model's pattern; padding and caches still apply.

transformers is an optional dependency (``pip install maskc[hf]``), imported on
``register``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from maskc.errors import MaskError, MaskTypeError

__all__ = ["register", "Layout", "spec_for"]

_lock = threading.Lock()
_compiled: dict = {}


@dataclass
class Layout:
    """What transformers' mask creation knew about one call: passed to the attention
    function in place of a mask. ``padding``: bool ``(B, >= kv_offset + kv_length)`` (True
    = a real token) or ``None``."""

    q_length: int
    kv_length: int
    q_offset: int
    kv_offset: int
    padding: object = None
    documents: object = None  # (B, L) sequence ids of packed sequences, or None

    @property
    def shape(self):  # transformers checks len(mask.shape) == 4 for prepared masks
        return (self.q_length, self.kv_length)


def spec_for(causal: bool = True, sliding_window=None, chunk=None, softcap=None,
             packed: bool = False) -> str:
    """The maskc spec of a transformers layer: ``sliding_window = W`` keeps the ``W`` keys
    up to the query (``kv_idx > q_idx - W``), so ``window(before = W - 1, after = 0)``."""
    terms = ["causal"] if causal else []
    if sliding_window is not None:
        w = int(sliding_window)
        terms.append(f"window(before = {w - 1}, after = {0 if causal else w - 1})")
    if chunk is not None:
        terms.append(f"chunk({int(chunk)})")
    if packed:
        terms.append("same(doc)")
    body = " & ".join(terms) or "true"
    head = "mask hf(input doc)" if packed else "mask hf"
    score = f" with softcap({float(softcap)!r})" if softcap is not None else ""
    return f"{head} = {body}{score}"


def _mask(spec: str):
    import maskc
    with _lock:
        if spec not in _compiled:
            _compiled[spec] = maskc.compile(spec)
        return _compiled[spec]


def register(name: str = "maskc", mask=None, backend: str = "auto") -> str:
    """Register maskc with transformers under ``name`` (use it as
    ``attn_implementation=name``); ``mask``: ``None`` (each layer's own pattern), a
    :class:`maskc.Mask`, or a function ``layer_idx -> Mask``. Returns ``name``."""
    import maskc
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface
    except ImportError as err:
        raise MaskError("maskc.hf needs Hugging Face transformers: pip install "
                        "'maskc[hf]' (or pip install 'transformers>=5.0')") from err
    if not isinstance(name, str) or not name:
        raise MaskTypeError(f"name must be a non-empty str, got {name!r}")
    if mask is not None and not isinstance(mask, maskc.Mask) and not callable(mask):
        raise MaskTypeError(f"mask must be None, a maskc.Mask or a function layer_idx -> "
                            f"Mask, got {type(mask).__name__}")
    backends = ("auto", "reference", "flex", "flex-eager", "triton")
    if backend not in backends:
        raise MaskError(f"unknown backend {backend!r}; available: {', '.join(backends)}")

    def mask_function(batch_size, q_length, kv_length, q_offset=0, kv_offset=0,
                      mask_function=None, attention_mask=None, **kwargs):
        import torch
        padding = attention_mask
        if padding is not None:
            padding = padding.to(torch.bool)
        if isinstance(q_offset, torch.Tensor):
            q_offset = int(q_offset)
        docs = None
        if mask_function is not None and q_offset == 0 and kv_offset == 0 and \
                q_length == kv_length > 1:
            docs = _documents(mask_function, batch_size, q_length, kwargs.get("device"))
        return Layout(int(q_length), int(kv_length), int(q_offset), int(kv_offset), padding,
                      docs)

    def attention_function(module, query, key, value, attention_mask, dropout=0.0,
                           scaling=None, **kwargs):
        return _attend(module, query, key, value, attention_mask, dropout, scaling, mask,
                       backend, kwargs)

    AttentionInterface.register(name, attention_function)
    AttentionMaskInterface.register(name, mask_function)
    return name


def _documents(mask_function, batch: int, n: int, device):
    """Packed sequences as transformers found them (from ``position_ids``, without a
    cache): its mask function drops ``(t, t - 1)`` exactly where a sequence starts (a
    window keeps it, as does a causal mask), so sequence ids are the running count of those
    starts. ``None`` when there is one sequence per row (or the function is not
    index-based)."""
    import torch
    b = torch.arange(batch, device=device).view(-1, 1)
    t = torch.arange(1, n, device=device).view(1, -1)
    try:
        with torch.no_grad():
            keep = mask_function(b, torch.zeros_like(b), t, t - 1)
            keep = torch.as_tensor(keep, device=device).expand(batch, n - 1)
    except Exception:  # noqa: BLE001 - a vmap-only mask function: no packing info
        return None
    start = torch.cat([torch.zeros(batch, 1, dtype=torch.long, device=device),
                       (~keep.bool()).long()], dim=1)
    if not start.any():
        return None
    return start.cumsum(-1)


def _attend(module, query, key, value, layout, dropout, scaling, given, backend, kwargs):
    import torch
    import maskc
    if dropout:
        raise MaskError(f"maskc.hf: attention dropout ({dropout}) is not supported; set the "
                        f"model's attention_dropout to 0")
    if isinstance(layout, torch.Tensor):
        raise MaskError("maskc.hf got a prepared 4-D attention mask; pass a 2-D padding "
                        "mask (or none) so maskc builds the pattern")
    B, _, Lq, _ = query.shape
    Lk = key.shape[2]
    layer = getattr(module, "layer_idx", None)
    config = getattr(module, "config", None)
    if layout is None:
        layout = Layout(Lq, Lk, Lk - Lq, 0, None)
    inputs = {}
    if given is not None:
        m = given if isinstance(given, maskc.Mask) else given(layer)
        if not isinstance(m, maskc.Mask):
            raise MaskTypeError(f"mask(layer_idx={layer}) must return a maskc.Mask, got "
                                f"{type(m).__name__}")
    else:
        window = kwargs.get("sliding_window", getattr(module, "sliding_window", None))
        chunk = None
        types = getattr(config, "layer_types", None)
        if types is not None and layer is not None and layer < len(types) and \
                types[layer] == "chunked_attention":
            chunk = getattr(config, "attention_chunk_size", None)
        packed = layout.documents if getattr(module, "is_causal", True) else None
        causal = getattr(module, "is_causal", True)
        m = _mask(spec_for(causal, window, chunk, kwargs.get("softcap"), packed is not None))
        if packed is not None:
            inputs["doc"] = packed
    seq = {}
    if layout.padding is not None or layout.kv_offset or layout.q_offset != Lk - Lq:
        seq = {"q_offset": layout.q_offset, "kv_offset": layout.kv_offset}
        if layout.padding is not None:
            pad = layout.padding
            need = layout.kv_offset + Lk
            if pad.shape[-1] < need:
                pad = torch.nn.functional.pad(pad, (0, need - pad.shape[-1]))
            seq["kv_valid"] = pad[:, layout.kv_offset:need].to(query.device)
            if B != pad.shape[0]:
                seq["kv_valid"] = seq["kv_valid"].expand(B, -1)
    out = m.attention(query, key, value, scale=scaling, backend=backend, **seq, **inputs)
    return out.transpose(1, 2).contiguous(), None
