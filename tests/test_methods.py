"""Every registered method, on an MHA and a GQA family: kept count, window and sinks, decoding."""

import pytest
import torch
from transformers import DynamicCache

from restkv import get_press
from restkv.scorers import available, get_scorer
from test_press import hand_masked_logits, kept_positions, prefill
from tiny_models import plain_copy, prompt_ids, tiny_model

W = 8
FAMILIES = [("llama", 4), ("qwen2", 2)]  # MHA and GQA
NOT_UNIFORM = {"adakv", "full"}  # per-head lengths (test_adakv.py); no eviction


def test_registry_lists_every_method_of_the_paper():
    expected = {
        "restkv",
        "snapkv",
        "pyramidkv",
        "h2o",
        "tova",
        "streamingllm",
        "lacache",
        "adakv",
        "cam",
        "knorm",
        "random",
    }
    assert expected <= set(available())
    with pytest.raises(ValueError, match="full takes no parameters"):
        get_press("full", window_size=4)
    q = k = torch.randn(1, 2, 40, 8)
    assert torch.equal(get_scorer("full").select(q, k, k, budget=8)[0, 0], torch.arange(40))


@pytest.mark.parametrize("family,kv_heads", FAMILIES)
@pytest.mark.parametrize("method", sorted(set(available()) - NOT_UNIFORM))
def test_method_keeps_budget_window_and_decodes_over_kept_entries(method, family, kv_heads):
    model = tiny_model(family, kv_heads=kv_heads)
    ids = prompt_ids(100)
    full, _ = prefill(model, ids)
    press = get_press(method, budget=30, window_size=W)
    compressed, logits = prefill(model, ids, press)
    kept = {}
    for i, layer in enumerate(compressed.layers):
        pos = kept_positions(full.layers[i].keys, layer.keys)
        kept[i] = pos
        assert pos.shape[-1] == press.last_stats.entries_per_layer[i] // kv_heads
        assert torch.equal(pos[..., -W:], torch.arange(100 - W, 100).expand(1, kv_heads, W)), "window kept"
        if method in ("streamingllm", "lacache"):
            assert torch.equal(pos[..., :4], torch.arange(4).expand(1, kv_heads, 4)), "sinks kept"
        if press.allocator == "uniform":
            assert pos.shape[-1] == 30
    assert sum(p.shape[-1] for p in kept.values()) == 30 * len(kept)  # pyramid: same total
    token = logits[:, -1:].argmax(-1)
    plain = plain_copy(model, compressed)  # the stored entries, for transformers to decode alone
    with torch.no_grad(), press(model):
        ours = model(token, cache=compressed, position_ids=torch.tensor([[100]])).logits[:, -1]
    if method == "cam":
        # merged values: the values really changed, and decoding attends to exactly the stored
        # (merged) entries, as transformers' own decoding over a plain cache holding them does
        assert any(
            not torch.equal(
                compressed.layers[i].values, full.layers[i].values.gather(2, p[..., None].expand(-1, -1, -1, 16))
            )
            for i, p in kept.items()
        )
        with torch.no_grad():
            reference = model(token, cache=plain, position_ids=torch.tensor([[100]])).logits[:, -1]
        torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
        return
    torch.testing.assert_close(ours, hand_masked_logits(model, ids, full, kept, token), rtol=1e-4, atol=1e-4)


def test_lacache_layers_keep_shifted_spans_that_cover_more_together():
    model = tiny_model("llama", layers=4)
    ids = prompt_ids(120)
    full, _ = prefill(model, ids)
    compressed, _ = prefill(model, ids, get_press("lacache", budget=40, window_size=W, span=2))
    kept = [
        set(kept_positions(full.layers[i].keys, layer.keys)[0, 0].tolist()) for i, layer in enumerate(compressed.layers)
    ]
    assert kept[0] != kept[1]
    assert len(set.union(*kept)) > 40


def test_random_is_seeded():
    q, k, v = torch.randn(1, 2, 50, 8), torch.randn(1, 2, 50, 8), torch.randn(1, 2, 50, 8)
    a = get_scorer("random", seed=1, window_size=4).select(q, k, v, budget=20)
    assert torch.equal(a, get_scorer("random", seed=1, window_size=4).select(q, k, v, budget=20))
    assert not torch.equal(a, get_scorer("random", seed=2, window_size=4).select(q, k, v, budget=20))


def test_streamingllm_and_knorm_by_hand():
    k = torch.zeros(1, 1, 20, 2)
    k[0, 0, :, 0] = torch.arange(20.0)  # key norm grows with position
    q = torch.zeros(1, 1, 20, 2)
    idx = get_scorer("streamingllm", window_size=2, sinks=3).select(q, k, k, budget=8)
    assert idx[0, 0].tolist() == [0, 1, 2, 15, 16, 17, 18, 19]
    idx = get_scorer("knorm", window_size=2).select(q, k, k, budget=5)
    assert idx[0, 0].tolist() == [0, 1, 2, 18, 19]


@pytest.mark.parametrize(
    "method,tokens",
    [("restkv", 2000), ("tova", 2000), ("h2o", 300), ("streamingllm", 300), ("lacache", 300), ("snapkv", 300)],
)
def test_decode_budget_holds_the_cache_size_over_long_generation(method, tokens):
    model = tiny_model("llama", layers=2)
    ids = prompt_ids(60)
    press = get_press(method, budget=40, window_size=W, decode_budget=40)
    cache = DynamicCache(config=model.config)
    sizes = []
    with torch.no_grad(), press(model):
        logits = model(ids, cache=cache).logits[:, -1]
        for step in range(tokens):
            token = logits.argmax(-1, keepdim=True)
            logits = model(token, cache=cache, position_ids=torch.tensor([[60 + step]])).logits[:, -1]
            sizes.append(max(layer.keys.shape[2] for layer in cache.layers))
    assert max(sizes) <= 40 and sizes[-1] == 40
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("method", ["restkv", "h2o", "streamingllm"])
def test_decode_eviction_keeps_decoding_consistent_with_kept_entries(method):
    model = tiny_model("llama", layers=2)
    gen = torch.Generator().manual_seed(3)
    ids = prompt_ids(50)
    forced = torch.randint(3, 128, (1, 30), generator=gen)  # a fixed continuation, fed token by token
    press = get_press(method, budget=24, window_size=W, decode_budget=24, every=4)
    cache, _ = prefill(model, ids, press)
    full, _ = prefill(model, ids)
    with torch.no_grad():
        for step in range(29):
            token, position = forced[:, step : step + 1], torch.tensor([[50 + step]])
            with press(model):
                model(token, cache=cache, position_ids=position)
            model(token, cache=full, position_ids=position)
        # layer 0's keys depend only on tokens and positions: each kept one is a real entry
        first = kept_positions(full.layers[0].keys, cache.layers[0].keys)
        assert first.shape[-1] <= 24 + 3 and (first >= 50).any(), "generated tokens are kept too"
        # a plain cache holding exactly the kept entries, decoded by transformers alone
        plain = plain_copy(model, cache)
        last, position = forced[:, 29:30], torch.tensor([[79]])
        with press(model):
            ours = model(last, cache=cache, position_ids=position).logits[:, -1]
        reference = model(last, cache=plain, position_ids=position).logits[:, -1]
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_decode_budget_errors():
    with pytest.raises(ValueError, match="decode_budget must be an integer larger than window_size"):
        get_press("restkv", budget=64, decode_budget=16)
    with pytest.raises(ValueError, match="not supported with the adakv allocator"):
        get_press("adakv", budget=64, decode_budget=64)
    with pytest.raises(ValueError, match="every must be a positive integer"):
        get_press("tova", budget=64, decode_budget=64, every=0)
