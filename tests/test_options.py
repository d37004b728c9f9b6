"""The table of option rules: every rule refuses where it says, and the docs table is made from it."""

from types import SimpleNamespace

import pytest
import torch
from transformers import DynamicCache

from restkv import get_press
from restkv.options import PLACES, RULES, check, combination_table_markdown, refusal
from restkv.press import KVPress
from restkv.quantized import quantized_cache
from restkv.scorers import get_scorer
from restkv.state import ensure_state
from tiny_models import prompt_ids, tiny_model

W = 8  # the window of every example

ONCE = "a method scored once (expected_attention)"
#: per rule (by place, option and clash), press settings that break it
PRESS_EXAMPLES = {
    ("decode_budget", "the full cache"): ("full", dict(decode_budget=40)),
    ("decode_budget", "a decode_budget not above window_size"): ("snapkv", dict(budget=24, decode_budget=W)),
    ("decode_budget", "the adakv allocator"): ("snapkv", dict(budget=24, decode_budget=40, allocator="adakv")),
    ("chunk_size", "the full cache"): ("full", dict(chunk_size=64)),
    ("chunk_size", "the adakv allocator"): ("snapkv", dict(budget=24, chunk_size=64, allocator="adakv")),
    ("chunk_size", "compression_ratio"): ("snapkv", dict(compression_ratio=0.5, chunk_size=64)),
    ("chunk_size", "a chunk_size not above window_size"): ("snapkv", dict(budget=24, chunk_size=W)),
    ("decode_budget", ONCE): ("expected_attention", dict(budget=24, decode_budget=40)),
    ("chunk_size", ONCE): ("expected_attention", dict(budget=24, chunk_size=64)),
    ("rerotate", "the adakv allocator"): ("snapkv", dict(budget=24, rerotate=True, allocator="adakv")),
    ("block_size", "the full cache"): ("full", dict(block_size=16)),
    ("block_size", "the adakv allocator"): ("snapkv", dict(budget=48, block_size=16, allocator="adakv")),
    ("block_size", "decode_budget"): ("snapkv", dict(budget=48, block_size=16, decode_budget=60)),
    ("block_size", "chunk_size"): ("snapkv", dict(budget=48, block_size=16, chunk_size=64)),
    ("block_size", "rerotate"): ("snapkv", dict(budget=48, block_size=16, rerotate=True)),
    ("block_size", "a budget below window_size + block_size - 1"): ("snapkv", dict(budget=20, block_size=16)),
    ("block_size", "probe"): ("snapkv", dict(budget=48, block_size=16, probe="reconstruct")),
    ("probe", "the full cache"): ("full", dict(probe="reconstruct")),
    ("probe", 'window_size="auto"'): ("snapkv", dict(budget=24, probe="reconstruct", window_size="auto")),
    ("probe", "chunk_size"): ("snapkv", dict(budget=24, probe="reconstruct", chunk_size=64)),
    ("probe", "the adakv allocator"): ("snapkv", dict(budget=24, probe="reconstruct", allocator="adakv")),
    ("probe", "a method that reads every prompt query (h2o)"): ("h2o", dict(budget=24, probe="reconstruct")),
    ("sparse_prefill", "the full cache"): ("full", dict(sparse_prefill="trishape")),
}


def press_rules():
    return [r for r in RULES if r.place == "press"]


def test_every_press_rule_has_an_example():
    assert {(r.option, r.clash) for r in press_rules()} == set(PRESS_EXAMPLES)


@pytest.mark.parametrize("rule", press_rules(), ids=lambda r: f"{r.option} / {r.clash}")
def test_a_press_that_breaks_a_rule_is_refused_when_built_with_that_rule_s_sentence(rule):
    method, settings = PRESS_EXAMPLES[(rule.option, rule.clash)]
    with pytest.raises(ValueError) as error:
        if method == "full":  # get_press("full", ...) refuses every parameter before the table is read
            KVPress(None, **settings)
        else:
            get_press(method, **{"window_size": W, **settings})
    fields = dict(decode_budget=None, chunk_size=None, rerotate=False, block_size=None, budget=None)
    fields.update({k: v for k, v in settings.items() if k in fields})
    scorer = None if method == "full" else get_scorer(method, window_size=W)
    assert str(error.value) == rule.sentence(SimpleNamespace(scorer=scorer, name=method, **fields))


def test_presses_that_break_no_rule_are_built():
    for settings in (dict(budget=24), dict(budget=24, decode_budget=40), dict(budget=48, block_size=16),
                     dict(budget=24, chunk_size=64, rerotate=True), dict(compression_ratio=0.5, allocator="adakv")):
        get_press("snapkv", window_size=W, **settings)  # fmt: skip


@pytest.mark.parametrize(
    "settings, sentence",
    [
        (dict(chunk_size=64), "cannot be prefilled in chunks"),
        (dict(decode_budget=40), "decode_budget evicts while decoding"),
        (dict(allocator="adakv"), "adakv allocator keeps per-head lengths"),
    ],
)
def test_quantized_cache_rules(settings, sentence):
    press = get_press("snapkv", budget=24, window_size=W, **settings)
    assert sentence in refusal("quantized cache", press)
    assert refusal("quantized cache", get_press("snapkv", budget=24, window_size=W)) is None


@pytest.mark.parametrize(
    "settings, sentence",
    [
        (dict(allocator="pyramid"), "uniform allocator"),
        (dict(decode_budget=40), "decode_budget"),
        (dict(chunk_size=64), "chunk_size"),
        (dict(window_size="auto"), 'window_size="auto"'),
        (dict(rerotate=True), "rerotate"),
        (dict(probe="reconstruct"), "probe"),
        (dict(sparse_prefill="trishape"), "sparse_prefill"),
    ],
)
def test_serving_rules(settings, sentence):
    press = get_press("restkv", budget=24, **{"window_size": W, **settings})
    assert sentence in refusal("serving", press)
    assert refusal("serving", get_press("restkv", budget=24, window_size=W)) is None
    assert refusal("serving", get_press("full")) is None


def test_serving_refuses_methods_that_read_every_query_and_sliding_models():
    assert "reads every prompt query" in refusal("serving", get_press("h2o", budget=24, window_size=W))
    press = get_press("snapkv", budget=24, window_size=W)
    assert "sliding-window" in refusal("serving", press, model=tiny_model("gemma3_text"))
    assert refusal("serving", press, model=tiny_model("llama")) is None


def _filled(press, cache=None):
    model = tiny_model("llama")
    cache = DynamicCache(config=model.config) if cache is None else cache
    with press(model), torch.inference_mode():
        model(input_ids=prompt_ids(40), cache=cache, use_cache=True)
    return cache


def test_compiled_decoding_rules_read_the_cache():
    snap = get_press("snapkv", budget=24, window_size=W)
    assert refusal("compiled decoding", snap, cache=_filled(snap)) is None
    adakv = get_press("snapkv", budget=24, window_size=W, allocator="adakv")
    assert "VarlenLayer" in refusal("compiled decoding", adakv, cache=_filled(adakv))
    quantized = _filled(snap, quantized_cache(tiny_model("llama"), "hqq", 4))
    assert "dequantizes" in refusal("compiled decoding", snap, cache=quantized)
    padded = _filled(snap)
    ensure_state(padded).prompt_mask = torch.ones(1, 40, dtype=torch.bool)
    assert "padded batch" in refusal("compiled decoding", snap, cache=padded)
    rerotating = get_press("snapkv", budget=24, window_size=W, decode_budget=30, rerotate=True)
    assert "re-index" in refusal("compiled decoding", rerotating, cache=_filled(rerotating))


def test_query_agnostic_refuses_the_auto_window():
    assert 'window_size="auto"' in refusal("query-agnostic", get_press("restkv", budget=24, window_size="auto"))
    assert refusal("query-agnostic", get_press("restkv", budget=24, window_size=W)) is None
    with pytest.raises(ValueError, match="takes the question"):
        check("query-agnostic", get_press("snapkv", budget=24, window_size="auto"))


def test_an_unknown_place_is_one_sentence():
    with pytest.raises(ValueError, match="unknown place"):
        refusal("everywhere", get_press("full"))


def test_the_docs_table_has_one_row_per_rule_in_place_order():
    rows = combination_table_markdown().strip().splitlines()[2:]
    assert len(rows) == len(RULES)
    places = [row.split("|")[1].strip() for row in rows]
    assert places == sorted(places, key=PLACES.index)
    for rule, row in zip(sorted(RULES, key=lambda r: PLACES.index(r.place)), rows):
        assert f"`{rule.option}`" in row and rule.why in row
    assert all(p in places for p in PLACES)


def test_compiled_decoding_of_several_rows_is_said_when_it_happens():
    snap = get_press("snapkv", budget=24, window_size=W)
    assert "hold one row" in refusal("compiled decoding", snap, rows=3)
    assert "hold one row" in refusal("compiled decoding", snap, rows=1, resumed=True)
    assert refusal("compiled decoding", snap, rows=1) is None
    from restkv.eval.engine import Engine
    from restkv.specs import MethodConfig

    configs = [MethodConfig.make("full"), MethodConfig.make("snapkv", 24, window_size=W),
               MethodConfig.make("tova", 24, window_size=W)]  # fmt: skip
    with pytest.warns(UserWarning, match="falls back to the eager loop: the static buffers hold one row"):
        Engine(tiny_model("llama"), configs, compile="static").run(prompt_ids(50), 4, set(), batch=2)
