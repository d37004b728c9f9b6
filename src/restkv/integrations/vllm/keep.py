"""What a compression keeps of one vLLM layer: the plugin's one call into :mod:`restkv.keep`
(the scorer's selection or whole blocks, then the method's value hook and the gather)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..._compat import vllm as compat
from ...keep import Blocks, kept_entries, kept_positions


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
    """Kept positions ``[1, H_kv, kept]`` (sorted) and the keys and values kept there ``[1, H_kv, kept, d]``.

    ``queries`` ``[1, H, w, d]`` are the prompt's last ``w`` post-RoPE queries; ``keys`` and
    ``values`` ``[1, H_kv, n, d]`` the prompt's, read back from vLLM's cache.
    """
    press, scorer = setting.press, setting.press.scorer
    budget = setting.budget(keys.shape[-2])
    observed = {"o_proj": info.o_proj, "scaling": info.scaling, "softcap": info.softcap, "layer": position}
    idx = kept_positions(scorer, queries, keys, values, budget, observed, blocks=Blocks.of(press))
    new_keys, new_values = kept_entries(idx, keys, values, scorer=scorer, queries=queries, observed=observed)
    return idx, new_keys, new_values
