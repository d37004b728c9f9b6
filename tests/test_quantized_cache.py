"""A press on transformers' QuantizedCache: compress at full precision, quantize what is kept."""

import hqq  # noqa: F401  (the quantization extra: CI installs it, so a missing backend fails here, not skips)
import optimum.quanto  # noqa: F401
import pytest
import torch
from transformers import DynamicCache

from restkv.cache import cache_bytes, cache_entries
from restkv.eval.engine import Engine
from restkv.generation import prefill
from restkv.press import get_press
from restkv.quantized import parse_kv_quant, quantize_cache, quantized_cache
from restkv.specs import MethodConfig
from restkv.state import get_state, set_state
from tiny_models import prompt_ids, tiny_model

SETTINGS = [("quanto", 2), ("quanto", 4), ("hqq", 2), ("hqq", 4), ("hqq", 8)]


def pressed(model, ids, press, cache):
    with torch.no_grad(), press(model):
        logits = prefill(model, ids, cache)
    return cache, logits


def dequantized_copy(model, cache):
    """A plain cache holding exactly what the quantized one decodes from, with its press state."""
    plain = DynamicCache(config=model.config)
    for i, layer in enumerate(cache.layers):
        keys, values = layer._dequantize(layer._quantized_keys), layer._dequantize(layer._quantized_values)
        plain.update(keys, values, i)
    set_state(plain, get_state(cache).copy())
    return plain


@pytest.mark.parametrize("backend,bits", SETTINGS)
def test_the_quantized_cache_decodes_as_its_dequantized_entries_within_1e_4(backend, bits):
    model, ids = tiny_model("llama"), prompt_ids(120)
    press = get_press("restkv", budget=40, window_size=8)
    cache, logits = pressed(model, ids, press, quantized_cache(model, backend, bits, group_size=16, residual_length=8))
    assert cache_entries(cache) == 40 * 2 * 3 and type(cache.layers[0]).__name__.endswith("QuantizedLayer")
    reference = dequantized_copy(model, cache)
    token = logits.argmax(-1)[:, None]  # prefill returns the last position's logits
    with torch.no_grad(), press(model):
        for _ in range(12):  # past the residual length, so the residual is flushed into the codes once
            ours = model(token, cache=cache).logits[:, -1]
            theirs = model(token, cache=reference).logits[:, -1]
            if cache.layers[0].keys.numel() == 0:  # just flushed: the residual was requantized
                reference = dequantized_copy(model, cache)
            else:
                torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)
            token = ours.argmax(-1, keepdim=True)


@pytest.mark.parametrize("backend,bits", SETTINGS)
def test_eviction_picks_the_same_entries_as_at_full_precision_and_quantization_shrinks_them(backend, bits):
    model, ids = tiny_model("llama"), prompt_ids(120)
    press = get_press("snapkv", budget=40, window_size=8)
    plain, _ = pressed(model, ids, press, DynamicCache(config=model.config))
    quant, _ = pressed(model, ids, press, quantized_cache(model, backend, bits, group_size=16))
    for a, b in zip(plain.layers, quant.layers):
        error = (b._dequantize(b._quantized_keys) - a.keys).abs().mean() / a.keys.abs().mean()
        assert error < {1: 1, 2: 0.5, 3: 0.3, 4: 0.2, 8: 0.02}[bits]  # the same entries, up to the quantizer's error
    ratio = cache_bytes(quant) / cache_bytes(plain)
    assert ratio <= bits / 32 + 2 / 16 + 1e-6  # codes, plus at most an fp32 scale and zero point per group of 16


def test_model_generate_under_a_press_fills_a_quantized_cache():
    model, ids = tiny_model("llama"), prompt_ids(80)
    cache = quantized_cache(model, "hqq", 4, group_size=16)
    with torch.no_grad(), get_press("snapkv", budget=24, window_size=8)(model):
        out = model.generate(ids, cache=cache, max_new_tokens=5, do_sample=False)
    assert out.shape[1] == 85 and cache_entries(cache) == (24 + 4) * 2 * 3


@pytest.mark.parametrize(
    "settings,match",
    [
        (dict(chunk_size=32), "cannot be prefilled in chunks"),
        (dict(decode_budget=30), "decode_budget evicts while decoding"),
        (dict(allocator="adakv"), "adakv allocator keeps per-head lengths"),
    ],
)
def test_press_settings_a_quantized_cache_cannot_follow_are_one_sentence(settings, match):
    model = tiny_model("llama")
    press = get_press("snapkv", budget=24, window_size=8, **settings)
    with pytest.raises(ValueError, match=match):
        pressed(model, prompt_ids(80), press, quantized_cache(model, "hqq", 4))
    with pytest.raises(ValueError, match=match):
        Engine(model, [MethodConfig.make("snapkv", 24, window_size=8, **settings)], kv_quant=("hqq", 4))


@pytest.mark.parametrize("text", ["quanto:8", "hqq", "hqq:5", "fp4:4", "hqq:four"])
def test_bad_kv_quant_settings_are_one_sentence(text):
    with pytest.raises(ValueError, match="kv quantization must be BACKEND:BITS"):
        parse_kv_quant(text)


def test_the_engine_quantizes_after_compressing_and_keeps_the_full_precision_reference():
    model, ids = tiny_model("llama"), prompt_ids(100)
    configs = [MethodConfig.make("full"), MethodConfig.make("snapkv", 24, window_size=8)]
    plain = Engine(model, configs).run(ids, 6)
    quant = Engine(model, configs, kv_quant=("hqq", 8)).run(ids, 6, batch=4)
    assert quant[0].kv_bytes < plain[0].kv_bytes / 3 and quant[1].kv_bytes < plain[1].kv_bytes / 3
    assert quant[0].kept_entries == plain[0].kept_entries and quant[1].kept_entries == plain[1].kept_entries
    assert 0 < quant[0].kl < 0.01  # 8 bits: close to, not equal to, the full-precision full cache
    # the compressed, quantized cache decodes as quantize_cache of the engine's own compressed cache
    engine = Engine(model, configs[1:])
    compressed, _, _ = engine.compressed_cache(engine.prefill(ids), configs[1])
    assert cache_bytes(quantize_cache(compressed, "hqq", 8)) == quant[1].kv_bytes


@pytest.mark.parametrize("command", [["eval", "passkey"], ["bench", "memory"]])
def test_the_cli_refuses_a_bad_kv_quant_before_loading_a_model(command, tmp_path, capsys):
    from restkv.cli import main

    code = main([*command, "--kv-quant", "quanto:8", "--model", "/nonexistent", "--out", str(tmp_path / "o")])
    assert code == 2 and "kv quantization must be BACKEND:BITS" in capsys.readouterr().err
