"""Block-sparse prefill (``sparse_prefill="trishape"``, ``"xattention"`` and ``"vertical_slash"``,
issue 37): each pattern's attention is SDPA under the same mask, a mask that keeps every block is
dense prefill, the observation window attends densely, XAttention's and vertical-slash's estimates
are the attention's mass and keep a far block that holds a query's attention, and the model gets
its own attention back after the press block."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

import restkv.sparse_prefill as sparse
from restkv import get_press
from restkv.generation import prefill
from restkv.options import check
from restkv.press import KVPress
from restkv.sparse_prefill import (
    BLOCK,
    SINK,
    Band,
    SparsePrefill,
    TriShape,
    VerticalSlash,
    XAttention,
    antidiagonal_mass,
    layout_for,
    sparse_attention,
    vertical_slash_mass,
)
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
    torch.testing.assert_close(sparse_attention(q, k, v, layout, None), expected, atol=1e-5, rtol=1e-5)


def test_a_mask_that_keeps_every_block_is_dense_attention():
    q, k, v = qkv(300)
    everything = TriShape(300, local=300, dense_tail=0)
    assert bool(everything.dense_mask().equal(torch.ones(300, 300).tril().bool()))
    torch.testing.assert_close(sparse_attention(q, k, v, everything, None), sdpa(q, k, v), atol=1e-5, rtol=1e-5)


def test_the_dense_tail_reads_every_key_and_the_rest_does_not():
    q, k, v = qkv(300)
    layout = TriShape(300, local=64, dense_tail=20)
    out, dense = sparse_attention(q, k, v, layout, None), sdpa(q, k, v)
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
    original = sparse.sparse_attention
    monkeypatch.setattr(sparse, "sparse_attention", lambda *a: calls.append(a[3]) or original(*a))
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


def padded(*tensors, to: int = 1024):
    return [torch.nn.functional.pad(t, (0, 0, 0, to - t.shape[2])) for t in tensors]


def test_antidiagonal_mass_at_stride_one_is_each_tiles_attention_mass():
    q, k, _ = qkv(1000, heads=2, kv_heads=2)
    q, k = padded(q, k)
    index = torch.arange(1024)
    weights = (q @ k.transpose(-1, -2) / 4).masked_fill((index > index[:, None]) | (index >= 1000), float("-inf"))
    blocks = 1024 // BLOCK
    true = weights.softmax(-1).view(1, 2, blocks, BLOCK, blocks, BLOCK).sum((3, 5))
    torch.testing.assert_close(antidiagonal_mass(q, k, 1, 0.25, 1000), true, atol=1e-5, rtol=1e-5)
    coarse = antidiagonal_mass(q, k, 8, 0.25, 1000)  # each of a block's 16 reduced rows sums to 1
    torch.testing.assert_close(coarse.sum(-1), torch.full((1, 2, blocks), BLOCK / 8.0))


def test_xattention_reads_the_chosen_tiles_exactly_and_keeps_first_diagonal_and_tail(monkeypatch):
    q, k, v = qkv(1000)
    layout = XAttention(1000, dense_tail=140, threshold=0.3, stride=8)
    chosen = layout.chosen_blocks(*padded(q, k.repeat_interleave(2, 1)), None)
    blocks = chosen.shape[-1]
    causal = torch.ones(blocks, blocks).tril().bool()
    assert bool((chosen <= causal).all()) and bool(chosen[..., 0].all())
    assert bool(chosen.diagonal(dim1=-2, dim2=-1).all()) and bool(chosen[..., 6:, :].eq(causal[6:]).all())
    assert not bool(chosen[..., 5, :].eq(causal[5]).all())  # a row before the tail skipped tiles
    monkeypatch.setattr(sparse, "MAX_KEPT_SHARE", 1.0)
    index = torch.arange(1000)
    tokens = chosen.repeat_interleave(BLOCK, -1).repeat_interleave(BLOCK, -2)[..., :1000, :1000] & (index <= index[:, None])
    expected = sdpa(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), tokens)
    torch.testing.assert_close(sparse_attention(q, k, v, layout, None), expected, atol=1e-5, rtol=1e-5)


def test_xattention_with_threshold_one_is_dense_attention_and_too_dense_layers_decline(monkeypatch):
    q, k, v = qkv(1000)
    everything = XAttention(1000, dense_tail=20, threshold=1.0, stride=8)
    assert sparse_attention(q, k, v, everything, None) is None  # keeps every tile: SDPA runs it
    monkeypatch.setattr(sparse, "MAX_KEPT_SHARE", 1.0)
    torch.testing.assert_close(sparse_attention(q, k, v, everything, None), sdpa(q, k, v), atol=1e-5, rtol=1e-5)


def test_xattention_keeps_a_far_block_that_holds_a_querys_attention_where_the_tri_shape_drops_it():
    q, k, _ = qkv(1024, heads=1, kv_heads=1)
    q, k = q * 0.1, k * 0.1  # flat attention everywhere ...
    k[:, :, 3 * BLOCK + 5] = 4.0  # ... but for one key in block 3 (a needle)
    q[:, :, 6 * BLOCK :] = 4.0  # that every query of blocks 6 and 7 draws on
    chosen = XAttention(1024, dense_tail=0, threshold=0.9, stride=8).chosen_blocks(q, k, None)
    assert bool(chosen[0, 0, 6:, 3].all()) and not bool(chosen[0, 0, 6, 4:6].any())
    tri = TriShape(1024, local=256, dense_tail=0).dense_mask()
    assert not bool(tri[6 * BLOCK :, 3 * BLOCK + 5].any())


def test_a_press_with_xattention_prefills_sparsely_and_exactly_as_dense_at_threshold_one(monkeypatch):
    model, ids = tiny_model("llama", attn="sdpa"), prompt_ids(2000)
    dense_logits, dense_cache = _prefill(model, ids, get_press("restkv", budget=64))
    monkeypatch.setattr(sparse, "MAX_KEPT_SHARE", 1.0)
    press = get_press("restkv", budget=64, sparse_prefill="xattention", sparse_threshold=1.0)
    logits, cache = _prefill(model, ids, press)
    torch.testing.assert_close(logits, dense_logits, atol=1e-4, rtol=1e-4)
    for ours, theirs in zip(cache.layers, dense_cache.layers, strict=True):
        torch.testing.assert_close(ours.keys, theirs.keys, atol=1e-4, rtol=1e-4)
    layouts = []
    original = sparse.sparse_attention
    monkeypatch.setattr(sparse, "sparse_attention", lambda *a: layouts.append(a[3]) or original(*a))
    press = get_press("restkv", budget=64, sparse_prefill="xattention", sparse_threshold=0.5, sparse_stride=16)
    logits, _ = _prefill(model, ids, press)
    assert layouts and set(layouts) == {XAttention(2000, press.scorer.window_size, 0.5, 16)}
    assert (logits - dense_logits).abs().max() > 1e-4
    assert press.params()["sparse_threshold"] == 0.5 and "sparse_local" not in press.params()


def test_xattention_settings_refused_in_one_sentence():
    with pytest.raises(ValueError, match="sparse_threshold must be a number in"):
        get_press("restkv", budget=64, sparse_prefill="xattention", sparse_threshold=0)
    with pytest.raises(ValueError, match="sparse_stride must be one of"):
        get_press("restkv", budget=64, sparse_prefill="xattention", sparse_stride=3)
    with pytest.raises(ValueError, match="sparse_stride must be a positive integer"):
        get_press("restkv", budget=64, sparse_prefill="xattention", sparse_stride=8.0)


def test_a_sliding_layers_band_is_its_exact_window_attention():
    q, k, v = qkv(1000)
    index = torch.arange(1000)
    for window in (16, 200, 512):
        band = (index <= index[:, None]) & (index[:, None] - index < window)
        expected = sdpa(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), band)
        torch.testing.assert_close(sparse_attention(q, k, v, Band(1000, window), None), expected, atol=1e-5, rtol=1e-5)
    assert Band(32768, 512).kept_share() < 0.05 and Band(512, 512).kept_share() == 1.0


def test_sliding_layers_prefill_as_their_own_window_under_sparse_prefill(monkeypatch):
    model, ids = tiny_model("gemma3_text", attn="sdpa"), prompt_ids(2000)
    dense_logits, dense_cache = _prefill(model, ids, get_press("restkv", budget=64))
    monkeypatch.setattr(sparse, "MAX_KEPT_SHARE", 1.0)  # every layer through flex, the full ones keeping everything
    layouts = []
    original = sparse.sparse_attention
    monkeypatch.setattr(sparse, "sparse_attention", lambda *a: layouts.append(a[3]) or original(*a))
    logits, cache = _prefill(model, ids, get_press("restkv", budget=64, sparse_prefill="xattention", sparse_threshold=1.0))
    assert Band(2000, model.config.sliding_window) in layouts and any(isinstance(x, XAttention) for x in layouts)
    torch.testing.assert_close(logits, dense_logits, atol=1e-4, rtol=1e-4)
    for ours, theirs in zip(cache.layers, dense_cache.layers, strict=True):
        torch.testing.assert_close(ours.keys, theirs.keys, atol=1e-4, rtol=1e-4)


def test_the_evaluation_engine_prefills_a_sparse_config_through_its_own_press(monkeypatch):
    from restkv.eval.engine import Engine
    from restkv.generation import greedy_decode
    from restkv.pipeline import shares_probe
    from restkv.specs import MethodConfig

    model, ids = tiny_model("llama", attn="sdpa"), prompt_ids(2000)
    dense = MethodConfig.make("restkv", 64)
    sparse_config = MethodConfig.make("restkv", 64, sparse_prefill="xattention", sparse_threshold=0.5)
    layouts = []
    original = sparse.sparse_attention
    monkeypatch.setattr(sparse, "sparse_attention", lambda *a: layouts.append(a[3]) or original(*a))
    engine = Engine(model, [dense, sparse_config])
    assert engine.streamed(sparse_config) and not engine.streamed(dense)
    outcomes = {o.config: o for o in engine.run(ids, max_new_tokens=4, batch=1)}
    assert layouts  # the shared dense prefill was not reused for it
    tokens, *_ = greedy_decode(model, ids, sparse_config.press(), max_new_tokens=4)
    assert outcomes[sparse_config].token_ids == tokens
    probed = get_press("restkv", budget=64, probe="reconstruct", sparse_prefill="xattention")
    assert not shares_probe(model, probed)


def test_vertical_slash_mass_is_the_last_queries_attention_per_key_block_and_per_distance_block():
    q, k, _ = qkv(1000, heads=2, kv_heads=2)
    q, k = padded(q, k)
    index = torch.arange(1024)
    weights = (q @ k.transpose(-1, -2) / 4).masked_fill((index > index[:, None]) | (index >= 1000), float("-inf"))
    last = weights.softmax(-1)[:, :, 1000 - sparse.LAST_QUERIES : 1000]  # [1, 2, 64, 1024]
    vertical, slash = vertical_slash_mass(q, k, 0.25, 1000)
    torch.testing.assert_close(vertical, last.sum(-2).view(1, 2, 8, BLOCK).sum(-1), atol=1e-5, rtol=1e-5)
    rows = torch.arange(1000 - sparse.LAST_QUERIES, 1000)
    distance = (rows[:, None] - index).clamp_min(0) // BLOCK  # keys past a row weigh 0
    expected = torch.zeros(1, 2, 8).index_add_(-1, distance.flatten(), last.flatten(2))
    torch.testing.assert_close(slash, expected, atol=1e-5, rtol=1e-5)
    assert float(slash[..., 0].min()) > 0 and float(slash.sum()) == pytest.approx(2 * sparse.LAST_QUERIES, rel=1e-5)


def test_vertical_slash_reads_a_needles_column_and_the_local_slash_in_every_query_block(monkeypatch):
    q, k, v = qkv(1024, heads=1, kv_heads=1)
    q, k = q * 0.1, k * 0.1  # flat attention everywhere ...
    k[:, :, 3 * BLOCK + 5] = 4.0  # ... but for one key in block 3 (a needle)
    q[:, :, 7 * BLOCK :] = 4.0  # that the last queries draw on
    layout = VerticalSlash(1024, dense_tail=0, threshold=0.5)
    chosen = layout.chosen_blocks(q, k, None)
    assert bool(chosen[0, 0, 3:, 3].all())  # the needle's column, below the diagonal, for every query block
    assert bool(chosen[0, 0, 0].equal(torch.arange(8) == 0)) and bool(chosen.diagonal(dim1=-2, dim2=-1).all())
    assert not bool(chosen[0, 0, 6, 4]) and int(chosen.sum()) < 36  # not every causal tile
    monkeypatch.setattr(sparse, "MAX_KEPT_SHARE", 1.0)
    index = torch.arange(1024)
    tokens = chosen.repeat_interleave(BLOCK, -1).repeat_interleave(BLOCK, -2) & (index <= index[:, None])
    torch.testing.assert_close(sparse_attention(q, k, v, layout, None), sdpa(q, k, v, tokens), atol=1e-5, rtol=1e-5)


def test_a_press_with_vertical_slash_prefills_sparsely_and_exactly_as_dense_at_threshold_one(monkeypatch):
    model, ids = tiny_model("llama", attn="sdpa"), prompt_ids(2000)
    dense_logits, _ = _prefill(model, ids, get_press("restkv", budget=64))
    monkeypatch.setattr(sparse, "MAX_KEPT_SHARE", 1.0)
    logits, _ = _prefill(model, ids, get_press("restkv", budget=64, sparse_prefill="vertical_slash", sparse_threshold=1.0))
    torch.testing.assert_close(logits, dense_logits, atol=1e-4, rtol=1e-4)
    layouts = []
    original = sparse.sparse_attention
    monkeypatch.setattr(sparse, "sparse_attention", lambda *a: layouts.append(a[3]) or original(*a))
    press = get_press("restkv", budget=64, sparse_prefill="vertical_slash", sparse_threshold=0.5)
    logits, _ = _prefill(model, ids, press)
    assert layouts and set(layouts) == {VerticalSlash(2000, press.scorer.window_size, 0.5)}
    assert (logits - dense_logits).abs().max() > 1e-4
    assert press.params()["sparse_threshold"] == 0.5 and "sparse_stride" not in press.params()
