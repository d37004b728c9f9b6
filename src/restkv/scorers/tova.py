"""TOVA: keep the tokens the last query attends to most, averaged over the layer's heads.

Follows Oren et al., "Transformers are Multi-State RNNs" (2024, arXiv 2401.06104); reference
``schwartz-lab-NLP/TOVA`` and NVIDIA ``kvpress``'s ``TOVAPress``. One score row per layer (the
mean over all heads) decides for every head. At prefill the last ``window_size`` tokens are
kept as for the other methods; ``window_size=1`` gives the paper's pure rule. The decoding-time
rule (evict the lowest-scored entry each step) lives in the press's decoding eviction.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..attention import window_attention
from ..checks import check_int
from .base import Scorer


@dataclass
class TOVAScorer(Scorer):
    """Last-query attention, mean over all heads of the layer."""

    name = "tova"

    def __post_init__(self):
        super().__post_init__()
        check_int("window_size", self.window_size, 1)  # the last query is the rule

    def prefix_scores(self, queries, keys, values, *, budget, o_proj, key_mask, scaling, softcap, **context):
        """The last query's attention, averaged over the layer's heads (the same row for every KV head)."""
        n = keys.shape[-2]
        w = min(self.window_size, n)
        last = window_attention(queries[..., -1:, :], keys, scaling=scaling, key_mask=key_mask, softcap=softcap)
        row = last[..., 0, : n - w].mean(dim=1, keepdim=True)  # [b, 1, n-w]
        return row.expand(row.shape[0], keys.shape[1], row.shape[-1])
