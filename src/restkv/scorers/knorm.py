"""Knorm: keep the tokens whose keys have the smallest L2 norm.

Follows Devoto et al., "A Simple and Effective L2 Norm-Based Strategy for KV Cache
Compression" (EMNLP 2024, arXiv 2406.11430); as in NVIDIA ``kvpress``'s ``KnormPress`` the
score is the negative key norm. The reference ``an-yongqi/rest-kv`` (``L2NormCluster``) keeps
no recent window; set ``window_size=0`` for that.
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import Scorer


@dataclass
class KnormScorer(Scorer):
    """Negative key norm per KV head."""

    name = "knorm"
    query_span = "none"

    def prefix_scores(self, queries, keys, values, *, budget, o_proj, key_mask, scaling, softcap, **context):
        """The negative L2 norm of each key: the smallest keys are kept."""
        n = keys.shape[-2]
        return -keys[..., : n - min(self.window_size, n), :].float().norm(dim=-1)
