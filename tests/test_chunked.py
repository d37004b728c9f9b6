"""Chunked prefill with streaming eviction: bounded cache, consistent decoding."""

import pytest
import torch
from transformers import DynamicCache

from restkv import get_press
from restkv.generation import greedy_decode, prefill
from tiny_models import plain_copy, prompt_ids, tiny_model


def chunked(model, ids, press):
    cache = DynamicCache(config=model.config)
    sizes = []

    def watch(module, args, kwargs, output):
        sizes.append(kwargs["cache"].layers[module.layer_idx].keys.shape[2])

    handles = [m.self_attn.register_forward_hook(watch, with_kwargs=True) for m in model.model.layers]
    try:
        with torch.no_grad(), press(model):
            logits = prefill(model, ids, cache, press.chunk_size)
    finally:
        for h in handles:
            h.remove()
    return cache, logits, sizes


@pytest.mark.parametrize(
    "method", ["restkv", "snapkv", "h2o", "tova", "streamingllm", "lacache", "knorm", "keydiff", "lagkv"]
)
def test_chunked_prefill_keeps_each_layer_at_budget(method):
    model = tiny_model("llama")
    press = get_press(method, budget=40, window_size=8, chunk_size=64)
    cache, logits, sizes = chunked(model, prompt_ids(500), press)
    assert max(sizes) <= 40 + 64  # never more than the budget plus one chunk, at any time
    assert all(layer.keys.shape[2] == 40 for layer in cache.layers)
    assert torch.isfinite(logits).all()


def test_one_chunk_is_the_unchunked_press():
    model = tiny_model("llama")
    ids = prompt_ids(120)
    one = greedy_decode(model, ids, get_press("restkv", budget=40, window_size=8, chunk_size=500), 6)[0]
    plain = greedy_decode(model, ids, get_press("restkv", budget=40, window_size=8), 6)[0]
    assert one == plain


def test_streamingllm_chunked_keeps_the_same_sinks_and_recent_tokens():
    model = tiny_model("llama")
    ids = prompt_ids(300)
    full = DynamicCache(config=model.config)
    with torch.no_grad():
        model(ids, cache=full)
    cache, _, _ = chunked(model, ids, get_press("streamingllm", budget=40, window_size=8, chunk_size=50))
    # layer 0's keys depend only on tokens and positions: the kept ones are the 4 sinks and the last 36
    expected = torch.cat([full.layers[0].keys[..., :4, :], full.layers[0].keys[..., -36:, :]], dim=2)
    torch.testing.assert_close(cache.layers[0].keys, expected)


def test_decoding_after_chunked_prefill_attends_to_exactly_the_kept_entries():
    model = tiny_model("llama")
    ids = prompt_ids(300)
    press = get_press("restkv", budget=40, window_size=8, chunk_size=64)
    cache, logits, _ = chunked(model, ids, press)
    plain = plain_copy(model, cache)
    token, position = logits.argmax(-1, keepdim=True), torch.tensor([[300]])
    with torch.no_grad():
        with press(model):
            ours = model(token, cache=cache, position_ids=position).logits
        reference = model(token, cache=plain, position_ids=position).logits
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_chunking_errors():
    with pytest.raises(ValueError, match="chunk_size needs a budget"):
        get_press("restkv", compression_ratio=0.5, chunk_size=64)
    with pytest.raises(ValueError, match="chunk_size .* must be larger than window_size"):
        get_press("restkv", budget=64, chunk_size=16)
    with pytest.raises(ValueError, match="not supported with the adakv allocator"):
        get_press("adakv", budget=64, chunk_size=128)
