"""LagKV: score each token against the next partition of the prompt, which plays the queries' part.

Follows Liang et al., "LagKV: Lag-Relative Information of the KV Cache Tells Which Tokens Are
Important" (2025, arXiv 2504.04704), as NVIDIA ``kvpress``'s ``LagKVPress`` scores it. After
``sinks`` tokens the prompt is cut into partitions of ``lag_size``; each channel of a partition's
keys is min-max normalised by the range of that channel over the *next* partition, and a token
scores the spread (standard deviation over channels) of its normalised key, softmaxed over its
partition, averaged with the same score of its value. Without ``cross_scoring`` a token's score
is its rank within its partition, so every partition keeps about as many tokens. The sinks, the
last full partition (nothing follows it) and the remainder after it are always kept; a prompt
shorter than ``sinks + 2 * lag_size`` has nothing to compare and keeps its most recent tokens.
Reads no queries: query-agnostic.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..checks import check_int
from .base import Scorer


@dataclass
class LagKVScorer(Scorer):
    """Lag-relative spread of keys and values, ranked within each partition."""

    sinks: int = 4
    lag_size: int = 128
    cross_scoring: bool = False

    name = "lagkv"
    query_span = "none"

    def __post_init__(self):
        super().__post_init__()
        check_int("sinks", self.sinks, 0)
        check_int("lag_size", self.lag_size, 1)

    def prefix_scores(self, queries, keys, values, *, budget, o_proj, key_mask, scaling, softcap, **context):
        b, kv_heads, n, d = keys.shape
        scores = torch.full((b, kv_heads, n), float("inf"), device=keys.device)  # sinks and tail
        if n < self.sinks + 2 * self.lag_size:  # no reference partition: the most recent tokens
            scores[..., self.sinks :] = torch.arange(self.sinks, n, device=keys.device, dtype=torch.float32)
        else:
            end = self.sinks + (n - self.sinks) // self.lag_size * self.lag_size
            parts = lambda x: x[..., self.sinks : end, :].float().view(b, kv_heads, -1, self.lag_size, d)  # noqa: E731
            spread = (lag_spread(parts(keys)) + lag_spread(parts(values))) / 2  # [b, H_kv, parts - 1, lag]
            if not self.cross_scoring:
                spread = spread.argsort(dim=-1).argsort(dim=-1).float()
            scores[..., self.sinks : end - self.lag_size] = spread.flatten(-2)
        return scores[..., : n - min(self.window_size, n)]


def lag_spread(partitions: torch.Tensor) -> torch.Tensor:
    """``[b, H, p, lag, d]`` states to ``[b, H, p - 1, lag]`` scores: each partition's spread
    relative to the next one's per-channel range, softmaxed within the partition."""
    reference = partitions[:, :, 1:]
    low = reference.amin(dim=-2, keepdim=True)
    high = reference.amax(dim=-2, keepdim=True)
    relative = (partitions[:, :, :-1] - low) / (high - low)
    return relative.std(dim=-1).softmax(dim=-1)
