"""H2O: heavy hitters by attention accumulated over every query of the prompt, plus a recent window.

Follows Zhang et al., "H2O: Heavy-Hitter Oracle for Efficient Generative Inference of Large
Language Models" (NeurIPS 2023, arXiv 2306.14048); at prefill, as in ``KVCache-Factory``'s
``H2OKVCluster`` and ``kvpress``'s ``ObservedAttentionPress``, a token's score is the causal
attention it receives summed over all prompt queries. Computed in query chunks, so it needs no
``[n, n]`` matrix.

While generating with a ``decode_budget``, H2O keeps accumulating the attention each entry
receives from every new query (its hooks :meth:`H2OScorer.remember`, :meth:`~H2OScorer.observe_step`
and :meth:`~H2OScorer.decode_select`).

``normalize=True`` divides each token's total by the number of queries that can see it (the
mean instead of the sum), which is NVIDIA kvpress's ``ObservedAttentionPress``; with
``window_size=0`` the two keep the same entries.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..attention import accumulated_attention, repeat_kv
from .base import Scorer, top_positions


@dataclass
class H2OScorer(Scorer):
    """Accumulated attention over all prompt queries."""

    normalize: bool = False

    name = "h2o"
    query_span = "all"

    def prefix_scores(self, queries, keys, values, *, budget, o_proj, key_mask, scaling, softcap, **context):
        """Attention accumulated over every prompt query (divided by how many queries see each token when ``normalize``)."""
        n = keys.shape[-2]
        total = accumulated_attention(queries, keys, scaling=scaling, key_mask=key_mask, softcap=softcap)
        if self.normalize:  # queries that see token j: the last q of them from position max(j, n - q)
            q = queries.shape[-2]
            seen_by = n - torch.arange(n, device=total.device).clamp_min(n - q)
            total = total / seen_by
        return total[..., : n - min(self.window_size, n)]

    # -- decoding-time eviction: the accumulated attention is the memory ----------------------
    def remember(self, queries, keys, kept, context):
        """The attention accumulated over the prompt's queries, at the kept positions."""
        acc = accumulated_attention(queries, keys, scaling=context.scaling, softcap=context.softcap)
        if kept is not None:
            acc = acc.gather(2, repeat_kv(kept[..., None], acc.shape[1] // kept.shape[1])[..., 0])
        return acc

    def observe_step(self, memory, query, keys, context):
        """Add the decoding step's attention to the accumulated attention (new entries start at zero)."""
        grown = keys.shape[-2] - memory.shape[-1]
        memory = torch.cat([memory, memory.new_zeros(*memory.shape[:2], grown)], dim=-1)
        return memory + accumulated_attention(query, keys, scaling=context.scaling, softcap=context.softcap)

    def decode_select(self, memory, keys, values, budget, context):
        """Keep the top accumulated attention plus the window, and the memory at those positions."""
        n = keys.shape[-2]
        scores = self.reduce_groups(memory, keys.shape[1]).clone()  # never write into the memory
        scores[..., n - min(self.window_size, n) :] = float("inf")
        idx = top_positions(scores, budget)
        group = memory.shape[1] // keys.shape[1]
        return idx, memory.gather(2, repeat_kv(idx[..., None], group)[..., 0])
