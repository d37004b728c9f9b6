"""What a compression keeps of one layer: the single place the plugin calls the scorer API.

This mirrors ``restkv.serve.paged``'s selection (token-level ``scorer.select``, or block-aligned
``restkv.blocks.block_positions``) until the pipeline's own ``keep`` lands; then this function
becomes a call to it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..._compat import vllm as compat
from ...blocks import block_positions


@dataclass(frozen=True)
class LayerInfo:
    """A vLLM attention layer as the scorers see it."""

    module: object  # vLLM's Attention (holds kv_cache)
    o_proj: torch.Tensor  # [hidden, H * d]: the columns of this rank's heads
    num_heads: int
    head_size: int
    scaling: float
    softcap: float | None

    @classmethod
    def of(cls, attention, parent) -> LayerInfo:
        impl = attention.impl
        softcap = getattr(impl, "logits_soft_cap", None) or None  # vLLM stores "none" as 0
        return cls(
            attention, compat.linear_weight(parent.o_proj), attention.num_heads, attention.head_size, float(impl.scale), softcap
        )


def kept_indices(setting, queries, keys, values, info: LayerInfo, position: tuple[int, int]):
    """Kept positions ``[1, H_kv, kept]`` (sorted) and the values to store there ``[1, H_kv, n, d]``.

    ``queries`` ``[1, H, w, d]`` are the prompt's last ``w`` post-RoPE queries; ``keys`` and
    ``values`` ``[1, H_kv, n, d]`` the prompt's, read back from vLLM's cache.
    """
    press, scorer = setting.press, setting.press.scorer
    n = keys.shape[-2]
    budget = setting.budget(n)
    context = {"o_proj": info.o_proj, "scaling": info.scaling, "softcap": info.softcap, "layer": position}
    if press.block_size is not None:
        window = min(scorer.window_size, n)
        scores = scorer.score(queries, keys, values, budget=budget, **context)
        idx = block_positions(scores, budget, window, press.block_size, press.block_reduce)
    else:
        idx = scorer.select(queries, keys, values, budget=budget, **context)
    kept_values = scorer.kept_values(queries, keys, values, idx, scaling=info.scaling, softcap=info.softcap)
    return idx, kept_values
