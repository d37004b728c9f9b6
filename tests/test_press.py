"""The press on tiny random-weight models of every supported family."""

import math

import pytest
import torch
from transformers import DynamicCache

from restkv import KVPress, RestKVPress, get_press
from restkv.generation import greedy_decode
from tiny_models import FAMILIES, prompt_ids, tiny_model

W = 8  # observation window used in these tests


def eos_ids(model):
    eos = model.generation_config.eos_token_id
    return set(eos if isinstance(eos, list) else [eos]) - {None}


def prefill(model, ids, press=None, **kwargs):
    cache = DynamicCache(config=model.config)
    press = press or KVPress(None)
    with torch.no_grad(), press(model):
        logits = model(ids, cache=cache, use_cache=True, **kwargs).logits
    return cache, logits


def compressible(model, cache):
    return [i for i, layer in enumerate(cache.layers) if not getattr(layer, "is_sliding", False)]


def kept_positions(full_keys, kept_keys):
    """Positions in the full cache of each kept key: [b, H_kv, kept]."""
    dist = (kept_keys.float()[..., :, None, :] - full_keys.float()[..., None, :, :]).abs().sum(-1)
    assert torch.all(dist.min(-1).values == 0), "a kept key is not a key of the prompt"
    return dist.argmin(-1)


@pytest.mark.parametrize("family", FAMILIES)
def test_budget_at_least_prompt_length_changes_nothing(family):
    model = tiny_model(family)
    ids = prompt_ids(60)
    reference = model.generate(ids, max_new_tokens=8, do_sample=False)
    press = RestKVPress(budget=64, window_size=W)
    with press(model):
        pressed = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert torch.equal(reference, pressed)
    ours, *_ = greedy_decode(model, ids, press, max_new_tokens=8, eos_ids=eos_ids(model))
    assert ours == reference[0, 60:].tolist()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_cache_keeps_kv_heads_budget_entries_and_window(family, kv_heads):
    model = tiny_model(family, kv_heads=kv_heads)
    ids = prompt_ids(120)
    full, _ = prefill(model, ids)
    press = RestKVPress(budget=40, window_size=W)
    compressed, _ = prefill(model, ids, press)
    layers = compressible(model, compressed)
    assert layers, "every family has full-attention layers"
    for i in layers:
        keys, values = compressed.layers[i].keys, compressed.layers[i].values
        assert keys.shape == values.shape == (1, kv_heads, 40, 16)
        assert torch.equal(keys[..., -W:, :], full.layers[i].keys[..., -W:, :])
        pos = kept_positions(full.layers[i].keys, keys)
        assert torch.equal(pos[..., -W:], torch.arange(120 - W, 120).expand(1, kv_heads, W))
        assert (pos.diff(dim=-1) > 0).all(), "kept entries stay in prompt order"
        assert torch.equal(values, full.layers[i].values.gather(2, pos[..., None].expand(-1, -1, -1, 16)))
    for i, layer in enumerate(compressed.layers):
        if i not in layers:  # sliding-window layers are left alone
            assert torch.equal(layer.keys, full.layers[i].keys)
    assert press.last_stats.prompt_tokens == 120
    assert press.last_stats.kept_entries == 40 * kv_heads * len(layers)


def hand_masked_logits(model, ids, full_cache, kept, next_token):
    """Next-token logits over the full cache with each layer's attention restricted to ``kept``.

    ``kept[i]`` are the kept prompt positions of layer ``i`` per KV head; the new token sees
    those and itself, nothing else.
    """
    n = ids.shape[1]
    handles = []
    for module in model.modules():
        if hasattr(module, "o_proj") and module.layer_idx in kept:
            visible = torch.zeros(1, kept[module.layer_idx].shape[1], 1, n + 1, dtype=torch.bool)
            visible.scatter_(-1, kept[module.layer_idx][:, :, None, :], True)
            visible[..., n] = True
            visible = visible.repeat_interleave(module.num_key_value_groups, dim=1)
            mask = torch.zeros(visible.shape).masked_fill(~visible, torch.finfo(torch.float32).min)

            def set_mask(mod, args, kwargs, mask=mask):
                kwargs["attention_mask"] = mask
                return args, kwargs

            handles.append(module.register_forward_pre_hook(set_mask, with_kwargs=True))
    try:
        with torch.no_grad():
            return model(next_token, cache=full_cache, position_ids=torch.tensor([[n]]), use_cache=True).logits[:, -1]
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("allocator", ["uniform", "pyramid"])
def test_first_decode_step_equals_attention_over_kept_entries(family, allocator):
    model = tiny_model(family)
    ids = prompt_ids(100)
    full, _ = prefill(model, ids)
    press = RestKVPress(budget=30, window_size=W, allocator=allocator)
    compressed, logits = prefill(model, ids, press)
    kept = {i: kept_positions(full.layers[i].keys, compressed.layers[i].keys) for i in compressible(model, compressed)}
    if allocator == "pyramid" and len(kept) > 1:
        sizes = [p.shape[-1] for p in kept.values()]
        assert len(set(sizes)) > 1 and sum(sizes) == 30 * len(sizes)
    token = logits[:, -1:].argmax(-1)
    with torch.no_grad(), press(model):
        ours = model(token, cache=compressed, position_ids=torch.tensor([[100]]), use_cache=True).logits[:, -1]
    expected = hand_masked_logits(model, ids, full, kept, token)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
def test_hf_generate_and_own_loop_agree_after_compression(family):
    model = tiny_model(family)
    ids = prompt_ids(90)
    press = RestKVPress(budget=32, window_size=W)
    with press(model):
        hf = model.generate(ids, max_new_tokens=10, do_sample=False)[0, 90:].tolist()
    ours, kept, *_ = greedy_decode(model, ids, press, max_new_tokens=10, eos_ids=eos_ids(model))
    assert ours == hf


def test_missing_position_ids_are_filled_from_tokens_seen():
    model = tiny_model("llama")
    ids = prompt_ids(80)
    press = RestKVPress(budget=24, window_size=W)
    a, logits = prefill(model, ids, press)
    b, _ = prefill(model, ids, press)
    token = logits[:, -1:].argmax(-1)
    with torch.no_grad(), press(model):
        explicit = model(token, cache=a, position_ids=torch.tensor([[80]]), use_cache=True).logits
        implicit = model(token, cache=b, use_cache=True).logits
    torch.testing.assert_close(explicit, implicit)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_attention_implementations_and_dtypes(attn, dtype):
    model = tiny_model("qwen2", attn=attn, dtype=dtype)
    ids = prompt_ids(100)
    press = RestKVPress(budget=32, window_size=W)
    tokens, kept, *_ = greedy_decode(model, ids, press, max_new_tokens=6)
    assert len(tokens) == 6 and kept == 32 * 2 * 3
    cache, logits = prefill(model, ids, press)
    assert all(layer.keys.dtype == dtype and layer.keys.shape[2] == 32 for layer in cache.layers)
    assert torch.isfinite(logits).all()


def test_sdpa_and_eager_decode_alike():
    ids = prompt_ids(100)
    press = RestKVPress(budget=32, window_size=W)
    outs = []
    for attn in ("sdpa", "eager"):
        model = tiny_model("llama", attn=attn)
        cache, logits = prefill(model, ids, press)
        token = logits[:, -1:].argmax(-1)
        with torch.no_grad(), press(model):
            outs.append(model(token, cache=cache, position_ids=torch.tensor([[100]])).logits)
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-4)


def test_compression_ratio_keeps_the_rest():
    model = tiny_model("llama")
    cache, _ = prefill(model, prompt_ids(100), RestKVPress(compression_ratio=0.75, window_size=W))
    assert {layer.keys.shape[2] for layer in cache.layers} == {math.ceil(100 * 0.25)}


def snapshot(model):
    hooks = [
        (name, len(m._forward_hooks), len(m._forward_pre_hooks))
        for name, m in model.named_modules()
        if m._forward_hooks or m._forward_pre_hooks
    ]
    return hooks, {k: v.clone() for k, v in model.state_dict().items()}, model.config._attn_implementation


def test_leaving_the_press_restores_the_model_exactly():
    model = tiny_model("llama")
    ids = prompt_ids(70)
    before_hooks, before_state, before_attn = snapshot(model)
    with torch.no_grad():
        before = model(ids).logits
    press = RestKVPress(budget=20, window_size=W)
    with press(model):
        assert snapshot(model)[0] != before_hooks, "hooks are installed inside the block"
        model.generate(ids, max_new_tokens=3, do_sample=False)
    after_hooks, after_state, after_attn = snapshot(model)
    assert after_hooks == before_hooks == [] and after_attn == before_attn
    assert all(torch.equal(before_state[k], after_state[k]) for k in before_state)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, before)


def test_an_exception_inside_the_block_still_removes_hooks():
    model = tiny_model("llama")
    with pytest.raises(RuntimeError, match="boom"):
        with RestKVPress(budget=20, window_size=W)(model):
            raise RuntimeError("boom")
    assert snapshot(model)[0] == []


def test_press_is_reusable_across_prompts():
    model = tiny_model("llama")
    press = RestKVPress(budget=24, window_size=W)
    first = greedy_decode(model, prompt_ids(80, seed=1), press, 5)[0]
    with press(model):
        for seed in (2, 1):  # a second, different prompt in the same block must not see the first's state
            ids = prompt_ids(80, seed=seed)
            out = model.generate(ids, max_new_tokens=5, do_sample=False)[0, 80:].tolist()
    assert out == first


def test_get_press_registry_and_full():
    assert get_press("restkv", budget=64).scorer.params()["alpha"] == 0.3
    assert get_press("snapkv", budget=64).name == "snapkv"
    model = tiny_model("llama")
    ids = prompt_ids(50)
    cache, _ = prefill(model, ids, get_press("full"))
    assert cache.layers[0].keys.shape[2] == 50
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        get_press("nope", budget=64)
    with pytest.raises(ValueError, match="budget"):
        get_press("restkv", budget=16, window_size=32)
    with pytest.raises(ValueError, match="exactly one"):
        RestKVPress()


def test_unsupported_architecture_is_a_clear_error():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50))
    with pytest.raises(ValueError, match="unsupported architecture 'gpt2'"):
        with RestKVPress(budget=40)(model):
            pass
