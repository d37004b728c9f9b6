"""H2O: heavy hitters by attention accumulated over every query of the prompt, plus a recent window.

Follows Zhang et al., "H2O: Heavy-Hitter Oracle for Efficient Generative Inference of Large
Language Models" (NeurIPS 2023, arXiv 2306.14048); at prefill, as in ``KVCache-Factory``'s
``H2OKVCluster`` and ``kvpress``'s ``ObservedAttentionPress``, a token's score is the causal
attention it receives summed over all prompt queries. Computed in query chunks, so it needs no
``[n, n]`` matrix.

``normalize=True`` divides each token's total by the number of queries that can see it (the
mean instead of the sum), which is NVIDIA kvpress's ``ObservedAttentionPress``; with
``window_size=0`` the two keep the same entries.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..attention import accumulated_attention
from .base import Scorer


@dataclass
class H2OScorer(Scorer):
    """Accumulated attention over all prompt queries."""

    normalize: bool = False

    name = "h2o"
    query_span = "all"

    def prefix_scores(self, queries, keys, values, *, budget, o_proj, key_mask, scaling, softcap, **context):
        n = keys.shape[-2]
        total = accumulated_attention(queries, keys, scaling=scaling, key_mask=key_mask, softcap=softcap)
        if self.normalize:  # queries that see token j: the last q of them from position max(j, n - q)
            q = queries.shape[-2]
            seen_by = n - torch.arange(n, device=total.device).clamp_min(n - q)
            total = total / seen_by
        return total[..., : n - min(self.window_size, n)]
