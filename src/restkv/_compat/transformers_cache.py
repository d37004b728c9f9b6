"""transformers cache layers' internals: a quantized layer's payload, and what a layer's ``__init__`` sets.

A quantized layer (``QuantoQuantizedLayer``, ``HQQQuantizedLayer``) keeps its quantized entries
in ``_quantized_keys`` / ``_quantized_values`` (a quanto tensor subclass, or HQQ's codes and
metadata dict), next to a full-precision residual in ``keys`` / ``values``; restkv counts their
bytes and entries. restkv's own cache layers (``VarlenLayer``, ``SlotLayer``) derive from
``CacheLayerMixin`` without calling its ``__init__`` (it would assign ``keys = None`` through
their properties) and set what it sets themselves: :data:`MIXIN_INIT_ATTRIBUTES`.
"""

from __future__ import annotations

from .versions import require

DISTRIBUTION = "transformers"
SUPPORTED = ">=5.2,<6"
SEAM = "restkv's reading of transformers' quantized cache layers"
#: what ``CacheLayerMixin.__init__`` sets, and so what a layer that skips it must set itself
MIXIN_INIT_ATTRIBUTES = ("keys", "values", "is_initialized")


def check() -> None:
    """Raise one sentence when the installed transformers is outside :data:`SUPPORTED`."""
    require(DISTRIBUTION, SUPPORTED, SEAM)


def quantized_payload(layer) -> tuple[object, object]:
    """The quantized keys and values a quantized cache layer holds (None before its first flush)."""
    check()
    return layer._quantized_keys, layer._quantized_values


def quantized_keys_shape(layer) -> tuple[int, ...] | None:
    """The ``[b, H_kv, n, d]`` shape of a quantized layer's quantized keys (None when unknown):
    HQQ keeps it in its metadata, quanto's tensor has it."""
    keys, _ = quantized_payload(layer)
    shape = keys[1]["shape"] if isinstance(keys, tuple) else getattr(keys, "shape", None)
    return tuple(shape) if shape is not None else None
