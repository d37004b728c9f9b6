"""Random eviction: a seeded lower bound that every method should beat."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Scorer, check_int


@dataclass
class RandomScorer(Scorer):
    """Uniform random scores from a generator seeded with ``seed`` (same seed, same choice)."""

    seed: int = 0

    name = "random"
    query_span = "none"

    def __post_init__(self):
        super().__post_init__()
        check_int("seed", self.seed, 0)

    def prefix_scores(self, queries, keys, values, *, budget, o_proj, key_mask, scaling, softcap, **context):
        b, kv_heads, n, _ = keys.shape
        gen = torch.Generator().manual_seed(self.seed)
        return torch.rand(b, kv_heads, n - min(self.window_size, n), generator=gen).to(keys.device)
