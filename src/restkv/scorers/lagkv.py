"""LagKV: score each token against the next partition of the prompt, which plays the queries' part.

Follows LagKV (arXiv 2504.04704), as NVIDIA ``kvpress``'s ``LagKVPress`` scores it. After
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
        """Per-KV-head scores ``[b, H_kv, n - window]``: each row's partitions ranked from its first
        real token (:meth:`row_scores`), as when the row runs alone."""
        b, kv_heads, n, _ = keys.shape
        scores = keys.new_zeros(b, kv_heads, n, dtype=torch.float32)
        pads = [0] * b if key_mask is None else (~key_mask).sum(-1).tolist()  # left padding per row
        for row, pad in enumerate(pads):  # partitions start at a row's first real token, as when it runs alone
            scores[row, :, pad:] = self.row_scores(keys[row, :, pad:], values[row, :, pad:])
        return scores[..., : n - min(self.window_size, n)]

    def row_scores(self, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Scores ``[H_kv, m]`` of one row's ``m`` real tokens ``[H_kv, m, d]``; the tokens always
        kept score above all others (and stay finite)."""
        heads, m, d = keys.shape
        always = torch.ones(heads, m, dtype=torch.bool, device=keys.device)  # sinks and tail
        scores = torch.zeros(heads, m, device=keys.device)
        if m < self.sinks + 2 * self.lag_size:  # no partition to compare with: the most recent tokens
            always[:, self.sinks :] = False
            scores[:, self.sinks :] = torch.arange(self.sinks, m, device=keys.device, dtype=torch.float32)
        else:
            end = self.sinks + (m - self.sinks) // self.lag_size * self.lag_size
            parts = lambda x: x[:, self.sinks : end].float().view(heads, -1, self.lag_size, d)  # noqa: E731
            spread = (lag_spread(parts(keys)) + lag_spread(parts(values))) / 2  # [H_kv, parts - 1, lag]
            if not self.cross_scoring:
                spread = spread.argsort(dim=-1).argsort(dim=-1).float()
            always[:, self.sinks : end - self.lag_size] = False
            scores[:, self.sinks : end - self.lag_size] = spread.flatten(-2)
        top = scores.masked_fill(always, float("-inf")).amax(dim=-1, keepdim=True).clamp_min(0)
        return torch.where(always, top + 1, scores)


def lag_spread(partitions: torch.Tensor) -> torch.Tensor:
    """``[H, p, lag, d]`` states to ``[H, p - 1, lag]`` scores: each partition's spread relative
    to the next one's per-channel range, softmaxed within the partition. A channel constant over
    the next partition has no range to measure against and counts as 0 (kvpress's division
    would make the token's score NaN)."""
    reference = partitions[:, 1:]
    low = reference.amin(dim=-2, keepdim=True)
    span = reference.amax(dim=-2, keepdim=True) - low
    relative = torch.where(span > 0, (partitions[:, :-1] - low) / span.clamp_min(torch.finfo(span.dtype).tiny), 0.0)
    return relative.std(dim=-1).softmax(dim=-1)
