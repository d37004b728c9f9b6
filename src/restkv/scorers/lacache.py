"""LaCache: a ladder-shaped cache in which each layer keeps a different span of old positions.

Follows Shi et al., "LaCache: Ladder-Shaped KV Caching for Efficient Long-Context Modeling of
Large Language Models" (ICML 2025, arXiv 2507.14204); reference ``GATECH-EIC/LaCache``
(``LaCache.__call__``). Old positions (after ``sinks`` attention sinks, before the recent
part) are cut into consecutive groups of ``g = 1 + ceil((L - span) / (span - overlap))``
positions; layer ``i`` keeps ``a = ceil(span / (span - overlap))`` consecutive positions of
each group, starting at offset ``i mod (g - a + 1)``, so neighbouring layers keep shifted
positions (the ladder) and the layers together cover far more of the prompt than any one
budget. When one pass is not enough, the ladder is applied again to what the last pass kept
(the reference's "start-over", i.e. iterative compaction); repeated at decoding time with the
press's ``decode_budget``, this is LaCache's compaction during generation.

Differences from the reference: budgets are exact (the reference may keep a few entries more
or fewer); the ladder starts right after the sinks at prefill (the reference's cursor state is
per generation and lives in the press's decode-time eviction here).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..checks import check_int
from .base import Scorer


def ladder_keep(
    n: int, budget: int, layer: int, layers: int, span: int, overlap: int, sinks: int, recent: int
) -> list[int]:
    """Positions layer ``layer`` of ``layers`` keeps from ``n`` (sorted, at most ``budget`` + a few)."""
    span = min(span, layers)
    group = 1 + math.ceil(max(layers - span, 0) / (span - overlap))
    take = min(math.ceil(span / (span - overlap)), group)
    kept = list(range(n))
    while len(kept) > budget and group > take:
        middle = kept[sinks : len(kept) - recent]
        excess = len(kept) - budget
        groups = min(math.ceil(excess / (group - take)), len(middle) // group)
        if groups == 0:
            break
        offset = layer % (group - take + 1)
        laddered = [middle[g * group + offset + k] for g in range(groups) for k in range(take)]
        kept = kept[:sinks] + laddered + middle[groups * group :] + kept[len(kept) - recent :]
    return kept


@dataclass
class LaCacheScorer(Scorer):
    """Ladder-shaped positions per layer; ``span`` layers share each old position (``overlap`` 0)."""

    span: int = 16
    overlap: int = 0
    sinks: int = 4

    name = "lacache"
    query_span = "none"
    budget_dependent = True

    def __post_init__(self):
        super().__post_init__()
        check_int("span", self.span, 1)
        check_int("overlap", self.overlap, 0)
        check_int("sinks", self.sinks, 0)
        if self.overlap >= self.span:
            raise ValueError(f"overlap ({self.overlap}) must be smaller than span ({self.span})")

    def prefix_scores(
        self, queries, keys, values, *, budget, o_proj, key_mask, scaling, softcap, layer=None, **context
    ):
        """The first ``sinks`` tokens on top, then this layer's ladder positions (``layer``), then recency."""
        b, kv_heads, n, _ = keys.shape
        w = min(self.window_size, n)
        index, count = layer if layer is not None else (0, 1)
        pads = [0] * b if key_mask is None else (~key_mask).sum(-1).tolist()  # left padding per row
        positions = torch.arange(n - w, dtype=torch.float32, device=keys.device)
        rows = []
        for pad in pads:
            real = n - pad
            kept = ladder_keep(real, budget, index, count, self.span, self.overlap, min(self.sinks, real - w), w)
            # ladder positions (sinks first) above everything else; the rest by recency fills any gap
            scores = positions - n
            ladder = torch.tensor([p + pad for p in kept if p < real - w], dtype=torch.long, device=keys.device)
            scores[ladder] = positions[ladder] + n
            sinks = slice(pad, pad + min(self.sinks, real - w))
            scores[sinks] = 4 * n - positions[sinks]  # on top, earliest first
            rows.append(scores)
        return torch.stack(rows)[:, None, :].expand(b, kv_heads, n - w)
