"""transformers' base class of quantized cache layers, under either of its names.

transformers 5.24 calls it ``BaseQuantizedLayer``; releases before it (5.19, the newest vLLM 0.32
accepts) call it ``QuantizedLayer``. restkv runs under both (the vLLM environment has 5.19).
"""

from __future__ import annotations

try:
    from transformers.cache_utils import BaseQuantizedLayer
except ImportError:  # transformers < 5.2x
    from transformers.cache_utils import QuantizedLayer as BaseQuantizedLayer

__all__ = ["BaseQuantizedLayer"]
