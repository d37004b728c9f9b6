"""restkv: ReST-KV and the KV cache eviction methods it is compared with, on Hugging Face models.

>>> from restkv import RestKVPress, get_press, generate
>>> press = RestKVPress(budget=128)
>>> # with press(model): model.generate(...)

The names below are imported on first use, so that importing one part of the package (the
results store, the scorers) does not load the rest.
"""

from __future__ import annotations

import importlib

from .version import __version__

#: public name -> the module that defines it
_EXPORTS = {
    "CompressedContext": "context",
    "compress_context": "context",
    "load_context": "context",
    "GenerationResult": "generation",
    "generate": "generation",
    "generate_with_stats": "generation",
    "KVPress": "press",
    "RestKVPress": "press",
    "get_press": "press",
    "available": "scorers",
    "get_scorer": "scorers",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'restkv' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__():
    return __all__
