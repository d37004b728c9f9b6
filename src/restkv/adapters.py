"""What the press needs to know about a model family: where attention lives and how queries are made.

Every supported family builds queries the same way (``q_proj``, an optional per-head
``q_norm``, rotary embedding with ``rotate_half``), so one adapter serves them all; a family
that differs needs its own entry here, not a copy of its forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ._compat.accelerate_hooks import offload_hook
from ._compat.transformers_attention import eager_attention_forward
from ._compat.transformers_config import attention_implementation

#: ``config.model_type`` values the press is tested on
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "gemma3")
#: attention implementations that take the additive masks a compressed cache needs
SUPPORTED_ATTENTION = ("eager", "sdpa")


def text_config(config):
    return getattr(config, "text_config", None) or config


def check_supported(model: nn.Module) -> None:
    """Raise a one-sentence error for a model the press cannot handle."""
    config = getattr(model, "config", None)
    model_type = getattr(text_config(config), "model_type", None) if config is not None else None
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"unsupported architecture {model_type!r}: restkv supports {', '.join(SUPPORTED_MODEL_TYPES)}")
    attention = attention_implementation(config) or "eager"
    if attention not in SUPPORTED_ATTENTION:
        raise ValueError(
            f"attention implementation {attention!r} is not supported under a press (compressed caches need "
            f"additive masks): load the model with attn_implementation one of {', '.join(SUPPORTED_ATTENTION)}"
        )


def check_cache(cache) -> None:
    """Raise a one-sentence error for a cache a press cannot shrink in place."""
    from transformers import DynamicCache, QuantizedCache

    if not isinstance(cache, (DynamicCache, QuantizedCache)):
        raise ValueError(
            f"a press needs a DynamicCache or QuantizedCache, got {type(cache).__name__} (a static cache has a "
            "fixed layout that eviction cannot shrink)"
        )


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """The self-attention modules of a decoder, in layer order."""
    found = [
        m
        for m in model.modules()
        if all(hasattr(m, p) for p in ("q_proj", "k_proj", "v_proj", "o_proj")) and hasattr(m, "layer_idx")
    ]
    if not found:
        raise ValueError(f"found no attention layers with q_proj/k_proj/v_proj/o_proj in {type(model).__name__}")
    return sorted(found, key=lambda m: m.layer_idx)


def decoder_model(model: nn.Module) -> nn.Module:
    """The module that owns the decoder layers and receives ``position_ids`` and the cache."""
    getter = getattr(model, "get_decoder", None)
    decoder = getter() if callable(getter) else None
    return decoder if isinstance(decoder, nn.Module) else getattr(model, "model", model)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def project_queries(
    module: nn.Module, hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor]
) -> torch.Tensor:
    """Post-RoPE queries ``[b, H, q, d]`` of ``hidden_states`` ``[b, q, hidden]``.

    ``position_embeddings`` is the ``(cos, sin)`` pair the layer received, already sliced to
    the same ``q`` positions.
    """
    b, q, _ = hidden_states.shape
    head_dim = module.head_dim
    states = module.q_proj(hidden_states).view(b, q, -1, head_dim)
    if hasattr(module, "q_norm"):
        states = module.q_norm(states)
    states = states.transpose(1, 2)
    cos, sin = (t.unsqueeze(1).to(states.dtype) for t in position_embeddings)
    return states * cos + rotate_half(states) * sin


def last_queries(
    module: nn.Module, hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor], span: int
) -> torch.Tensor:
    """Post-RoPE queries ``[b, H, span, d]`` of the last ``span`` positions a layer received."""
    cos, sin = position_embeddings
    return project_queries(module, hidden_states[:, -span:], (cos[..., -span:, :], sin[..., -span:, :]))


@dataclass(frozen=True)
class LayerContext:
    """What scorers need to know about one attention layer, whatever the model family.

    ``position`` is ``(index, count)`` among the compressed layers, for depth-aware methods.
    """

    index: int
    o_proj: torch.Tensor
    scaling: float | None
    softcap: float | None
    position: tuple[int, int]
    #: the layer's rotary frequencies ``[d/2]`` (for re-indexing kept keys, and for scorers
    #: with ``needs_rotary``), when known
    inv_freq: torch.Tensor | None = None

    def scorer_kwargs(self) -> dict:
        """The keyword arguments of :meth:`restkv.scorers.Scorer.select` that describe the layer
        (``inv_freq`` only when the press read it)."""
        kwargs = {"o_proj": self.o_proj, "scaling": self.scaling, "softcap": self.softcap, "layer": self.position}
        if self.inv_freq is not None:
            kwargs["inv_freq"] = self.inv_freq
        return kwargs


def layer_context(module: nn.Module, position: tuple[int, int], inv_freq: torch.Tensor | None = None) -> LayerContext:
    """The one place that reads a family's output projection, logit scale and soft-cap."""
    scaling, softcap = getattr(module, "scaling", None), logit_softcap(module)
    return LayerContext(module.layer_idx, resident_weight(module.o_proj), scaling, softcap, position, inv_freq)


def resident_weight(linear: nn.Module) -> torch.Tensor:
    """``linear.weight`` where it can be computed with, also when accelerate offloads it.

    With a ``device_map`` that offloads layers (to CPU RAM or disk), accelerate keeps the weight
    on the meta device and loads it only while the module itself runs; a scorer that reads the
    weight outside that call (ReST-KV's output projection) gets it from the hook's weight map,
    on the device the layer computes on.
    """
    weight = linear.weight
    hook = offload_hook(linear)
    if weight.device.type != "meta" or hook is None or getattr(hook, "weights_map", None) is None:
        return weight
    return hook.weights_map["weight"].to(hook.execution_device)


def needs_frequencies(press) -> bool:
    """Whether a press needs each layer's rotary frequencies: to re-index kept keys, or because
    its scorer reads them (``needs_rotary``)."""
    return bool(press.rerotate or (press.scorer is not None and press.scorer.needs_rotary))


def rope_frequencies(model: nn.Module) -> dict[int, torch.Tensor]:
    """Each attention layer's rotary frequencies ``inv_freq`` ``[d/2]``, read from the model's own
    rotary module (Gemma 3 keeps one set per layer type: local and global layers differ)."""
    rotary = getattr(decoder_model(model), "rotary_emb", None)
    if rotary is None:
        raise ValueError(f"{type(model).__name__} has no rotary embedding module; rerotate needs one")
    layer_types = getattr(text_config(model.config), "layer_types", None)
    out = {}
    for module in attention_modules(model):
        per_type = getattr(rotary, f"{layer_types[module.layer_idx]}_inv_freq", None) if layer_types else None
        inv_freq = (per_type if per_type is not None else rotary.inv_freq).float()
        if 2 * inv_freq.shape[-1] != module.head_dim:
            raise ValueError("rerotate needs rotary embedding over the whole head (no partial rotary factor)")
        out[module.layer_idx] = inv_freq
    return out


def rotate_keys(keys: torch.Tensor, delta: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Post-RoPE ``keys`` ``[b, H_kv, k, d]`` moved by ``delta`` positions (``[b, H_kv, k]`` or ``[k]``).

    Rotary embedding rotates each pair of dimensions by ``position x inv_freq``, so a key moves
    to another position by one more rotation by the difference, computed in float32.
    """
    angles = delta.to(keys.device, torch.float32)[..., None] * inv_freq.to(keys.device)  # [..., k, d/2]
    angles = torch.cat([angles, angles], dim=-1)
    k = keys.float()
    return (k * angles.cos() + rotate_half(k) * angles.sin()).to(keys.dtype)


def logit_softcap(module: nn.Module) -> float | None:
    return getattr(module, "attn_logit_softcapping", None) or getattr(
        getattr(module, "config", None), "attn_logit_softcapping", None
    )


def attention_function(module: nn.Module, implementation: str):
    """The attention function ``module`` runs under ``implementation`` (``eager`` is each family's
    own ``eager_attention_forward``, which carries its soft-cap, not a shared one)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if implementation == "eager":
        return eager_attention_forward(module)
    return ALL_ATTENTION_FUNCTIONS[implementation]


def is_sliding(module: nn.Module, cache_layer) -> bool:
    """Sliding-window layers keep their own window and are left alone by every press."""
    return bool(getattr(cache_layer, "is_sliding", False) or getattr(module, "is_sliding", False))
