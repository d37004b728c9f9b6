"""The one place kept positions are chosen and applied, and the prefill plan handed to the hooks."""

import pytest
import torch
from transformers import DynamicCache

from restkv import get_press
from restkv.adapters import layer_context
from restkv.blocks import block_positions
from restkv.generation import prefill
from restkv.keep import Blocks, keep, kept_entries, kept_positions
from restkv.plan import STEP_KEYWORD, PrefillPlan, PrefillStep
from restkv.scorers import get_scorer
from restkv.state import LayerState, SequenceState
from tiny_models import prompt_ids, tiny_model


def tensors(b=2, heads=4, kv_heads=2, n=40, q=8, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, heads, q, d, generator=g), torch.randn(b, kv_heads, n, d, generator=g),
            torch.randn(b, kv_heads, n, d, generator=g))  # fmt: skip


def test_kept_positions_is_the_scorer_s_selection_the_top_of_given_scores_or_whole_blocks():
    scorer = get_scorer("snapkv", window_size=8)
    queries, keys, values = tensors()
    plain = kept_positions(scorer, queries, keys, values, 20, {})
    assert torch.equal(plain, scorer.select(queries, keys, values, budget=20))
    scores = scorer.score(queries, keys, values, budget=20)
    assert torch.equal(kept_positions(scorer, queries, keys, values, 20, {}, scores=scores), plain)
    blocks = kept_positions(scorer, queries, keys, values, 24, {}, blocks=Blocks(4, "max"))
    assert torch.equal(blocks, block_positions(scores, 24, 8, 4, "max"))


def test_per_row_budgets_select_each_row_alone_and_pad_with_leading_positions():
    scorer = get_scorer("snapkv", window_size=8)
    queries, keys, values = tensors()
    idx = kept_positions(scorer, queries, keys, values, 20, {}, row_budgets=[20, 14])
    alone = scorer.select(queries[1:], keys[1:], values[1:], budget=14)
    assert torch.equal(idx[0], scorer.select(queries[:1], keys[:1], values[:1], budget=20)[0])
    assert torch.equal(idx[1, :, 6:], alone[0]) and torch.equal(idx[1, :, :6], torch.arange(6).expand(2, 6))


def test_kept_entries_apply_the_value_hook_only_for_a_compression_that_read_queries():
    cam = get_scorer("cam", window_size=8, merge_window=4)
    queries, keys, values = tensors()
    idx = cam.select(queries, keys, values, budget=20)
    k, v = kept_entries(idx, keys, values)
    gather = idx[..., None].expand(-1, -1, -1, 16)
    assert torch.equal(k, keys.gather(2, gather)) and torch.equal(v, values.gather(2, gather))
    _, merged = kept_entries(idx, keys, values, scorer=cam, queries=queries)
    assert torch.equal(merged, cam.kept_values(queries, keys, values, idx).gather(2, gather))
    assert not torch.allclose(merged, v)


class Layer:
    def __init__(self, keys, values):
        self.keys, self.values = keys, values


def test_keep_records_which_kept_entries_are_padding_across_compressions():
    model = tiny_model("llama")
    context = layer_context(model.model.layers[0].self_attn, (0, 1))
    _, keys, values = tensors(n=12)
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, :3] = False  # row 1 is left-padded by 3
    state = SequenceState(prompt_mask=mask, budgets={0: 6})
    layer = Layer(keys, values)
    idx = torch.tensor([0, 1, 5, 9, 10, 11]).expand(2, 2, 6)
    keep(layer, idx, state, context)
    record = state.layers[0]
    assert (record.prompt_tokens, record.kept) == (12, 6)
    assert record.valid[0].all() and record.valid[1, :, :2].logical_not().all() and record.valid[1, :, 2:].all()
    assert torch.equal(layer.keys, keys[:, :, [0, 1, 5, 9, 10, 11]])
    # two tokens are appended, then the layer is cut again: appended entries are real tokens
    layer.keys, layer.values = torch.cat([layer.keys, keys[:, :, :2]], 2), torch.cat([layer.values, values[:, :, :2]], 2)
    keep(layer, torch.tensor([1, 2, 6, 7]).expand(2, 2, 4), state, context, prompt=False)
    assert state.layers[0].valid[1, 0].tolist() == [False, True, True, True]
    assert state.layers[0].prompt_tokens == 12


def test_keep_without_padding_leaves_no_mask():
    model = tiny_model("llama")
    context = layer_context(model.model.layers[0].self_attn, (0, 1))
    _, keys, values = tensors(n=12)
    state = SequenceState(layers={0: LayerState(12, 12)})
    keep(Layer(keys, values), torch.arange(4).expand(2, 2, 4), state, context)
    assert state.layers[0] == LayerState(12, 4, None)


def test_a_plan_lays_out_chunks_probes_and_the_question():
    ids = torch.arange(100)[None]
    one = list(PrefillPlan().forwards(ids))
    assert len(one) == 1 and torch.equal(one[0][0], ids) and one[0][2] == PrefillStep(100)
    chunks = list(PrefillPlan(40).forwards(ids))
    assert [c[0].shape[1] for c in chunks] == [40, 40, 20] and [c[1] for c in chunks] == [0, 40, 80]
    assert all(c[2].streaming and c[2].probe == 0 and c[2].prompt_length == 100 for c in chunks)
    probed = list(PrefillPlan(40, question_tokens=10).forwards(ids))
    assert [c[0].shape[1] for c in probed] == [50, 50, 20, 10]  # 90 context tokens in 3 chunks, each + the probe
    assert all(torch.equal(c[0][:, -10:], ids[:, 90:]) for c in probed)
    assert [c[2].probe for c in probed] == [10, 10, 10, 0] and not probed[-1][2].streaming
    fits = list(PrefillPlan(95, question_tokens=10).forwards(ids))  # the context fits one chunk: one forward
    assert len(fits) == 1 and fits[0][2].probe == 0
    for plan in (PrefillPlan(), PrefillPlan(40), PrefillPlan(40, 10), PrefillPlan(95, 10), PrefillPlan(7, 3)):
        assert plan.count(100) == len(list(plan.forwards(ids)))


@pytest.mark.parametrize("bad", [dict(chunk_size=0), dict(question_tokens=-1), dict(chunk_size=2.5)])
def test_bad_plans_are_one_sentence(bad):
    with pytest.raises(ValueError):
        PrefillPlan(**bad)


def test_every_forward_of_a_prefill_carries_its_step_and_nothing_is_left_on_the_cache():
    model = tiny_model("llama")
    seen = []
    handle = model.model.layers[0].self_attn.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw.get(STEP_KEYWORD)), with_kwargs=True
    )
    press = get_press("snapkv", budget=24, window_size=8, chunk_size=32)
    cache = DynamicCache(config=model.config)
    try:
        with press(model):
            prefill(model, prompt_ids(80), cache, press.chunk_size, question_tokens=10)
    finally:
        handle.remove()
    assert [(s.probe, s.streaming) for s in seen] == [(10, True), (10, True), (10, True), (0, False)]
    state = vars(cache.restkv_state)
    assert not {"probe", "streaming", "next_after", "prompt_length"} & set(state)
    assert cache.layers[0].keys.shape[-2] == 24 + 10  # the budget, then the question fed for real
