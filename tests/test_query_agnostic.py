"""Query-agnostic evaluation: the context is compressed without its question, then asked."""

import pytest
import torch
from transformers import DynamicCache

from restkv.eval.engine import Engine
from restkv.eval.runner import run_sweep, split_question
from restkv.eval.store import ResultStore
from restkv.eval.tasks import TaskOptions, build, niah, passkey, ruler
from restkv.eval.tasks.base import Sample
from restkv.generation import decode, encode_prompt, forward_step, prefill
from restkv.specs import MethodConfig
from tiny_models import TinyLoaded, prompt_ids, tiny_model

CONFIGS = [MethodConfig.make("full")] + [
    MethodConfig.make(m, 24, window_size=8) for m in ("restkv", "snapkv", "tova", "streamingllm")
]


def by_hand(model, press, context, question, max_new_tokens):
    """The press prefills the context alone; the question is fed after; greedy answer."""
    cache = DynamicCache(config=model.config)
    with torch.no_grad(), press(model):
        prefill(model, context, cache)
        logits = forward_step(model, cache, question, context.shape[1])[:, -1]
        tokens, _ = decode(model, cache, logits, context.shape[1] + question.shape[1], max_new_tokens)
    return tokens


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
@pytest.mark.parametrize("batch", [1, 4])
def test_each_config_answers_as_the_press_on_the_context_alone_then_the_question(family, batch):
    model, ids = tiny_model(family), prompt_ids(100)
    context, question = ids[:, :88], ids[:, 88:]
    outcomes = Engine(model, CONFIGS).run_agnostic(context, [(question, 6)], batch=batch)[0]
    for config, outcome in zip(CONFIGS, outcomes):
        assert outcome.token_ids == by_hand(model, config.press(), context, question, 6), config.label
        assert outcome.prompt_tokens == 100 and outcome.extra["question_s"] > 0


def test_the_full_cache_answers_the_same_either_way_and_compression_differs_without_the_question():
    model, ids = tiny_model("llama"), prompt_ids(100)
    engine = Engine(model, CONFIGS)
    aware = engine.run(ids, 6)
    agnostic = engine.run_agnostic(ids[:, :88], [(ids[:, 88:], 6)])[0]
    assert aware[0].token_ids == agnostic[0].token_ids and agnostic[0].kl == 0.0
    # ReST-KV's window is the question when it sees it, the context's end when it does not
    kept = [engine.compressed_cache(engine.prefill(x), CONFIGS[1])[0] for x in (ids, ids[:, :88])]
    assert not torch.equal(kept[0].layers[0].keys[..., :16, :], kept[1].layers[0].keys[..., :16, :])


def test_several_questions_share_one_compression_and_answer_as_if_alone():
    model, ids = tiny_model("llama"), prompt_ids(110)
    context, first, second = ids[:, :80], ids[:, 80:95], ids[:, 95:]
    engine = Engine(model, CONFIGS)
    prefills = []
    original = engine.prefill
    engine.prefill = lambda x: prefills.append(x.shape[1]) or original(x)
    together = engine.run_agnostic(context, [(first, 5), (second, 5)], batch=2)
    assert prefills == [80]  # one prefill (and one compression per config) for both questions
    alone = [engine.run_agnostic(context, [(q, 5)], batch=2)[0] for q in (first, second)]
    for joint, single in zip(together, alone):
        assert [o.token_ids for o in joint] == [o.token_ids for o in single]
        assert [o.kl for o in joint] == pytest.approx([o.kl for o in single], abs=1e-6)


def test_an_auto_window_needs_the_question_and_is_refused():
    engine = Engine(tiny_model("llama"), [MethodConfig.make("restkv", 24, window_size="auto")])
    with pytest.raises(ValueError, match="window_size=\"auto\" takes the question"):
        engine.run_agnostic(prompt_ids(50), [(prompt_ids(5), 3)])


def test_the_split_is_the_query_aware_prompt_cut_where_the_question_starts():
    loaded = TinyLoaded()
    (group,) = build("passkey", loaded, TaskOptions(samples=1, length=400))
    sample = group.samples[0]
    ids = encode_prompt(loaded.tokenizer, sample.prompt, chat=False)
    context, question = split_question(loaded.tokenizer, sample, False, ids)
    assert torch.equal(torch.cat([context, question], 1), ids)
    assert question.shape[1] == len(sample.prompt) - sample.question_at  # one token per character


def shared_samples():
    """Two questions about one context, then one about another."""
    body, other = "a" * 40 + "b" * 30 + "\n", "c" * 70 + "\n"
    return [
        Sample("s1", body + "first?", ["x"], 3, question_at=len(body)),
        Sample("s2", body + "second one?", ["y"], 3, question_at=len(body)),
        Sample("s3", other + "third?", ["z"], 3, question_at=len(other)),
    ]


def test_a_sweep_records_the_mode_and_compresses_a_shared_context_once(tmp_path, monkeypatch):
    loaded = TinyLoaded()
    contexts = []
    original = Engine.run_agnostic

    def counting(self, context, questions, *args, **kwargs):
        contexts.append((context.shape[1], len(questions)))
        return original(self, context, questions, *args, **kwargs)

    monkeypatch.setattr(Engine, "run_agnostic", counting)
    with ResultStore(tmp_path / "r.sqlite") as store:
        counters = run_sweep(loaded, "t", shared_samples(), CONFIGS, store, lambda p, s: 1.0, progress=False,
                             query_agnostic=True)  # fmt: skip
        rows = store.rows()
        assert contexts == [(71, 2), (71, 1)] and counters["samples_run"] == 3
        assert len(rows) == 3 * len(CONFIGS) and {r["extra"]["mode"] for r in rows} == {"query-agnostic"}
        # a second run skips every finished row
        again = run_sweep(loaded, "t", shared_samples(), CONFIGS, store, lambda p, s: 1.0, progress=False,
                          query_agnostic=True)  # fmt: skip
        assert again["samples_skipped"] == 3 and len(contexts) == 2
        # and a query-aware run into the same store would replace them: refused
        with pytest.raises(ValueError, match="already holds query-agnostic rows of t"):
            run_sweep(loaded, "t", shared_samples(), CONFIGS, store, lambda p, s: 1.0, progress=False)


def test_tasks_without_a_marked_question_or_without_a_question_are_refused(tmp_path):
    loaded = TinyLoaded()
    unmarked = [Sample("u", "a" * 60 + "\nwhat?", ["x"], 3)]
    forced = [Sample("f", "", [], 1, {"prompt_ids": [5] * 40, "continuation_ids": [6] * 4}, question_at=0)]
    with ResultStore(tmp_path / "r.sqlite") as store:
        with pytest.raises(ValueError, match="does not mark where its questions start"):
            run_sweep(loaded, "u", unmarked, CONFIGS, store, None, progress=False, query_agnostic=True)
        with pytest.raises(ValueError, match="has no question"):
            run_sweep(loaded, "f", forced, CONFIGS, store, None, progress=False, query_agnostic=True)


def count_words(text: str) -> int:
    return len(text.split())


COMPARED = {
    "passkey": lambda: passkey.passkey_samples(2, 600, count_words),
    "niah": lambda: [niah.niah_sample("n", "1234", 0.5, 0.1, 600, count_words, "synthetic")],
    **{f"ruler/{t}": lambda t=t: ruler.ruler_samples(t, 1, 600, count_words) for t in ruler.SYNTHETIC},
}


@pytest.mark.parametrize("task", COMPARED)
def test_the_tasks_of_the_comparison_mark_their_question_as_the_prompts_last_line(task):
    for sample in COMPARED[task]():
        question = sample.prompt[sample.question_at :]
        assert len(question) > 20 and "\n" not in question and sample.prompt[: sample.question_at].strip()
