"""Block-sparse prefill: a prompt's attention under a tri-shape block mask, through FlexAttention.

A dense prefill lets every query read every earlier key, so its attention grows as ``n^2`` and is
most of a long prompt's arithmetic (about 73% of SmolLM2's at 16K tokens, counted from its
shapes). Under ``sparse_prefill="trishape"`` a prompt's query reads only:

* the first :data:`SINK` tokens (the attention sinks every query leans on),
* the ``sparse_local`` tokens right before it,
* everything, when it is one of the prompt's last rows: the observation window (and a probe fed
  in the same forward), which therefore attends densely.

Those are MInference's A-shape with a dense last band (OpenVINO GenAI calls it tri-shape). Because
the window attends densely, a window scorer's observation queries (ReST-KV's included) see the
exact attention over the keys the sparse forward produced; the keys themselves differ from a
dense prefill's wherever earlier layers attended sparsely, so the kept set can differ (measured,
not assumed: ``benchmarks/results/sparse-prefill``).

Only a forward that fills a fresh cache in one piece goes sparse (a one-pass prompt, or the first
chunk of a streamed one); later chunks, questions and decoding steps attend densely, and
sliding-window layers keep their own window. It runs on PyTorch's FlexAttention, compiled, with
blocks of :data:`BLOCK` tokens: on this machine flex costs 1.5-1.7x SDPA for the same causal work
and 0.30x SDPA when it keeps 16% of the blocks (``benchmarks/results/flex-vs-sdpa``), so a prompt
whose mask would keep almost every block is left to SDPA. Each padded length compiles once per
process (5-11 s here); lengths are padded up to shared sizes so nearby prompts share a graph.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from ._compat.torch_inductor import raise_recompile_limit
from ._compat.transformers_config import attention_implementation, set_attention_implementation
from .adapters import is_sliding

#: the patterns ``sparse_prefill`` takes
PATTERNS = ("trishape",)
#: the attention implementation a model runs under while a press with ``sparse_prefill`` holds it
SPARSE_ATTENTION = "restkv_sparse_prefill"
#: the keyword that carries a forward's :class:`TriShape` to every attention layer
LAYOUT_KEYWORD = "restkv_sparse_layout"
#: tokens per block of the mask (FlexAttention's default block size)
BLOCK = 128
#: the leading tokens every query reads
SINK = BLOCK
#: a mask that keeps more than this share of the causal blocks is left to SDPA: flex does the
#: same work 1.5-1.7x slower here, so below about 0.6 it starts to pay, and the margin covers
#: the padding and the projections, which sparsity does not touch
MAX_KEPT_SHARE = 0.45


@dataclass(frozen=True)
class TriShape:
    """Which keys a prompt of ``tokens`` tokens reads: sinks, ``local`` before each query, and
    everything for its last ``dense_tail`` rows."""

    tokens: int
    local: int
    dense_tail: int
    sink: int = SINK

    def allows(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Whether query ``q`` reads key ``k`` (index tensors; keys past the prompt never)."""
        causal = (k <= q) & (k < self.tokens)
        return causal & ((k < self.sink) | (q - k < self.local) | (q >= self.tokens - self.dense_tail))

    def dense_mask(self) -> torch.Tensor:
        """The ``[tokens, tokens]`` boolean mask (for checks; the forward uses block masks)."""
        index = torch.arange(self.tokens)
        return self.allows(index[:, None], index[None, :])

    def kept_share(self) -> float:
        """The share of the causal query-key pairs the mask keeps (block granularity aside)."""
        n = self.tokens
        return float(self.dense_mask().sum()) / (n * (n + 1) / 2)


def layout_for(tokens: int, local: int, dense_tail: int) -> TriShape | None:
    """The tri-shape of a ``tokens``-token forward, or None when it would keep so much that SDPA's
    dense attention is faster."""
    if tokens <= SINK + local + dense_tail:
        return None
    # the kept share without building the mask: sinks, a local band and a dense tail of a triangle
    n, body = tokens, tokens - dense_tail
    kept = body * min(local, body) - min(local, body) * (min(local, body) - 1) / 2  # the local band
    kept += max(body - local, 0) * SINK  # sinks outside the band
    kept += dense_tail * (2 * n - dense_tail + 1) / 2  # the tail's rows, whole
    if kept / (n * (n + 1) / 2) > MAX_KEPT_SHARE:
        return None
    return TriShape(tokens, local, dense_tail)


def padded_length(tokens: int) -> int:
    """``tokens`` rounded up to a whole number of blocks, and to at most 1/8 more (shared graphs)."""
    step = max(BLOCK, 1 << max(tokens.bit_length() - 4, 0))
    return -(-tokens // step) * step


@functools.lru_cache(maxsize=8)
def _block_mask(layout: TriShape, length: int, device: str):
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(batch, head, q, k):
        return layout.allows(q, k)

    return create_block_mask(mask_mod, None, None, length, length, device=device, BLOCK_SIZE=BLOCK)


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    raise_recompile_limit(64)  # one graph per padded length
    return torch.compile(flex_attention, dynamic=False)


def tri_shape_attention(query, key, value, layout: TriShape, scaling: float | None) -> torch.Tensor:
    """Attention ``[b, tokens, H, d]`` of ``query`` ``[b, H, tokens, d]`` over ``key``/``value``
    ``[b, H_kv, tokens, d]`` under ``layout`` (padded to :func:`padded_length` inside)."""
    n = query.shape[2]
    pad = padded_length(n) - n
    if pad:
        query, key, value = (torch.nn.functional.pad(t, (0, 0, 0, pad)) for t in (query, key, value))
    mask = _block_mask(layout, n + pad, str(query.device))
    out = _compiled_flex()(query, key, value, block_mask=mask, scale=scaling, enable_gqa=query.shape[1] != key.shape[1])
    return out[:, :, :n].transpose(1, 2).contiguous()


def sparse_prefill_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The attention function of :data:`SPARSE_ATTENTION`: the tri-shape for a forward that
    carries a layout and fills a fresh cache, SDPA (the model's own) for everything else."""
    layout = kwargs.pop(LAYOUT_KEYWORD, None)
    dense = (
        layout is None
        or query.shape[2] != layout.tokens
        or key.shape[2] != layout.tokens
        or is_sliding(module, None)
        or kwargs.get("softcap") is not None
    )
    if dense:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    return tri_shape_attention(query, key, value, layout, scaling), None


AttentionInterface.register(SPARSE_ATTENTION, sparse_prefill_attention)
AttentionMaskInterface.register(SPARSE_ATTENTION, sdpa_mask)  # dense forwards get SDPA's masks


class SparsePrefill:
    """A model's attention switched to :data:`SPARSE_ATTENTION` for one press block, and the
    layout of each prompt forward. :meth:`restore` puts the model's own implementation back."""

    def __init__(self, model, press):
        self.configs = list({id(c): c for c in (model.config, model.config.get_text_config())}.values())
        self.own = attention_implementation(model.config)
        if self.own != "sdpa":
            raise ValueError(
                f"sparse_prefill runs on SDPA attention and this model uses {self.own!r}; "
                "load it with attn='sdpa' (--attn sdpa)"
            )
        self.local = press.sparse_local
        self.window = press.window_range[1] if press.window_range is not None else press.scorer.window_size
        for config in self.configs:
            set_attention_implementation(config, SPARSE_ATTENTION)

    def layout(self, tokens: int, probe: int) -> TriShape | None:
        """The layout of a fresh forward of ``tokens`` tokens whose last ``probe`` are a probe."""
        return layout_for(tokens, self.local, self.window + probe)

    def restore(self) -> None:
        for config in self.configs:
            set_attention_implementation(config, self.own)
