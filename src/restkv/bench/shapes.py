"""Random-weight models of real shapes, for timing and memory (which do not depend on weights)."""

from __future__ import annotations

import torch

SHAPES = {
    "llama-3.1-8b": dict(
        model_type="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072, rope_theta=500000.0,
    ),
    "mistral-7b": dict(
        model_type="mistral", vocab_size=32768, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=32768, rope_theta=1000000.0,
        sliding_window=None,
    ),
    "qwen2.5-7b": dict(
        model_type="qwen2", vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
        num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768, rope_theta=1000000.0,
    ),
}  # fmt: skip
#: real layouts at toy width, for smoke runs of GPU scripts on a CPU
SMOKE_SHAPES = {
    "llama-tiny": dict(
        model_type="llama", vocab_size=1024, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
        num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=131072, rope_theta=500000.0,
    ),
}  # fmt: skip


def random_model(
    shape: str, layers: int | None = None, dtype: str = "bfloat16", attn: str = "sdpa", device: str = "cpu"
):
    """A random-weight causal LM of a named shape, optionally with fewer layers."""
    from transformers import AutoModelForCausalLM
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    known = {**SHAPES, **SMOKE_SHAPES}
    if shape not in known:
        raise ValueError(f"unknown shape {shape!r}; available: {', '.join(known)}")
    params = dict(known[shape])
    model_type = params.pop("model_type")
    if layers is not None:
        if layers < 1:
            raise ValueError(f"--layers must be a positive integer, got {layers}")
        params["num_hidden_layers"] = layers
    config = CONFIG_MAPPING[model_type](**params)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype), attn_implementation=attn)
    return model.eval()
