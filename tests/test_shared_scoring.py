"""Scoring work shared between the configurations of a sweep: computed once per prompt and
layer, and the kept entries exactly those of each configuration compressed alone."""

import pytest
import torch
from transformers import DynamicCache

import restkv.attention as attention
from restkv.attention import accumulated_attention, sharing, window_attention
from restkv.eval.engine import Engine
from restkv.scorers import available
from restkv.specs import MethodConfig
from tiny_models import prompt_ids, tiny_model


def tensors(seed=0, heads=4, kv_heads=2, n=40, d=8):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(1, heads, n, d, generator=gen), torch.randn(1, kv_heads, n, d, generator=gen)


def test_a_shared_window_attention_is_computed_once_and_equals_the_unshared():
    queries, keys = tensors()
    alone = window_attention(queries[..., -8:, :], keys, scaling=0.3)
    memo = {}
    with sharing(memo):
        first = window_attention(queries[..., -8:, :], keys, scaling=0.3)  # a new view of the same queries
        first.zero_()  # a caller writing into its attention ...
        second = window_attention(queries[..., -8:, :], keys, scaling=0.3)
        other = window_attention(queries[..., -4:, :], keys, scaling=0.3)  # another window
        softcapped = window_attention(queries[..., -8:, :], keys, scaling=0.3, softcap=5.0)
    assert torch.equal(second, alone)  # ... does not change what the next one reads
    assert len(memo) == 3
    assert torch.equal(other, window_attention(queries[..., -4:, :], keys, scaling=0.3))
    assert torch.equal(softcapped, window_attention(queries[..., -8:, :], keys, scaling=0.3, softcap=5.0))


def test_a_shared_accumulated_attention_equals_the_unshared():
    queries, keys = tensors(1)
    mask = torch.ones(1, 40, dtype=torch.bool)
    mask[:, :5] = False
    alone = accumulated_attention(queries, keys, key_mask=mask)
    memo = {}
    with sharing(memo):
        shared = [accumulated_attention(queries, keys, key_mask=mask) for _ in range(3)]
    assert all(torch.equal(s, alone) for s in shared) and len(memo) == 1
    assert not torch.equal(accumulated_attention(queries, keys), alone)  # the mask is part of the key
    assert attention._SHARED.get() is None  # nothing shared outside the block


METHODS = [m for m in available() if m != "full"]
CONFIGS = [MethodConfig.make(m, b, window_size=8) for m in METHODS for b in (24, 40)]


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
def test_every_method_keeps_what_it_keeps_alone(family, monkeypatch):
    model = tiny_model(family)
    ids = prompt_ids(90)
    engine = Engine(model, CONFIGS)
    record = engine.prefill(ids)
    calls = []
    compute = attention._window_attention
    monkeypatch.setattr(attention, "_window_attention", lambda *a: calls.append(1) or compute(*a))
    built = engine.compressed_caches(record, CONFIGS)
    shared_calls = len(calls)
    for config, (cache, _, _) in zip(CONFIGS, built):
        press = config.press()  # the press compresses alone, with no memo
        alone = DynamicCache(config=model.config)
        with torch.no_grad(), press(model):
            model(ids, cache=alone, use_cache=True)
        for a, b in zip(alone.layers, cache.layers):
            assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values), config.label
    # SnapKV, PyramidKV, AdaKV, ReST-KV and CaM read the same window of 8 queries: one
    # computation per layer for all ten configurations; TOVA computes its last query's once
    compressed = len(built[0][1].heads_per_layer)  # sliding-window layers are left alone
    assert shared_calls == 2 * compressed
