"""Methods extend the core through hooks on their scorer, and presses share one set of settings."""

import dataclasses

import pytest
import torch
from transformers import DynamicCache

from restkv import KVPress, RestKVPress, get_press
from restkv.adapters import attention_modules, layer_context
from restkv.press import PRESS_SETTINGS
from restkv.scorers import get_scorer
from restkv.scorers.snapkv import SnapKVScorer
from restkv.state import get_state
from tiny_models import prompt_ids, tiny_model


def test_press_settings_are_the_dataclass_fields():
    init_fields = {f.name for f in dataclasses.fields(KVPress) if f.init}
    assert set(PRESS_SETTINGS) == init_fields - {"scorer", "window_range"}
    assert "last_stats" not in init_fields


def test_restkv_press_and_get_press_build_the_same_press():
    settings = dict(budget=64, alpha=0.5, decode_budget=80, every=4, window_size="auto", kernel_size=9)
    a, b = RestKVPress(**settings), get_press("restkv", **settings)
    assert type(a) is RestKVPress and a.params() == b.params()
    assert a.window_range == b.window_range == (8, 63)


def test_default_hooks_keep_the_last_window_queries():
    scorer = get_scorer("snapkv", window_size=4)
    queries = torch.randn(1, 4, 10, 8)
    keys = torch.randn(1, 2, 10, 8)
    memory = scorer.remember(queries, keys, None, None)
    assert torch.equal(memory, queries[..., -4:, :])
    new = torch.randn(1, 4, 1, 8)
    grown = scorer.observe_step(memory, new, keys, None)
    assert grown.shape[-2] == 4 and torch.equal(grown[..., -1:, :], new)
    assert torch.equal(grown[..., :3, :], memory[..., 1:, :])


def test_h2o_decode_select_leaves_its_memory_untouched_with_one_query_head_per_kv_head():
    model = tiny_model("llama", kv_heads=4)
    module = attention_modules(model)[0]
    context = layer_context(module, (0, 3))
    scorer = get_scorer("h2o", window_size=2)
    memory = torch.rand(1, 4, 12)
    before = memory.clone()
    keys = values = torch.randn(1, 4, 12, 16)
    idx, kept_memory = scorer.decode_select(memory, keys, values, 6, context)
    assert torch.equal(memory, before), "scoring wrote into the accumulated attention"
    assert torch.equal(kept_memory, before.gather(2, idx))
    assert (idx[..., -2:] == torch.tensor([10, 11])).all()  # the recent window is always kept


@dataclasses.dataclass
class NewestFirst(SnapKVScorer):
    """A method with a decoding rule of its own: while generating, keep the newest entries."""

    calls: list = dataclasses.field(default_factory=list)

    def decode_select(self, memory, keys, values, budget, context):
        self.calls.append(keys.shape[-2])
        n = keys.shape[-2]
        idx = torch.arange(n - budget, n).expand(keys.shape[0], keys.shape[1], budget)
        return idx, memory


def test_a_new_decoding_rule_needs_only_a_scorer_hook():
    model = tiny_model("llama")
    scorer = NewestFirst(window_size=4)
    press = KVPress(scorer, budget=20, decode_budget=16, every=2)
    cache = DynamicCache(config=model.config)
    ids = prompt_ids(40)
    with torch.no_grad(), press(model):
        model(ids, cache=cache, use_cache=True)
        token = ids[:, -1:]
        for _ in range(6):
            model(token, cache=cache, use_cache=True)
            keys = cache.layers[0].keys
    assert scorer.calls, "the press never asked the scorer's decode_select"
    assert keys.shape[-2] <= 16 + 2
    assert all(layer.keys.shape[-2] == keys.shape[-2] for layer in cache.layers)


@dataclasses.dataclass
class ZeroValues(SnapKVScorer):
    """A method that rewrites kept values (as CaM merges evicted ones into them)."""

    def kept_values(self, queries, keys, values, kept, *, scaling=None, key_mask=None, softcap=None):
        return torch.zeros_like(values)


def test_value_merging_is_a_scorer_hook():
    model = tiny_model("llama")
    cache = DynamicCache(config=model.config)
    with torch.no_grad(), KVPress(ZeroValues(window_size=4), budget=12)(model):
        model(prompt_ids(30), cache=cache, use_cache=True)
    assert all(layer.values.shape[-2] == 12 and not layer.values.any() for layer in cache.layers)
    assert set(get_state(cache).layers) == {0, 1, 2}


@pytest.mark.parametrize("family, softcap", [("llama", None), ("gemma2", 50.0)])
def test_layer_context_reads_the_family(family, softcap):
    model = tiny_model(family)
    module = attention_modules(model)[1]
    context = layer_context(module, (1, 3))
    assert context.index == 1 and context.position == (1, 3)
    assert context.softcap == softcap
    assert context.o_proj is module.o_proj.weight
    assert set(context.scorer_kwargs()) == {"o_proj", "scaling", "softcap", "layer"}
