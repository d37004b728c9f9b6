"""Question-aware streaming compression (the question probes every chunk) and key re-indexing."""

import pytest
import torch
from transformers import DynamicCache

from restkv import get_press
from restkv.adapters import attention_modules, decoder_model, rotate_half
from restkv.generation import greedy_decode, prefill
from restkv.state import get_state
from tiny_models import prompt_ids, tiny_model

Q = 6  # question tokens


def prompt(n_context: int, seed: int = 1) -> torch.Tensor:
    """Context tokens from ids 3..99 and a question from ids 100..127, so probe keys are recognisable."""
    gen = torch.Generator().manual_seed(seed)
    context = torch.randint(3, 100, (1, n_context), generator=gen)
    question = torch.randint(100, 128, (1, Q), generator=gen)
    return torch.cat([context, question], dim=1)


def stream(model, ids, press, question=Q):
    cache = DynamicCache(config=model.config)
    sizes = []

    def watch(module, args, kwargs, output):
        if not getattr(kwargs["cache"].layers[module.layer_idx], "is_sliding", False):
            sizes.append(kwargs["cache"].layers[module.layer_idx].keys.shape[2])

    handles = [m.register_forward_hook(watch, with_kwargs=True) for m in attention_modules(model)]
    try:
        with torch.no_grad(), press(model):
            logits = prefill(model, ids, cache, press.chunk_size, question_tokens=question)
    finally:
        for h in handles:
            h.remove()
    return cache, logits, sizes


def full_layer0_keys(model, ids):
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(ids, cache=cache, use_cache=True)
    return cache.layers[0].keys


@pytest.mark.parametrize("method", ["restkv", "snapkv", "tova", "h2o", "streamingllm"])
def test_no_probe_entry_survives_a_chunk(method):
    model = tiny_model("llama")
    ids = prompt(300)
    press = get_press(method, budget=40, window_size="auto", window_range=(4, 16), chunk_size=64)
    cache, logits, sizes = stream(model, ids, press)
    # during the chunks a layer holds at most budget + chunk + probe; after its chunk, the budget
    assert max(sizes) <= 40 + 64 + Q
    assert all(layer.keys.shape[2] == 40 + Q for layer in cache.layers)  # budget + the question fed for real
    # layer 0's keys depend only on tokens and positions: the kept ones are context keys, then the question's
    full = full_layer0_keys(model, ids)
    kept = cache.layers[0].keys
    dist = (kept[..., :40, None, :] - full[..., None, :, :]).abs().sum(-1)
    assert torch.all(dist.min(-1).values < 1e-5), "a kept entry is not a context entry at its position"
    assert torch.all(dist.argmin(-1) < 300), "a probe entry survived"
    torch.testing.assert_close(kept[..., 40:, :], full[..., 300:, :])
    assert get_state(cache).next_pos.item() == 306
    assert torch.isfinite(logits).all()


def test_probe_queries_are_the_observation_window():
    """Probing changes what is kept: the same chunks scored by their own last queries keep other entries."""
    model = tiny_model("llama")
    ids = prompt(300)
    aware = get_press("snapkv", budget=40, window_size="auto", window_range=(4, 16), chunk_size=64)
    plain = get_press("snapkv", budget=40, window_size=6, chunk_size=64)
    a, _, _ = stream(model, ids, aware)
    b, _, _ = stream(model, ids, plain, question=0)
    assert not torch.equal(a.layers[1].keys[..., :40, :], b.layers[1].keys[..., :40, :])


def test_sliding_layers_lose_the_probe_and_keep_their_window():
    model = tiny_model("gemma3_text")  # layer 0 slides over 16 tokens, layers 1-2 are global
    ids = prompt(200)
    press = get_press("restkv", budget=40, window_size="auto", window_range=(4, 16), chunk_size=50)
    cache, _, _ = stream(model, ids, press)
    full = DynamicCache(config=model.config)
    with torch.no_grad():
        model(ids, cache=full, use_cache=True)
    torch.testing.assert_close(cache.layers[0].keys, full.layers[0].keys)
    assert cache.layers[0].cumulative_length == full.layers[0].cumulative_length == 206
    assert all(cache.layers[i].keys.shape[2] == 40 + Q for i in (1, 2))


def test_a_tail_chunk_shorter_than_the_window_works():
    model = tiny_model("llama")
    ids = prompt_ids(1034)
    for press in (
        get_press("snapkv", budget=128, window_size=32, chunk_size=512),
        get_press("restkv", budget=128, window_size="auto", chunk_size=512),
    ):
        tokens, kept, _, _ = greedy_decode(model, ids, press, 3, window=10)
        assert len(tokens) == 3 and kept > 0


def test_one_chunk_with_a_question_is_the_unchunked_auto_press():
    model = tiny_model("llama")
    ids = prompt(100)
    one = greedy_decode(model, ids, get_press("restkv", budget=40, window_size="auto", chunk_size=500), 6, window=Q)
    plain = greedy_decode(model, ids, get_press("restkv", budget=40, window_size="auto"), 6, window=Q)
    assert one[0] == plain[0]


# -- re-indexing ------------------------------------------------------------------------------


def rope(model, index, positions):
    """cos, sin of layer ``index`` at ``positions`` (``[k]`` or per head ``[H_kv, k]``), from the
    model's own rotary module."""
    rotary = decoder_model(model).rotary_emb
    x = torch.zeros(1, dtype=torch.float32)
    kwargs = {}
    layer_types = getattr(model.config, "layer_types", None)
    if layer_types and hasattr(rotary, f"{layer_types[index]}_inv_freq"):
        kwargs["layer_type"] = layer_types[index]
    return rotary(x, positions if positions.dim() == 2 else positions[None], **kwargs)


def moved(model, index, keys, old, new):
    """``keys`` rotated from positions ``old`` to ``new`` through the model's cos/sin: undo, then redo."""
    cos, sin = rope(model, index, old)
    raw = keys * cos - rotate_half(keys) * sin
    cos, sin = rope(model, index, new)
    return raw * cos + rotate_half(raw) * sin


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
def test_reindexed_keys_equal_keys_built_at_the_new_positions(family):
    model = tiny_model(family)
    ids = prompt_ids(60)
    kwargs = dict(budget=20, window_size=4)
    ours = DynamicCache(config=model.config)
    plain = DynamicCache(config=model.config)
    with torch.no_grad():
        with get_press("snapkv", rerotate=True, **kwargs)(model):
            model(ids, cache=ours, use_cache=True)
        with get_press("snapkv", **kwargs)(model):
            model(ids, cache=plain, use_cache=True)
    assert get_state(ours).next_pos.item() == 20
    for index, (a, b) in enumerate(zip(ours.layers, plain.layers)):
        torch.testing.assert_close(a.values, b.values)  # same entries kept, values untouched
        k = b.keys.shape[2]
        if getattr(b, "is_sliding", False):  # the last k tokens, moved by the same shift
            old = torch.arange(60 - k, 60)
        else:
            old = positions_of(b.keys, index, model, ids)
        expected = moved(model, index, b.keys[0].float(), old, torch.arange(20 - k, 20))
        torch.testing.assert_close(a.keys[0].float(), expected, rtol=1e-4, atol=1e-4)


def positions_of(kept, index, model, ids):
    """Original positions ``[H_kv, k]`` of kept keys, found among the layer's full keys."""
    seen = {}

    def record(module, args, kwargs, output):
        seen["keys"] = kwargs["cache"].layers[index].keys.clone()

    handle = attention_modules(model)[index].register_forward_hook(record, with_kwargs=True)
    try:
        with torch.no_grad():
            model(ids, cache=DynamicCache(config=model.config), use_cache=True)
    finally:
        handle.remove()
    dist = (kept[..., :, None, :] - seen["keys"][..., None, :, :]).abs().sum(-1)
    assert torch.all(dist.min(-1).values == 0)
    return dist.argmin(-1)[0]


def test_decoding_after_reindexing_equals_a_cache_built_at_the_new_positions():
    model = tiny_model("llama")
    ids = prompt_ids(60)
    ours = DynamicCache(config=model.config)
    plain = DynamicCache(config=model.config)
    with torch.no_grad():
        with get_press("restkv", budget=20, window_size=4, rerotate=True)(model):
            model(ids, cache=ours, use_cache=True)
        with get_press("restkv", budget=20, window_size=4)(model):
            model(ids, cache=plain, use_cache=True)
    # build the reference at positions 0..19 from the unmoved keys and the model's own cos/sin
    reference = DynamicCache(config=model.config)
    for index, layer in enumerate(plain.layers):
        old = positions_of(layer.keys, index, model, ids)
        keys = moved(model, index, layer.keys[0].float(), old, torch.arange(20))[None]
        reference.update(keys, layer.values.clone(), index)
    token = torch.tensor([[7]])
    with torch.no_grad():
        with get_press("restkv", budget=20, window_size=4, rerotate=True)(model):
            got = model(token, cache=ours, use_cache=True).logits  # position from the press: 20
        want = model(token, cache=reference, position_ids=torch.tensor([[20]]), use_cache=True).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_streamed_positions_stay_below_budget_plus_chunk_plus_question():
    model = tiny_model("llama")
    ids = prompt(1000)
    seen = []
    handle = decoder_model(model).register_forward_pre_hook(
        lambda m, a, k: seen.append(int(k["position_ids"].max())), with_kwargs=True
    )
    press = get_press("restkv", budget=40, window_size="auto", window_range=(4, 16), chunk_size=64, rerotate=True)
    try:
        tokens, _, _, _ = greedy_decode(model, ids, press, 5, window=Q)
    finally:
        handle.remove()
    assert max(seen) < 40 + 64 + Q + 5
    assert len(tokens) == 5


def test_rerotate_is_validated():
    with pytest.raises(ValueError, match="rerotate must be True or False"):
        get_press("restkv", budget=40, rerotate="yes")
    with pytest.raises(ValueError, match="not supported with the adakv allocator"):
        get_press("restkv", budget=40, allocator="adakv", rerotate=True)


# -- the evaluation engine streams chunked rows ------------------------------------------------


def test_engine_streams_chunked_rows_exactly_as_the_press_does():
    from restkv.eval.engine import Engine
    from restkv.specs import MethodConfig

    model = tiny_model("llama")
    ids = prompt(400)
    aware = MethodConfig.make("restkv", 40, window_size="auto", window_range=(4, 16), chunk_size=64, rerotate=True)
    plain = MethodConfig.make("snapkv", 40, window_size=4, chunk_size=100)
    prefilled = MethodConfig.make("snapkv", 40, window_size=4)
    engine = Engine(model, [MethodConfig.make("full"), aware, plain, prefilled])
    full_calls = []
    handle = model.register_forward_pre_hook(
        lambda m, a, k: full_calls.append(k["input_ids"].shape[1]), with_kwargs=True
    )
    try:
        outcomes = engine.run(ids, 6, configs=[aware, plain], window=Q)
    finally:
        handle.remove()
    assert max(full_calls) <= 100 + Q, "a streamed row went through a full prefill"
    # after the prefill: the budget per layer and KV head, plus the question fed for real
    for outcome, config, kept in zip(outcomes, [aware, plain], [40 + Q, 40]):
        tokens = greedy_decode(model, ids, config.press(), 6, window=Q)[0]
        assert outcome.token_ids == tokens
        assert outcome.kl is None  # no full cache in this sweep: nothing to compare with
        assert outcome.kept_entries == kept * 2 * 3
    # mixed with rows that read the shared prefill, decoded one by one and in a batch
    for batch in (1, 4):
        mixed = engine.run(ids, 6, configs=[MethodConfig.make("full"), aware, prefilled, plain], batch=batch, window=Q)
        assert mixed[1].token_ids == outcomes[0].token_ids and mixed[3].token_ids == outcomes[1].token_ids
        assert mixed[1].kl is not None and mixed[2].kl is not None


def test_each_auto_press_gets_the_question_clipped_to_its_own_range():
    from restkv.eval.engine import Engine
    from restkv.specs import MethodConfig

    model = tiny_model("llama")
    ids = prompt_ids(120)
    narrow = MethodConfig.make("restkv", 24, window_size="auto")  # range (8, 23)
    wide = MethodConfig.make("restkv", 64, window_size="auto")  # range (8, 63)
    engine = Engine(model, [narrow, wide])
    windows = {engine.presses[narrow].window_range: 23, engine.presses[wide].window_range: 40}
    together = engine.run(ids, 4, configs=[narrow, wide], window=windows)
    alone = engine.run(ids, 4, configs=[wide], window={engine.presses[wide].window_range: 40})
    assert together[1].token_ids == alone[0].token_ids
    assert together[1].kl == pytest.approx(alone[0].kl)
