"""Quantized caches under a press: evict at full precision, then quantize what is kept.

transformers' :class:`~transformers.QuantizedCache` quantizes a prompt's keys and values as
soon as they arrive and keeps no full-precision copy, so a scorer would see only what the
quantizer left. Under a press, the prompt's forward therefore runs on plain dynamic layers:
each layer is compressed at full precision as usual, and once every layer has run, its kept
entries are handed to the quantized layer it replaced (its first ``update`` quantizes them).
Decoding then goes through transformers' own quantized layers: tokens accumulate at full
precision in the residual buffer and are quantized every ``residual_length`` tokens.

Eviction and quantization multiply: a budget of 1/8 of the prompt at 4 bits stores about 1/32
of a 16-bit cache's bytes, 1/64 of a 32-bit one's, plus the quantizer's scales and zero points
(:func:`stored_bytes` counts them; measured: 2.0% of fp32 at 1/8 and 4 bits, group size 64).

Backends: ``quanto`` (``optimum-quanto``; 2 or 4 bits) and ``hqq`` (1, 2, 3, 4 or 8 bits).
"""

from __future__ import annotations

import copy

import torch
from transformers import QuantizedCache
from transformers.cache_utils import DynamicLayer, HQQQuantizedLayer, QuantoQuantizedLayer

from ._compat.transformers_cache import quantized_keys_shape, quantized_payload
from ._compat.transformers_layers import BaseQuantizedLayer
from .extras import MissingExtra, install_hint
from .state import get_state, set_state

#: bits each backend offers (transformers' own limits, so an unsupported pair is refused up front)
BITS = {"quanto": (2, 4), "hqq": (1, 2, 3, 4, 8)}
#: the PyPI package each backend needs
PACKAGES = {"quanto": "optimum-quanto", "hqq": "hqq"}


def parse_kv_quant(text: str) -> tuple[str, int]:
    """``"hqq:4"`` -> ``("hqq", 4)``, with one sentence for anything else."""
    backend, _, bits = text.partition(":")
    if backend not in BITS or not bits.isdigit() or int(bits) not in BITS[backend]:
        offered = "; ".join(f"{b}:{'/'.join(map(str, n))}" for b, n in BITS.items())
        raise ValueError(f"kv quantization must be BACKEND:BITS, one of {offered}; got {text!r}")
    return backend, int(bits)


def quantized_label(label: str, kv_quant: tuple[str, int] | None) -> str:
    """A method's label in results: ``snapkv`` at full precision, ``snapkv+hqq4`` quantized, so one
    store holds both side by side."""
    return label if kv_quant is None else "{}+{}{}".format(label, *kv_quant)


def quantized_cache(model, backend: str, nbits: int, group_size: int = 64, residual_length: int = 128):
    """An empty :class:`~transformers.QuantizedCache` for ``model``; a press may compress it."""
    parse_kv_quant(f"{backend}:{nbits}")
    config = getattr(model.config, "text_config", None) or model.config
    try:
        return QuantizedCache(backend, config, nbits=nbits, q_group_size=group_size, residual_length=residual_length)
    except ImportError:
        raise _missing(backend) from None


def is_quantized(cache) -> bool:
    """Whether ``cache`` is a transformers ``QuantizedCache``."""
    return isinstance(cache, QuantizedCache)


def full_precision_layers(cache) -> list:
    """Swap the quantized layers of an empty ``cache`` for plain dynamic ones; returns the
    quantized layers, to be filled by :func:`requantize` after the prefill."""
    quantized = list(cache.layers)
    cache.layers = [DynamicLayer() if isinstance(layer, BaseQuantizedLayer) else layer for layer in quantized]
    return quantized


def requantize(cache, quantized: list) -> None:
    """Hand each layer's kept entries to the quantized layer it replaced."""
    for index, (layer, target) in enumerate(zip(cache.layers, quantized)):
        if isinstance(target, BaseQuantizedLayer) and type(layer) is DynamicLayer and layer.is_initialized:
            target.update(layer.keys.contiguous(), layer.values.contiguous())
            target.restkv_heads = layer.keys.shape[1]
            cache.layers[index] = target


def quantize_cache(cache, backend: str, nbits: int, group_size: int = 64, residual_length: int = 128):
    """A copy of a filled (compressed or full) cache with every layer quantized; its press
    state comes along, so decoding goes on from it. ``cache`` itself is not changed."""
    if any(getattr(layer, "is_sliding", False) or type(layer) is not DynamicLayer for layer in cache.layers):
        raise ValueError("only caches of plain full-attention layers can be quantized (as QuantizedCache requires)")
    layer_class = {"quanto": QuantoQuantizedLayer, "hqq": HQQQuantizedLayer}[parse_kv_quant(f"{backend}:{nbits}")[0]]
    try:
        targets = [layer_class(nbits, q_group_size=group_size, residual_length=residual_length) for _ in cache.layers]
    except ImportError:
        raise _missing(backend) from None
    out = copy.copy(cache)
    out.layers = list(cache.layers)
    requantize(out, targets)
    state = get_state(cache)
    if state is not None:
        set_state(out, state.copy())
    return out


def _missing(backend: str) -> ValueError:
    return MissingExtra(f"the {backend} cache backend needs {PACKAGES[backend]}: {install_hint('quantization')}")


def stored_bytes(layer) -> int:
    """Bytes a quantized layer holds: packed codes, scales and zero points, and the residual."""
    total = sum(_nbytes(part) for part in quantized_payload(layer))
    for residual in (layer.keys, layer.values):
        if isinstance(residual, torch.Tensor):
            total += residual.numel() * residual.element_size()
    return total


def stored_entries(layer) -> int:
    """Key entries (tokens x KV heads) of batch row 0 in a quantized layer."""
    heads = getattr(layer, "restkv_heads", None)
    if heads is None:  # a layer filled by transformers itself: the quantized tensor knows its shape
        shape = quantized_keys_shape(layer)
        heads = shape[1] if shape is not None and len(shape) == 4 else 0
    return heads * layer.cumulative_length


def _nbytes(obj) -> int:
    """Bytes of every tensor in ``obj``: a tensor, a tensor subclass wrapping inner tensors
    (quanto), or tuples, lists and dicts of them (HQQ's codes and metadata)."""
    if obj is None:
        return 0
    if isinstance(obj, torch.Tensor):
        if hasattr(obj, "__tensor_flatten__") and type(obj) is not torch.Tensor:
            names, _ = obj.__tensor_flatten__()
            return sum(_nbytes(getattr(obj, name)) for name in names)
        return obj.numel() * obj.element_size()
    if isinstance(obj, (tuple, list)):
        return sum(_nbytes(x) for x in obj)
    if isinstance(obj, dict):
        return sum(_nbytes(x) for x in obj.values())
    return 0
