"""Reconstruction probes: a context compressed before its question, read by its own re-reading."""

import pytest
import torch
from transformers import DynamicCache

from restkv import compress_context, get_press, load_context
from restkv.adapters import attention_modules, is_sliding, last_queries, layer_context
from restkv.eval.engine import Engine
from restkv.generation import decode, forward_step, prefill
from restkv.origins import track_origins
from restkv.probes import REPEAT_INSTRUCTION, reconstruction_probe, repeat_prompt_ids
from restkv.specs import MethodConfig
from tiny_models import CharTokenizer, prompt_ids, tiny_model

W, BUDGET = 8, 24
CONTEXT = "the vault code is 4821. " + "grass is green and the sky is blue. " * 3


def test_the_probe_is_the_instruction_then_the_context_without_its_begin_token():
    context = torch.tensor([[1, 7, 8, 9]])
    prompt = torch.tensor([[5, 6]])
    assert reconstruction_probe(context, prompt, bos_id=1).tolist() == [[5, 6, 7, 8, 9]]
    assert reconstruction_probe(context, prompt, bos_id=None).tolist() == [[5, 6, 1, 7, 8, 9]]
    assert repeat_prompt_ids(CharTokenizer()).shape[1] == len(REPEAT_INSTRUCTION)


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
def test_probe_entries_never_survive_and_positions_continue_from_the_context(family):
    model = tiny_model(family)
    context, probe = prompt_ids(60), prompt_ids(70, seed=3)
    press = get_press("restkv", budget=BUDGET, window_size=W, probe="reconstruct")
    cache = DynamicCache(config=model.config)
    origins = track_origins(cache)
    with press(model), torch.inference_mode():
        logits = prefill(model, context, cache, probe=probe)
    assert cache.restkv_state.next_pos.tolist() == [60]
    for module in attention_modules(model):
        layer = cache.layers[module.layer_idx]
        if is_sliding(module, layer):
            assert layer.keys.shape[-2] <= 60 and not layer.record_past  # the probe is cut out of the window
        else:
            assert layer.keys.shape[-2] == BUDGET
            kept = origins.kept[module.layer_idx]
            assert bool((kept >= 0).all()) and bool((kept < 60).all())  # every kept entry is a context token
    # the logits returned are the context's last position's, as without a probe
    plain = DynamicCache(config=model.config)
    with torch.inference_mode():
        reference = prefill(model, context, plain)
    assert torch.allclose(logits, reference, atol=1e-4)


def test_the_probe_s_queries_are_the_observation_window():
    """Kept positions equal the scorer run by hand on the context + probe's keys with the probe's
    queries as its window, the probe itself dropped."""
    model = tiny_model("llama")
    context, probe = prompt_ids(60), prompt_ids(40, seed=3)
    queries = {}

    def record(module, args, kwargs, output):
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        queries[module.layer_idx] = last_queries(module, hidden, kwargs["position_embeddings"], 40)

    modules = attention_modules(model)
    handles = [m.register_forward_hook(record, with_kwargs=True) for m in modules]
    full = DynamicCache(config=model.config)
    try:
        with torch.inference_mode():
            model(input_ids=torch.cat([context, probe], 1), cache=full, use_cache=True)
    finally:
        for h in handles:
            h.remove()
    press = get_press("restkv", budget=BUDGET, window_size=W, probe="reconstruct")
    cache = DynamicCache(config=model.config)
    with press(model), torch.inference_mode():
        prefill(model, context, cache, probe=probe)
    for position, module in enumerate(modules):
        i = module.layer_idx
        scorer = type(press.scorer)(**{**press.scorer.params(), "window_size": 40})
        k, v = full.layers[i].keys, full.layers[i].values
        observed = layer_context(module, (position, len(modules))).scorer_kwargs()
        idx = scorer.select(queries[i], k, v, budget=BUDGET + 40, **observed)[..., :BUDGET]
        expected = k.gather(2, idx[..., None].expand(-1, -1, -1, k.shape[-1]))
        assert torch.allclose(cache.layers[i].keys, expected, atol=1e-5), f"layer {i}"


def test_a_probed_context_answers_as_a_fresh_compression_does_and_questions_never_see_each_other(tmp_path):
    model, tok = tiny_model("llama"), CharTokenizer()
    press = get_press("restkv", budget=BUDGET, window_size=W, probe="reconstruct")
    ctx = compress_context(model, tok, CONTEXT, press, chat=False)
    again = compress_context(model, tok, CONTEXT, press, chat=False)
    first = ctx.ask("what is the code?", max_new_tokens=6)
    ctx.ask("what colour is grass?", max_new_tokens=6)
    assert ctx.ask("what is the code?", max_new_tokens=6) == first == again.ask("what is the code?", 6)
    assert ctx.kept_entries == again.kept_entries
    ctx.save(tmp_path / "ctx.restkv")
    assert load_context(tmp_path / "ctx.restkv", model, tok).ask("what is the code?", 6) == first
    unprobed = compress_context(model, tok, CONTEXT, get_press("restkv", budget=BUDGET, window_size=W), chat=False)
    assert not torch.equal(unprobed.cache.layers[0].keys, ctx.cache.layers[0].keys)  # the probe changed the choice


def test_the_engine_runs_a_probed_config_as_the_press_does_by_hand():
    model, tok = tiny_model("llama"), CharTokenizer()
    context, question = prompt_ids(80), prompt_ids(6, seed=5)
    config = MethodConfig.make("snapkv", BUDGET, window_size=W, probe="reconstruct")
    with pytest.raises(ValueError, match="repeat_prompt"):
        Engine(model, [config])
    repeat = repeat_prompt_ids(tok)
    engine = Engine(model, [MethodConfig.make("full"), config], repeat_prompt=repeat)
    outcome = engine.run_agnostic(context, [(question, 5)])[0][1]
    press = config.press()
    cache = DynamicCache(config=model.config)
    with torch.inference_mode(), press(model):
        prefill(model, context, cache, probe=reconstruction_probe(context, repeat))
        logits = forward_step(model, cache, question, 80)[:, -1]
        tokens, _ = decode(model, cache, logits, 86, 5)
    assert outcome.token_ids == tokens
    assert outcome.kept_entries == BUDGET * model.config.num_key_value_heads * model.config.num_hidden_layers


@pytest.mark.parametrize("batch", [1, 4])
def test_probed_configs_share_one_forward_and_keep_what_their_own_forwards_keep(batch):
    model = tiny_model("llama")
    context, question = prompt_ids(90), prompt_ids(6, seed=5)
    configs = [MethodConfig.make("full")] + [
        MethodConfig.make(m, None, window_size=W, probe="reconstruct", compression_ratio=r, **extra)
        for m, extra in (("restkv", {"temporal": "mean", "kernel_size": 15}), ("snapkv", {}), ("tova", {}))
        for r in (0.5, 0.75)
    ]
    engine = Engine(model, configs, repeat_prompt=repeat_prompt_ids(CharTokenizer()))
    probes = []
    original = engine.prefill
    engine.prefill = lambda ids, probe=None: probes.append(probe is not None) or original(ids, probe)
    shared = engine.run_agnostic(context, [(question, 5)], batch=batch)[0]
    assert probes == [False, True]  # the full cache's prefill, then one forward with the probe for all six
    engine.share_probes = False  # each config through its own press's forward, as before
    alone = engine.run_agnostic(context, [(question, 5)], batch=batch)[0]
    for config, a, b in zip(configs, shared, alone):
        assert a.token_ids == b.token_ids and a.kept_entries == b.kept_entries, config.label
    assert shared[1].kept_entries < shared[0].kept_entries


def test_models_with_sliding_layers_keep_one_forward_per_probed_config():
    from restkv.pipeline import shares_probe

    press = get_press("snapkv", budget=BUDGET, window_size=W, probe="reconstruct")
    assert shares_probe(tiny_model("llama"), press) and not shares_probe(tiny_model("gemma3_text"), press)
    assert not shares_probe(tiny_model("llama"), get_press("snapkv", budget=BUDGET, window_size=W))
