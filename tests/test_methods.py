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
        "keydiff",
        "expected_attention",
        "lagkv",
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


def test_keydiff_by_hand():
    k = torch.zeros(1, 1, 10, 2)
    k[0, 0, :, 0] = 1.0  # eight keys point the same way ...
    k[0, 0, 3] = torch.tensor([0.0, 1.0])  # ... one is orthogonal to them ...
    k[0, 0, 5] = torch.tensor([-2.0, 0.0])  # ... one opposite (its length does not count)
    # mean unit key (0.7, 0.1): cosines 0.99 (the eight), 0.14 (position 3), -0.99 (position 5)
    idx = get_scorer("keydiff", window_size=2).select(k, k, k, budget=4)
    assert idx[0, 0].tolist() == [3, 5, 8, 9]
    idx = get_scorer("keydiff", window_size=2).select(k, k, k, budget=3)
    assert idx[0, 0].tolist() == [5, 8, 9]


NO_ROTATION = torch.zeros(1)  # head_dim 2: with zero frequencies queries are their own pre-RoPE form


def test_expected_attention_by_hand():
    keys = torch.zeros(1, 1, 8, 2)
    keys[0, 0, :, 0] = torch.tensor([5.0, 0.0, 3.0, 1.0, 4.0, 2.0, 0.0, 0.0])
    values = torch.ones(1, 1, 8, 2)
    queries = torch.zeros(1, 1, 8, 2)
    queries[..., 0] = 1.0  # every query (1, 0): mean (1, 0), no covariance, so logit = k0 / sqrt(2)
    scorer = get_scorer("expected_attention", window_size=2, sinks=1)
    idx = scorer.select(queries, keys, values, budget=4, inv_freq=NO_ROTATION)
    assert idx[0, 0].tolist() == [0, 4, 6, 7]  # the sink, the largest k0 among 1..5, the window
    values[0, 0, 2] = 10.0  # position 2 gets e^(-1/sqrt 2) ~ 0.49 of position 4's attention, x 10 its value norm
    assert scorer.select(queries, keys, values, budget=4, inv_freq=NO_ROTATION)[0, 0].tolist() == [0, 2, 6, 7]
    plain = get_scorer("expected_attention", window_size=2, sinks=1, use_vnorm=False)
    assert plain.select(queries, keys, values, budget=4, inv_freq=NO_ROTATION)[0, 0].tolist() == [0, 4, 6, 7]
    # queries (+-1, 0) alternate: mean 0, covariance diag(1, 0): logit = k0^2 / 4, the sign does not count
    queries[0, 0, 1::2, 0] = -1.0
    keys[0, 0, :, 0] = torch.tensor([0.0, 1.0, -4.0, 3.0, 2.0, 0.0, 0.0, 0.0])
    idx = get_scorer("expected_attention", window_size=2, sinks=0).select(
        queries, keys, torch.ones(1, 1, 8, 2), budget=4, inv_freq=NO_ROTATION
    )
    assert idx[0, 0].tolist() == [2, 3, 6, 7]
    with pytest.raises(ValueError, match="needs the layer's rotary frequencies"):
        scorer.select(queries, keys, values, budget=4)


def test_expected_attention_undoes_the_rotary_embedding_and_looks_ahead():
    gen = torch.Generator().manual_seed(0)
    d, n, future = 4, 30, 16
    inv_freq = torch.tensor([0.5, 0.05])
    pre = torch.randn(d, generator=gen)  # every query before RoPE: its mean is pre, no covariance

    def rotation(position):  # the 4 x 4 rotary matrix of rotate_half's layout, written out
        r = torch.zeros(d, d)
        for i, f in enumerate(inv_freq.tolist()):
            c, s = torch.cos(torch.tensor(position * f)), torch.sin(torch.tensor(position * f))
            r[i, i], r[i, i + 2], r[i + 2, i], r[i + 2, i + 2] = c, -s, s, c
        return r

    queries = torch.stack([rotation(t) @ pre for t in range(n)])[None, None]
    keys = torch.randn(1, 1, n, d, generator=gen)
    ahead = torch.stack([rotation(n + s) for s in range(future)]).mean(0) @ pre
    expected = keys[0, 0, :-4] @ ahead
    scorer = get_scorer("expected_attention", window_size=4, sinks=0, future_positions=future,
                        use_covariance=False, use_vnorm=False)  # fmt: skip
    idx = scorer.select(queries, keys, keys, budget=12, inv_freq=inv_freq)
    assert idx[0, 0].tolist() == sorted(expected.topk(8).indices.tolist()) + [26, 27, 28, 29]


def test_expected_attention_refuses_what_it_cannot_estimate():
    for option in ({"decode_budget": 30}, {"chunk_size": 40}):
        with pytest.raises(ValueError, match=f"{next(iter(option))} is not supported with expected_attention"):
            get_press("expected_attention", budget=30, window_size=W, **option)
    assert get_press("keydiff", budget=30, window_size=W, decode_budget=30, chunk_size=40) is not None
    # called directly with fewer queries than keys, the scorer cannot place them
    q, k = torch.randn(1, 2, 10, 4), torch.randn(1, 2, 20, 4)
    with pytest.raises(ValueError, match="needs the queries of every key"):
        get_scorer("expected_attention", window_size=2).select(q, k, k, budget=8, inv_freq=torch.ones(2))


def test_lagkv_by_hand():
    # three partitions of four tokens, each [(0.5, 0), (0, 1), (0.4, 0.5), (1, 0.3)]: every channel
    # spans [0, 1] in the next partition, so a token's spread is |a - b| / sqrt 2: 0.35, 0.71, 0.07,
    # 0.49, ranks 1, 3, 0, 2 in every partition; the last partition (nothing follows it) is kept
    part = torch.tensor([[0.5, 0.0], [0.0, 1.0], [0.4, 0.5], [1.0, 0.3]])
    k = part.repeat(3, 1)[None, None]
    lag = get_scorer("lagkv", window_size=0, sinks=0, lag_size=4)
    assert lag.select(k, k, k, budget=6)[0, 0].tolist() == [1, 5, 8, 9, 10, 11]
    assert lag.select(k, k, k, budget=8)[0, 0].tolist() == [1, 3, 5, 7, 8, 9, 10, 11]
    # shorter than sinks + 2 partitions: nothing to compare, the sinks and the most recent tokens
    short = get_scorer("lagkv", window_size=0, sinks=1, lag_size=4)
    assert short.select(k[..., :7, :], k[..., :7, :], k[..., :7, :], budget=3)[0, 0].tolist() == [0, 5, 6]


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
