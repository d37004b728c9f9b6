"""SnapKV: keep the prefix tokens the observation window attends to most.

Follows Li et al., "SnapKV: LLM Knows What You are Looking for Before Generation" (2024,
arXiv 2404.14469); reference implementation ``FasterDecoding/SnapKV`` and its copies in
``Zefan-Cai/KVCache-Factory`` and ``an-yongqi/rest-kv`` (``SnapKVCluster``): window attention
summed over the window's queries, average-pooled (kernel 5, zero padding), top ``B - w``
plus the window. The paper's comparison runs use window 32.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..attention import window_attention
from ..checks import check_choice, check_int
from ..smoothing import pool
from .base import Scorer


@dataclass
class SnapKVScorer(Scorer):
    """Summed window attention, pooled. ``pooling``: ``avgpool``, ``maxpool`` or ``none``."""

    pooling: str = "avgpool"
    kernel_size: int = 5

    name = "snapkv"

    def __post_init__(self):
        super().__post_init__()
        check_int("window_size", self.window_size, 1)
        check_choice("pooling", self.pooling, ("avgpool", "maxpool", "none"))
        check_int("kernel_size", self.kernel_size, 1)
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {self.kernel_size}")

    def prefix_scores(self, queries, keys, values, *, budget, o_proj, key_mask, scaling, softcap, **context):
        """Window attention summed over the window's queries, then pooled (``pooling``, ``kernel_size``)."""
        n, w = keys.shape[-2], queries.shape[-2]
        attn = window_attention(queries, keys, scaling=scaling, key_mask=key_mask, softcap=softcap)
        valid = key_mask[:, : n - w] if key_mask is not None else None
        return pool(attn[..., : n - w].sum(dim=-2), self.pooling, self.kernel_size, valid)
