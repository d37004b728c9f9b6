"""Decoding on static buffers (and compiled): same logits as the eager loop, buffers that never move."""

import pytest
import torch
from transformers import DynamicCache

from restkv import get_press
from restkv.generation import forward_step, generate_with_stats, greedy_decode, prefill
from restkv.static_decode import StaticDecoder, bucket, static_unsupported
from tiny_models import FAMILIES, CharTokenizer, prompt_ids, tiny_model

SETTINGS = {
    "full": None,
    "snapkv": dict(budget=8),
    "pyramid": dict(budget=16, allocator="pyramid"),  # layers keep different counts
    "decode-eviction": dict(budget=8, decode_budget=12, every=2),
}


def _press(setting):
    settings = SETTINGS[setting]
    return get_press("full") if settings is None else get_press("snapkv", window_size=4, **settings)


@torch.inference_mode()
def _filled(model, press, n=40):
    cache = DynamicCache(config=model.config)
    with press(model):
        logits = prefill(model, prompt_ids(n), cache)
    return cache, logits


@torch.inference_mode()
def _eager_logits(model, press, tokens, n=40):
    """Logits after each of ``tokens`` in the eager loop on transformers' own cache."""
    cache, _ = _filled(model, press, n)
    with press(model):
        return [forward_step(model, cache, torch.tensor([[t]]), n + i)[:, -1] for i, t in enumerate(tokens)]


@torch.inference_mode()
def _static_logits(model, press, tokens, compile=False, n=40):
    cache, _ = _filled(model, press, n)
    decoder = StaticDecoder(model, cache, len(tokens) + 1, press, compile=compile)
    return [decoder.step(torch.tensor([[t]])) for t in tokens], decoder


# gemma2 has no sdpa attention (soft-capping), so it runs eager only
ATTENTIONS = [(f, a) for f in FAMILIES for a in ("eager", "sdpa") if not (f == "gemma2" and a == "sdpa")]


@pytest.mark.parametrize("family,attn", ATTENTIONS)
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_static_buffers_give_the_eager_logits_within_1e_4(family, setting, attn):
    model, press = tiny_model(family, attn=attn), _press(setting)
    tokens = [int(t) for t in prompt_ids(14, seed=7)[0]]
    eager = _eager_logits(model, press, tokens)
    static, _ = _static_logits(model, press, tokens)
    for a, b in zip(eager, static):
        assert torch.allclose(a, b, atol=1e-4, rtol=0)


def test_layers_grow_into_the_reserved_slots_without_moving_and_stop_when_full():
    model, press = tiny_model("gemma3_text"), _press("pyramid")  # a sliding ring and uneven layers
    cache, _ = _filled(model, press)
    kept = [layer.keys.shape[-2] for layer in cache.layers]
    decoder = StaticDecoder(model, cache, 6, press, slots=max(kept[1:]) + 5)
    pointers = [layer.key_buffer.data_ptr() for layer in decoder.cache.layers]
    window = model.config.sliding_window
    for step in range(1, 6):
        decoder.step(torch.tensor([[5]]))
        lengths = [layer.length for layer in decoder.cache.layers]
        assert lengths == [min(kept[0] + step, window)] + [k + step for k in kept[1:]]
    assert [layer.key_buffer.data_ptr() for layer in decoder.cache.layers] == pointers
    assert cache.layers[1].keys.shape[-2] == kept[1]  # the prefilled cache itself is untouched
    with pytest.raises(ValueError, match="reserved slots are full"):
        decoder.step(torch.tensor([[5]]))


def test_decode_time_eviction_compacts_into_the_same_buffers():
    model, press = tiny_model(), _press("decode-eviction")
    tokens = [int(t) for t in prompt_ids(20, seed=3)[0]]
    _, decoder = _static_logits(model, press, tokens)
    for layer in decoder.cache.layers:
        assert layer.key_buffer.shape[-2] == bucket(press.decode_budget + press.every)
        assert press.decode_budget <= layer.length < press.decode_budget + press.every


def test_compiled_decoding_with_eviction_matches_the_eager_loop():
    """The one compiled test (tiny model, fixed buffers: about a minute of compiling on 2 cores)."""
    model, press = tiny_model(attn="sdpa"), _press("decode-eviction")
    tokens = [int(t) for t in prompt_ids(10, seed=5)[0]]
    eager = _eager_logits(model, press, tokens)
    compiled, decoder = _static_logits(model, press, tokens, compile=True)
    for a, b in zip(eager, compiled):
        assert torch.allclose(a, b, atol=1e-4, rtol=0)
    assert all(layer.length <= press.decode_budget + press.every for layer in decoder.cache.layers)


def test_generate_gives_the_same_tokens_on_static_buffers():
    model, tokenizer = tiny_model(), CharTokenizer()
    for setting in ("full", "decode-eviction"):
        eager = generate_with_stats(model, tokenizer, "the quick brown fox " * 3, _press(setting), 24)
        static = generate_with_stats(
            model, tokenizer, "the quick brown fox " * 3, _press(setting), 24, compile="static"
        )
        assert eager.token_ids == static.token_ids and len(eager.token_ids) == 24


@pytest.mark.parametrize(
    "settings, reason",
    [(dict(budget=8, allocator="adakv"), "VarlenLayer"), (dict(budget=8, decode_budget=12, rerotate=True), "re-index")],
)
def test_caches_that_cannot_be_static_fall_back_to_the_eager_loop_with_the_reason(settings, reason):
    model, press = tiny_model(), get_press("snapkv", window_size=4, **settings)
    cache, _ = _filled(model, press)
    assert reason in static_unsupported(cache, press)
    with pytest.raises(ValueError, match=reason):
        StaticDecoder(model, cache, 4, press)
    ids = prompt_ids(40)
    eager = greedy_decode(model, ids, press, 8)[0]
    with pytest.warns(UserWarning, match=f"falls back to the eager loop: .*{reason}"):
        fallen = greedy_decode(model, ids, press, 8, compile=True)[0]
    assert fallen == eager


def test_a_quantized_cache_falls_back():
    pytest.importorskip("hqq")
    from restkv.quantized import quantized_cache

    model = tiny_model()
    cache = quantized_cache(model, "hqq", 4, group_size=16)
    with get_press("snapkv", window_size=4, budget=8)(model), torch.inference_mode():
        prefill(model, prompt_ids(40), cache)
    assert "quantized" in static_unsupported(cache)


def test_compile_takes_true_false_or_static():
    with pytest.raises(ValueError, match="compile must be"):
        greedy_decode(tiny_model(), prompt_ids(10), None, 4, compile="yes")


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_the_engine_decodes_on_static_buffers_with_the_same_tokens_and_fidelity(family):
    from restkv.eval.engine import Engine
    from restkv.specs import MethodConfig

    model, ids = tiny_model(family), prompt_ids(80)
    configs = [MethodConfig.make("full")] + [
        MethodConfig.make(m, 24, window_size=8, **extra)
        for m, extra in (("snapkv", {}), ("h2o", dict(decode_budget=24, every=4)), ("snapkv", dict(allocator="adakv")))
    ]
    eager = Engine(model, configs).run(ids, 20, set(), batch=1)
    static = Engine(model, configs, compile="static").run(ids, 20, set(), batch=1)
    for a, b in zip(eager, static):
        assert a.token_ids == b.token_ids and len(a.token_ids) == 20
        assert b.kl == pytest.approx(a.kl, abs=1e-5) and b.top1 == a.top1
