"""StreamingLLM: keep the first ``sinks`` tokens (attention sinks) and the most recent ones.

Follows Xiao et al., "Efficient Streaming Language Models with Attention Sinks" (ICLR 2024,
arXiv 2309.17453); reference ``mit-han-lab/streaming-llm``. Here the recent part is the
``window_size`` last tokens plus, in order of recency, as many earlier ones as the budget
allows, so the kept set is exactly ``sinks`` first + ``B - sinks`` last tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..checks import check_int
from .base import Scorer


@dataclass
class StreamingLLMScorer(Scorer):
    """Sinks then recency. ``sinks``: how many first tokens are always kept (default 4)."""

    sinks: int = 4

    name = "streamingllm"
    query_span = "none"

    def __post_init__(self):
        super().__post_init__()
        check_int("sinks", self.sinks, 0)

    def prefix_scores(self, queries, keys, values, *, budget, o_proj, key_mask, scaling, softcap, **context):
        """Recency, with the first ``sinks`` real tokens of each row on top."""
        b, kv_heads, n, _ = keys.shape
        length = n - min(self.window_size, n)
        positions = torch.arange(length, device=keys.device, dtype=torch.float32).expand(b, length)
        # the sinks are the first *real* tokens: count positions from each row's first one
        real = positions if key_mask is None else key_mask[:, :length].to(keys.device).long().cumsum(-1) - 1
        # recency, with the sinks on top (earliest first, should the budget not hold them all)
        scores = torch.where((real >= 0) & (real < self.sinks), 3 * n - positions, positions)
        return scores[:, None, :].expand(b, kv_heads, length)
