"""Prefill once, compress many: the engine must give what the press gives, method by method."""

import pytest
import torch
from transformers import DynamicCache

from restkv.cache import cache_bytes, fork_cache, rewind_rows, rewindable, stack_caches
from restkv.compress import plan_budgets
from restkv.eval.engine import Engine, kl_and_top1
from restkv.generation import greedy_decode
from restkv.press import get_press, hooks_only_press
from restkv.specs import MethodConfig
from tiny_models import prompt_ids, tiny_model

CONFIGS = [MethodConfig.make("full")] + [
    MethodConfig.make(m, 24, window_size=8)
    for m in ("restkv", "snapkv", "pyramidkv", "h2o", "tova", "streamingllm", "knorm")
]


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
def test_engine_caches_and_tokens_equal_the_press(family):
    model = tiny_model(family)
    ids = prompt_ids(90)
    engine = Engine(model, CONFIGS)
    record = engine.prefill(ids)
    outcomes = {o.config: o for o in engine.run(ids, max_new_tokens=6)}
    for config in CONFIGS:
        press = config.press()
        cache = DynamicCache(config=model.config)
        with torch.no_grad(), press(model):
            model(ids, cache=cache, use_cache=True)
        ours, _, _ = engine.compressed_cache(record, config)
        for a, b in zip(cache.layers, ours.layers):
            assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
        tokens, *_ = greedy_decode(model, ids, press, max_new_tokens=6)
        assert outcomes[config].token_ids == tokens, config.label
    # the record itself is untouched by all those compressions
    assert all(layer.keys.shape[2] == min(90, layer.keys.shape[2]) for layer in record.cache.layers)
    assert record.cache.layers[-1].keys.shape[2] == 90


def test_full_config_has_zero_kl_and_compressed_configs_report_fidelity():
    model = tiny_model("llama")
    outcomes = Engine(model, CONFIGS).run(prompt_ids(90), max_new_tokens=6)
    full = outcomes[0]
    assert full.config.method == "full" and full.kl == 0.0 and full.top1 == 1.0
    assert full.kept_entries == 90 * 2 * 3
    for o in outcomes[1:]:
        assert o.kept_entries == 24 * 2 * 3
        assert o.kv_bytes == o.kept_entries * 2 * 16 * 4  # keys and values, head_dim 16, float32
        assert o.kl is not None and o.kl >= 0 and 0 <= o.top1 <= 1
    assert any(o.kl > 0 for o in outcomes[1:]), "evicting three quarters of a random prompt changes something"


def test_fork_cache_does_not_share_a_future():
    model = tiny_model("llama")
    engine = Engine(model, CONFIGS[:2])
    record = engine.prefill(prompt_ids(60))
    cache, _, _ = engine.compressed_cache(record, CONFIGS[1])
    fork = fork_cache(cache)
    engine.decode(cache, record.last_logits, 60, 4, ())
    assert cache.layers[0].keys.shape[2] == 24 + 3 and fork.layers[0].keys.shape[2] == 24
    assert fork.restkv_state.next_pos.item() == 60


def test_kl_and_top1_by_hand():
    ref = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    other = torch.tensor([[0.0, 0.0], [0.0, 2.0]])
    kl, top1 = kl_and_top1(ref, other)
    p = torch.softmax(torch.tensor([2.0, 0.0]), 0)
    expected = (p * (p.log() - p.flip(0).log())).sum().item() / 2
    assert kl == pytest.approx(expected) and top1 == 0.5


def test_method_config_labels_and_press():
    assert MethodConfig.make("pyramidkv", 64).press().allocator == "pyramid"
    assert MethodConfig.make("restkv", 64, allocator="pyramid").label == "restkv+pyramid"
    assert MethodConfig.make("restkv", 64, window_size=8).label == "restkv(window_size=8)"
    assert MethodConfig.make("full", 64).budget is None
    assert get_press("restkv", budget=64, allocator="pyramid").allocator == "pyramid"


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
def test_batched_decoding_equals_one_config_at_a_time(family):
    model = tiny_model(family)
    configs = CONFIGS + [MethodConfig.make("adakv", 24, window_size=8), MethodConfig.make("restkv", 40, window_size=8)]
    engine = Engine(model, configs)
    ids = prompt_ids(90)
    one = {o.config: o for o in engine.run(ids, max_new_tokens=6, batch=1)}
    together = {o.config: o for o in engine.run(ids, max_new_tokens=6, batch=4)}
    for config in configs:
        a, b = one[config], together[config]
        assert a.token_ids == b.token_ids, config.label
        assert a.kept_entries == b.kept_entries and a.kv_bytes == b.kv_bytes
        assert b.kl == pytest.approx(a.kl, abs=1e-5) and b.top1 == a.top1
        if config.method != "full":
            assert b.decode_ms_per_token is None and a.decode_ms_per_token > 0


@pytest.mark.parametrize("method", ["restkv", "h2o", "streamingllm"])
def test_engine_decoding_with_eviction_matches_the_press(method):
    """The engine appends into reserved room; eviction while decoding must still be honoured."""
    model, ids = tiny_model("llama"), prompt_ids(80)
    config = MethodConfig.make(method, 24, window_size=8, decode_budget=24, every=4)
    outcome = Engine(model, [MethodConfig.make("full"), config]).run(ids, 30, set(), batch=1)[1]
    tokens, _, _, _ = greedy_decode(model, ids, config.press(), 30, set())
    assert outcome.token_ids == tokens and len(tokens) == 30


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
def test_rows_that_finish_leave_the_batch_and_the_others_decode_as_before(family):
    model = tiny_model(family)
    engine = Engine(model, CONFIGS)
    ids = prompt_ids(90)
    free = {o.config: o.token_ids for o in engine.run(ids, max_new_tokens=12, batch=1)}

    def finish_steps(token):  # the step where each config would stop on ``token`` (12: never)
        return {c: (t.index(token) if token in t else 12) for c, t in free.items() if c.method != "full"}

    stop = next(t for ts in free.values() for t in ts[1:] if len(set(finish_steps(t).values())) > 1)
    one = {o.config: o.token_ids for o in engine.run(ids, max_new_tokens=12, eos_ids={stop}, batch=1)}
    together = {o.config: o.token_ids for o in engine.run(ids, max_new_tokens=12, eos_ids={stop}, batch=8)}
    assert together == one
    # the decoding loop itself, on all compressed caches as one batch from the first token
    record = engine.prefill(ids)
    built = engine.compressed_caches(record, CONFIGS[1:])
    stacked = stack_caches([b[0] for b in built], model.device)
    shapes = []  # (rows, tokens) of every forward
    hook = model.register_forward_pre_hook(
        lambda m, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    try:
        first = record.last_logits.expand(len(built), -1)
        tokens, _, _, _ = engine.decode(stacked, first, 90, 12, {stop}, hooks_only_press())
    finally:
        hook.remove()
    assert tokens == [one[c] for c in CONFIGS[1:]]
    steps = [rows for rows, _ in shapes]
    assert steps[0] == len(CONFIGS) - 1 and min(steps) < steps[0]  # the batch shrank as rows ended


def _forwards(model):
    """(rows, tokens) of every forward of ``model`` while the returned list is being filled."""
    shapes = []
    hook = model.register_forward_pre_hook(
        lambda m, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    return shapes, hook


def test_a_rewound_row_decodes_as_if_fed_only_its_kept_tokens():
    model, ids = tiny_model("llama"), prompt_ids(60)
    engine = Engine(model, CONFIGS[:3])
    record = engine.prefill(ids)
    built = engine.compressed_caches(record, CONFIGS[1:3])
    fed = torch.tensor([[5, 9, 13, 2]])
    rewound = stack_caches([b[0] for b in built], model.device)
    engine.teacher_forced_logits(rewound, fed.expand(2, -1), 60, hooks_only_press())
    assert rewindable(rewound)
    rewind_rows(rewound, 4, [1, 3])  # row 0 keeps token 5, row 1 keeps 5, 9, 13
    after = engine.teacher_forced_logits(rewound, torch.tensor([[7], [7]]), 60, hooks_only_press())[:, -1]
    for row, kept in enumerate([1, 3]):
        alone = fork_cache(built[row][0])
        want = engine.teacher_forced_logits(alone, torch.cat([fed[:, :kept], torch.tensor([[7]])], 1), 60,
                                            CONFIGS[1 + row].press())[0, -1]  # fmt: skip
        torch.testing.assert_close(after[row], want, rtol=1e-4, atol=1e-4)


def test_rows_that_agree_with_the_reference_are_not_decoded():
    """A budget above the prompt keeps everything: its greedy answer is the full cache's, read off
    the teacher-forced reference without one decoding step."""
    model, ids = tiny_model("llama"), prompt_ids(40)
    configs = [MethodConfig.make("full")] + [MethodConfig.make(m, 64, window_size=8) for m in ("snapkv", "h2o")]
    engine = Engine(model, configs)
    shapes, hook = _forwards(model)
    try:
        outcomes = engine.run(ids, max_new_tokens=10, batch=8)
    finally:
        hook.remove()
    full, *others = outcomes
    assert len(full.token_ids) == 10 and all(o.token_ids == full.token_ids for o in others)
    assert all(o.stopped == "limit" and o.kl == pytest.approx(0, abs=1e-6) for o in others)
    forced = shapes.index((2, 10))  # the reference fed to both compressed rows at once
    assert shapes[forced + 1 :] == []  # and nothing decoded after it


def test_rows_that_leave_the_reference_decode_on_from_where_they_left():
    model, ids = tiny_model("llama"), prompt_ids(90)
    engine = Engine(model, CONFIGS)
    alone = {o.config: o for o in engine.run(ids, max_new_tokens=12, batch=1)}
    shapes, hook = _forwards(model)
    try:
        together = {o.config: o for o in engine.run(ids, max_new_tokens=12, batch=8)}
    finally:
        hook.remove()
    reference = alone[CONFIGS[0]].token_ids
    agreed = [next((i for i, (a, b) in enumerate(zip(o.token_ids, reference)) if a != b), 12) for o in alone.values()]
    assert 0 < max(agreed[1:]) and min(agreed[1:]) < 12  # some rows agree for a while, some leave
    for config in CONFIGS:
        assert together[config].token_ids == alone[config].token_ids
        assert together[config].kl == pytest.approx(alone[config].kl, abs=1e-5)
    decoded = [rows for rows, tokens in shapes[shapes.index((len(CONFIGS) - 1, 12)) + 1 :]]
    assert len(decoded) < 11  # fewer decoding steps than decoding every row from its first token


def test_auto_batches_hold_what_fits_and_decode_as_one_at_a_time(monkeypatch):
    import restkv.eval.engine as engine_module

    model, ids = tiny_model("llama"), prompt_ids(90)
    engine = Engine(model, CONFIGS)
    record = engine.prefill(ids)
    assert engine._groups(record, CONFIGS[1:], "auto", 12) == [CONFIGS[1:]]  # far below 1 GiB: one batch
    full = cache_bytes(record.cache)
    monkeypatch.setattr(engine_module, "AUTO_BATCH_BYTES", 0)  # the cap is now the full cache itself
    groups = engine._groups(record, CONFIGS[1:], "auto", 12)
    per_token = full / 90
    assert [c for g in groups for c in g] == CONFIGS[1:] and len(groups) > 1
    def width(config):  # the most entries a layer keeps, plus the 12 tokens to come
        return max(plan_budgets(engine.presses[config], engine.modules, record.cache, 90).values()) + 12

    for group, after in zip(groups, groups[1:] + [None]):
        widest = max(map(width, group))
        assert len(group) == 1 or len(group) * widest * per_token <= full  # what is batched fits
        if after is not None:  # and the next config would not have
            assert (len(group) + 1) * max(widest, width(after[0])) * per_token > full
    alone = {o.config: o.token_ids for o in engine.run(ids, max_new_tokens=12, batch=1)}
    auto = {o.config: o.token_ids for o in engine.run(ids, max_new_tokens=12, batch="auto")}
    assert auto == alone


@pytest.mark.parametrize("batch", [0, -2, "all", 2.5])
def test_a_batch_that_is_neither_rows_nor_auto_is_refused(batch):
    engine = Engine(tiny_model("llama"), CONFIGS[:2])
    with pytest.raises(ValueError, match="positive number of rows"):
        engine.run(prompt_ids(20), 2, batch=batch)
