"""The full cache: no eviction. The reference every method is measured against."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Scorer


@dataclass
class FullScorer(Scorer):
    """Keeps every position whatever the budget (a press with it installs no hooks at all)."""

    window_size: int = 0

    name = "full"
    query_span = "none"

    def select(self, queries, keys, values, *, budget=None, **observed) -> torch.Tensor:
        """Every position ``[b, H_kv, n]``, whatever the budget."""
        b, kv_heads, n, _ = keys.shape
        return torch.arange(n, device=keys.device).expand(b, kv_heads, n).clone()
