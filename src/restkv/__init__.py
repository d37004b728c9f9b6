"""restkv: ReST-KV and the KV cache eviction methods it is compared with, on Hugging Face models.

>>> from restkv import RestKVPress, get_press, generate
>>> press = RestKVPress(budget=128)
>>> # with press(model): model.generate(...)
"""

from .generate import GenerationResult, generate, generate_with_stats
from .press import KVPress, RestKVPress, get_press
from .scorers import available, get_scorer

__version__ = "0.1.0"

__all__ = [
    "GenerationResult",
    "KVPress",
    "RestKVPress",
    "available",
    "generate",
    "generate_with_stats",
    "get_press",
    "get_scorer",
]
