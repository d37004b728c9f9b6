"""AdaKV: heads of a layer share one budget, so focused heads give entries to diffuse ones.

Follows Feng et al., "Ada-KV: Optimizing KV Cache Eviction by Adaptive Budget Allocation for
Efficient LLM Inference" (2024, arXiv 2407.11550); reference ``FFY0/AdaKV`` (also
``AdaKVCluster`` in ``an-yongqi/rest-kv`` and ``AdaKVPress`` in NVIDIA ``kvpress``). As in the
paper's main setting the scores are SnapKV's; the allocation is the ``adakv`` allocator (see
:func:`restkv.select.head_adaptive_counts`), which any scorer can use
(``get_press("restkv", budget=128, allocator="adakv")``). Unlike kvpress, which masks evicted
entries in a padded cache, the kept entries are stored without padding
(:class:`restkv.cache.VarlenLayer`), so the memory is really freed.
"""

from __future__ import annotations

from dataclasses import dataclass

from .snapkv import SnapKVScorer


@dataclass
class AdaKVScorer(SnapKVScorer):
    """SnapKV scores; pressed with the ``adakv`` head allocator unless another is given."""

    name = "adakv"
    default_allocator = "adakv"
