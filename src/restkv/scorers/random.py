"""Random eviction: a seeded lower bound that every method should beat."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..checks import check_int
from .base import Scorer


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
        """Uniform draws from ``seed``, the same for the same real position with or without left padding."""
        b, kv_heads, n, _ = keys.shape
        length = n - min(self.window_size, n)
        gen = torch.Generator().manual_seed(self.seed)
        draws = torch.rand(length, kv_heads, generator=gen).T.to(keys.device)  # position-major: independent of length
        # the same draw for the same real position, with or without left padding
        real = torch.arange(length, device=keys.device).expand(b, length)
        if key_mask is not None:
            real = (key_mask[:, :length].to(keys.device).long().cumsum(-1) - 1).clamp_min(0)
        return draws[None].expand(b, -1, -1).gather(2, real[:, None, :].expand(b, kv_heads, length))
