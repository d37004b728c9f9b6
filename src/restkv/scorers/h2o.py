"""H2O: heavy hitters by attention accumulated over every query of the prompt, plus a recent window.

Follows Zhang et al., "H2O: Heavy-Hitter Oracle for Efficient Generative Inference of Large
Language Models" (NeurIPS 2023, arXiv 2306.14048); at prefill, as in ``KVCache-Factory``'s
``H2OKVCluster`` and ``kvpress``'s ``ObservedAttentionPress``, a token's score is the causal
attention it receives summed over all prompt queries. Computed in query chunks, so it needs no
``[n, n]`` matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..attention import accumulated_attention
from .base import Scorer


@dataclass
class H2OScorer(Scorer):
    """Accumulated attention over all prompt queries."""

    name = "h2o"
    query_span = "all"

    def prefix_scores(self, queries, keys, values, *, budget, o_proj, key_mask, scaling, softcap, **context):
        n = keys.shape[-2]
        total = accumulated_attention(queries, keys, scaling=scaling, key_mask=key_mask, softcap=softcap)
        return total[..., : n - min(self.window_size, n)]
