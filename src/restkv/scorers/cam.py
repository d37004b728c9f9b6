"""CaM: cache merging. Values of tokens about to leave are merged into the ones that follow.

Follows Zhang et al., "CaM: Cache Merging for Memory-efficient LLMs Inference" (ICML 2024);
the reference here is ``CAMKVCluster`` in ``an-yongqi/rest-kv`` (itself from
``Zefan-Cai/KVCache-Factory``). Tokens are kept by window attention summed over the window's
queries (no pooling). Before selection, each token ``i`` after the first ``start_ratio * n``
is merged into the values of the ``merge_window`` tokens after it with weight
``p_i / merge_window``, where ``p_i`` is its window attention relative to the largest
attention among the sinks and the tokens after it, clipped to [0, 1].

Differences from the reference: the reference draws a Bernoulli(``p_i``) per token and merges
sequentially (a merged value can be merged again); we merge the expected value once per token,
which is deterministic and vectorised.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..attention import window_attention
from ..checks import check_int
from .base import Scorer


@dataclass
class CaMScorer(Scorer):
    """Summed window attention; kept values absorb a share of their evicted predecessors'."""

    start_ratio: float = 0.1
    merge_window: int = 32

    name = "cam"

    def __post_init__(self):
        super().__post_init__()
        check_int("window_size", self.window_size, 1)
        check_int("merge_window", self.merge_window, 1)
        if not 0 <= self.start_ratio < 1:
            raise ValueError(f"start_ratio must be in [0, 1), got {self.start_ratio!r}")

    def prefix_scores(self, queries, keys, values, *, budget, o_proj, key_mask, scaling, softcap, **context):
        """Window attention summed over the window's queries."""
        n, w = keys.shape[-2], queries.shape[-2]
        attn = window_attention(queries, keys, scaling=scaling, key_mask=key_mask, softcap=softcap)
        return attn[..., : n - w].sum(dim=-2)

    def kept_values(self, queries, keys, values, kept, *, scaling=None, key_mask=None, softcap=None):
        """Values ``[b, H_kv, n, d]`` after merging, to be gathered at ``kept``."""
        n = keys.shape[-2]
        w = min(self.window_size, n)
        attn = window_attention(queries[..., -w:, :], keys, scaling=scaling, key_mask=key_mask, softcap=softcap)
        heads, kv_heads = attn.shape[1], keys.shape[1]
        a = attn.mean(dim=-2).view(attn.shape[0], kv_heads, heads // kv_heads, n).mean(2)  # [b, H_kv, n]
        # positions counted from each row's first real token (left padding)
        real = torch.arange(n, device=a.device).expand(a.shape[0], n)
        if key_mask is not None:
            real = key_mask.to(a.device).long().cumsum(-1) - 1
        length = real[:, -1:] + 1
        start = (self.start_ratio * length).long().clamp_min(1)[:, None, :]  # [b, 1, 1]
        sinks = (real[:, None, :] >= 0) & (real[:, None, :] < start)
        m = self.merge_window
        # largest attention among the sinks and the m tokens after each token
        after = F.max_pool1d(F.pad(a, (0, m), value=0.0), kernel_size=m, stride=1)[..., 1 : n + 1]
        sink_max = a.masked_fill(~sinks, 0.0).amax(-1, keepdim=True)
        reference = torch.maximum(after, sink_max).clamp_min(1e-12)
        p = (a / reference).clamp(0, 1).masked_fill(real[:, None, :] < start, 0.0)
        p[..., n - w :] = 0  # the window is never evicted, so never merged
        spread = (p[..., None] * values.float()) / m  # [b, H_kv, n, d]
        # token i adds spread[i] to tokens i+1 .. i+m: a causal box filter over positions
        csum = F.pad(spread.cumsum(dim=-2), (0, 0, 1, 0))
        idx = torch.arange(n, device=values.device)
        received = csum[..., idx, :] - csum[..., (idx - m).clamp_min(0), :]
        return (values.float() + received).to(values.dtype)
