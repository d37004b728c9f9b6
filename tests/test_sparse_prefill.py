"""Block-sparse prefill (``sparse_prefill="trishape"``, issue 37): the tri-shape attention is SDPA under
the same mask, a mask that keeps every block is dense prefill, the observation window attends
densely, and the model gets its own attention back after the press block."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

import restkv.sparse_prefill as sparse
from restkv import get_press
from restkv.generation import prefill
from restkv.options import check
from restkv.press import KVPress
from restkv.sparse_prefill import SINK, SparsePrefill, TriShape, layout_for, tri_shape_attention
from tiny_models import prompt_ids, tiny_model


def qkv(n: int, heads: int = 4, kv_heads: int = 2, d: int = 16, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(1, heads, n, d, generator=gen), torch.randn(1, kv_heads, n, d, generator=gen),
            torch.randn(1, kv_heads, n, d, generator=gen))  # fmt: skip


def sdpa(q, k, v, mask=None):
    causal = mask is None
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=True)
    return out.transpose(1, 2)


def test_tri_shape_attention_is_sdpa_under_the_same_mask():
    q, k, v = qkv(300)  # not a whole number of blocks: padded inside
    layout = TriShape(300, local=64, dense_tail=20)
    expected = sdpa(q, k, v, layout.dense_mask())
    torch.testing.assert_close(tri_shape_attention(q, k, v, layout, None), expected, atol=1e-5, rtol=1e-5)


def test_a_mask_that_keeps_every_block_is_dense_attention():
    q, k, v = qkv(300)
    everything = TriShape(300, local=300, dense_tail=0)
    assert bool(everything.dense_mask().equal(torch.ones(300, 300).tril().bool()))
    torch.testing.assert_close(tri_shape_attention(q, k, v, everything, None), sdpa(q, k, v), atol=1e-5, rtol=1e-5)


def test_the_dense_tail_reads_every_key_and_the_rest_does_not():
    q, k, v = qkv(300)
    layout = TriShape(300, local=64, dense_tail=20)
    out, dense = tri_shape_attention(q, k, v, layout, None), sdpa(q, k, v)
    torch.testing.assert_close(out[:, -20:], dense[:, -20:], atol=1e-5, rtol=1e-5)
    assert (out[:, SINK + 64 : -20] - dense[:, SINK + 64 : -20]).abs().max() > 1e-3


def test_short_prompts_and_masks_that_keep_most_blocks_stay_dense():
    assert layout_for(300, local=1024, dense_tail=32) is None  # shorter than sink + local + window
    assert layout_for(700, local=128, dense_tail=32) is None  # would keep about 69% of the blocks
    layout = layout_for(2048, local=128, dense_tail=32)
    assert layout is not None and layout.kept_share() < 0.3


def _prefill(model, ids, press):
    cache = DynamicCache(config=model.config)
    with torch.inference_mode(), press(model):
        logits = prefill(model, ids, cache)
    return logits, cache


def test_a_press_with_a_full_causal_layout_prefills_exactly_as_dense(monkeypatch):
    model, ids = tiny_model("llama", attn="sdpa"), prompt_ids(700)
    dense_logits, dense_cache = _prefill(model, ids, get_press("restkv", budget=64))
    called = []
    monkeypatch.setattr(SparsePrefill, "layout", lambda self, n, probe: called.append(n) or TriShape(n, n, 0))
    logits, cache = _prefill(model, ids, get_press("restkv", budget=64, sparse_prefill="trishape"))
    assert called == [700]
    torch.testing.assert_close(logits, dense_logits, atol=1e-4, rtol=1e-4)
    for ours, theirs in zip(cache.layers, dense_cache.layers, strict=True):
        torch.testing.assert_close(ours.keys, theirs.keys, atol=1e-4, rtol=1e-4)


def test_sparse_prefill_runs_flex_on_the_prompt_only_and_gives_the_model_back(monkeypatch):
    model, ids = tiny_model("llama", attn="sdpa"), prompt_ids(2000)
    dense_logits, _ = _prefill(model, ids, get_press("restkv", budget=64))
    calls = []
    original = sparse.tri_shape_attention
    monkeypatch.setattr(sparse, "tri_shape_attention", lambda *a: calls.append(a[3]) or original(*a))
    press = get_press("restkv", budget=64, sparse_prefill="trishape", sparse_local=128)
    logits, cache = _prefill(model, ids, press)
    window = press.scorer.window_size
    assert calls and all(layout == TriShape(2000, 128, window) for layout in calls)
    assert len(calls) == model.config.num_hidden_layers  # one prompt forward, every layer
    assert (logits - dense_logits).abs().max() > 1e-4  # the prompt really attended sparsely
    assert cache.layers[0].keys.shape[-2] == 64
    assert model.config._attn_implementation == "sdpa"
    with pytest.raises(RuntimeError, match="inside"), press(model):
        assert model.config._attn_implementation == sparse.SPARSE_ATTENTION
        raise RuntimeError("inside")
    assert model.config._attn_implementation == "sdpa"


def test_a_probe_is_part_of_the_dense_tail():
    model = tiny_model("llama", attn="sdpa")
    press = get_press("restkv", budget=64, sparse_prefill="trishape", sparse_local=128)
    switch = SparsePrefill(model, press)
    try:
        assert switch.layout(4000, 500).dense_tail == press.scorer.window_size + 500
    finally:
        switch.restore()
    assert model.config._attn_implementation == "sdpa"


def test_what_sparse_prefill_refuses_is_one_sentence():
    with pytest.raises(ValueError, match="sparse_prefill must be one of"):
        get_press("restkv", budget=64, sparse_prefill="diagonal")
    with pytest.raises(ValueError, match="needs an eviction method"):
        KVPress(None, sparse_prefill="trishape")
    with pytest.raises(ValueError, match="serving does not support sparse_prefill"):
        check("serving", get_press("restkv", budget=64, sparse_prefill="trishape"))
    eager = tiny_model("llama", attn="eager")
    with (
        pytest.raises(ValueError, match="runs on SDPA attention"),
        get_press("restkv", budget=64, sparse_prefill="trishape")(eager),
    ):
        pass
    assert eager.config._attn_implementation == "eager"
