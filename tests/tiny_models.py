"""Tiny random-weight models of every supported family, built in code (no hub, no download)."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

COMMON = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=3,
    num_attention_heads=4,
    head_dim=16,
    max_position_embeddings=4096,
    tie_word_embeddings=False,
)

FAMILY_CONFIGS = {
    "llama": dict(),
    "mistral": dict(sliding_window=None),
    "qwen2": dict(),
    "qwen3": dict(),
    "gemma": dict(),
    "gemma2": dict(
        sliding_window=16, query_pre_attn_scalar=16, attn_logit_softcapping=50.0, final_logit_softcapping=30.0
    ),
    "gemma3_text": dict(
        sliding_window=16,
        query_pre_attn_scalar=16,
        layer_types=["sliding_attention", "full_attention", "full_attention"],
    ),
}

FAMILIES = list(FAMILY_CONFIGS)


def tiny_model(
    family: str = "llama", kv_heads: int = 2, attn: str = "eager", dtype=torch.float32, seed: int = 0, layers: int = 3
):
    """A seeded random-weight causal LM of ``family`` with 4 query heads and ``kv_heads`` KV heads."""
    torch.manual_seed(seed)
    params = {**COMMON, **FAMILY_CONFIGS[family], "num_key_value_heads": kv_heads, "num_hidden_layers": layers}
    if "layer_types" in params:
        params["layer_types"] = params["layer_types"][:layers]
    config = CONFIG_MAPPING[family](**params)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn, dtype=dtype)
    # sharper attention than the default init, so scores are not near-uniform
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(4)
    return model.eval()


def prompt_ids(n: int, batch: int = 1, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(3, COMMON["vocab_size"], (batch, n), generator=gen)


class CharTokenizer:
    """A tokenizer for the tiny models: one token per character (ids 3..127), no chat template."""

    eos_token_id = 1
    chat_template = None

    def __call__(self, text, return_tensors=None, add_special_tokens=True, return_offsets_mapping=False):
        ids = [3 + (ord(c) % 125) for c in text]
        out = {"input_ids": torch.tensor([ids]) if return_tensors == "pt" else ids}
        if return_offsets_mapping:
            out["offset_mapping"] = [(i, i + 1) for i in range(len(text))]
        return out

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids if i >= 3)


class TinyLoaded:
    """What ``restkv.models.load_model`` returns, for a tiny model."""

    def __init__(self, family="llama", seed=0):
        self.model = tiny_model(family, seed=seed)
        self.tokenizer = CharTokenizer()
        self.name = f"tiny-{family}"
        self.chat = False


def plain_copy(model, cache):
    """A plain transformers cache holding exactly ``cache``'s stored entries (no press state)."""
    from transformers import DynamicCache

    plain = DynamicCache(config=model.config)
    for i, layer in enumerate(cache.layers):
        plain.update(layer.keys.clone(), layer.values.clone(), i)
    return plain


def load_tiny(family="llama"):
    """A picklable loader for Ray workers (they import this module by name)."""
    return TinyLoaded(family)


def load_tiny_dying_once(marker: str, family="llama"):
    """Like :func:`load_tiny`, but the first forward anywhere kills its process (once: ``marker``
    records it), as a worker lost mid-task would."""
    import os
    from pathlib import Path

    loaded = TinyLoaded(family)
    forward = loaded.model.forward

    def dying(*args, **kwargs):
        if not Path(marker).exists():
            Path(marker).touch()
            os._exit(1)
        return forward(*args, **kwargs)

    loaded.model.forward = dying
    return loaded
