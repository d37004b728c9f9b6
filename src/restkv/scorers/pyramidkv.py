"""PyramidKV: SnapKV's scores with layer budgets that shrink linearly with depth.

Follows Cai et al., "PyramidKV: Dynamic KV Cache Compression based on Pyramidal Information
Funneling" (2024, arXiv 2406.02069); reference ``Zefan-Cai/KVCache-Factory``
(``PyramidKVCluster``, beta = 20). The scorer is SnapKV's; what differs is the default
allocator, ``pyramid`` (see :func:`restkv.budgets.pyramid_schedule`), which keeps the same
total over layers as ``uniform`` at the same budget.
"""

from __future__ import annotations

from dataclasses import dataclass

from .snapkv import SnapKVScorer


@dataclass
class PyramidKVScorer(SnapKVScorer):
    """SnapKV scores; pressed with the ``pyramid`` layer allocator unless another is given."""

    name = "pyramidkv"
    default_allocator = "pyramid"
