"""KVzip: keep the entries the model needs to reconstruct its context.

Follows KVzip (Kim et al. 2025, arXiv 2505.23416) as NVIDIA ``kvpress`` 0.5.5's ``KVzipPress``
scores it. After the context is prefilled, the model is asked to repeat it, chunk by chunk,
continuing from the context's own cache (:mod:`restkv.reconstruct` runs those passes). For
each chunk, every reconstruction query's attention is a softmax over the first ``sinks``
context entries (when the chunk does not start at them), the chunk's entries and the
reconstruction tokens before it; an entry of the chunk scores the largest attention it gets
from any query of its KV head's group. The first ``sinks`` entries are always kept. Entries
are kept by score over all layers and heads together (or, with ``layerwise``, over the heads
of each layer), so heads and layers keep different numbers. Query-agnostic: the question is
never read.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..checks import check_int
from .base import Scorer


@dataclass
class KVzipScorer(Scorer):
    """Largest attention each entry receives while the model repeats its context."""

    window_size: int = 0
    sinks: int = 4
    chunk_size: int = 2048
    overlap: int = 8
    layerwise: bool = False

    name = "kvzip"
    query_span = "none"
    #: scores come from reconstruction passes after the prefill, not from the prompt's queries
    one_prefill_only = True

    def __post_init__(self):
        super().__post_init__()
        check_int("sinks", self.sinks, 0)
        check_int("chunk_size", self.chunk_size, 1)
        check_int("overlap", self.overlap, 0)
        if not isinstance(self.layerwise, bool):
            raise ValueError(f"layerwise must be True or False, got {self.layerwise!r}")

    def prefix_scores(self, queries, keys, values, *, budget, o_proj, key_mask, scaling, softcap, **context):
        """Refused: kvzip's scores come from reconstruction passes (:func:`restkv.reconstruct.kvzip_scores`)."""
        raise ValueError("kvzip scores from reconstruction passes after the prefill (restkv.reconstruct), "
                         "not from one layer's prompt queries")  # fmt: skip

    def chunk_scores(self, queries, keys, start: int, end: int, scaling: float | None = None) -> torch.Tensor:
        """Scores ``[b, H_kv, end - start]`` of context entries ``start:end`` from the ``q``
        reconstruction queries ``[b, H, q, d]`` (post-RoPE); ``keys`` ``[b, H_kv, m, d]`` end
        with the ``q`` reconstruction entries."""
        b, heads, q, d = queries.shape
        kv_heads = keys.shape[1]
        sink = min(self.sinks, start)
        seen = torch.cat([keys[:, :, :sink], keys[:, :, start:end], keys[:, :, -q:]], dim=2).float()
        seen = seen.repeat_interleave(heads // kv_heads, dim=1)
        logits = queries.float() @ seen.transpose(-1, -2) * (d**-0.5 if scaling is None else scaling)
        own = torch.ones(q, q, dtype=torch.bool, device=logits.device).tril()
        logits[..., -q:] = logits[..., -q:].masked_fill(~own, float("-inf"))  # causal among the repeat
        attention = logits.softmax(dim=-1)[..., sink : sink + end - start]
        return attention.amax(dim=-2).view(b, kv_heads, -1, end - start).amax(dim=2)
