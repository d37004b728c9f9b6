"""Answer-complete stops: the rules on hand-written texts, and the engine stopping rows early
without changing their tokens or their scores."""

import pytest

from restkv.eval.engine import Engine
from restkv.eval.runner import run_sweep, setting_of
from restkv.eval.store import ResultStore
from restkv.eval.tasks import ruler
from restkv.eval.tasks.base import Sample, string_match_all
from restkv.eval.tasks.stops import AnswerStop, complete_lines
from restkv.specs import MethodConfig
from tiny_models import TinyLoaded, prompt_ids, tiny_model

CONFIGS = [MethodConfig.make("full")] + [
    MethodConfig.make(m, 24, window_size=8) for m in ("restkv", "snapkv", "h2o", "streamingllm")
]


def stop(rule, *answers):
    return AnswerStop(rule, tuple(a.lower() for a in answers))


def test_all_answers_waits_for_every_answer_in_any_case():
    rule = stop("all_answers", "9630891", "AbC")
    assert not rule.complete(":\n\n1. 9630891\n2. 963")
    assert rule.complete(":\n\n1. 9630891\n2. abc")
    assert not stop("all_answers").complete("anything")  # no answers: nothing completes


def test_any_answer_stops_at_the_first():
    rule = stop("any_answer", "Paris", "the capital")
    assert not rule.complete(" It is Lyon")
    assert rule.complete(" It is PARIS")


def test_answer_lines_counts_complete_lines_with_content():
    assert complete_lines(":\n\n1. 963\n2. 96") == 1  # ":" and the empty line hold nothing; "2. 96" is open
    rule = stop("answer_lines", "9630891")  # one answer: done after 1 + 2 complete lines
    assert not rule.complete(":\n\n1. 963\n2. 963\n3. 963")
    assert rule.complete(":\n\n1. 963\n2. 963\n3. 963\n")
    assert rule.complete(" 9630891")  # or as soon as the answer is there
    assert not rule.complete(" The grass is green. " * 20)  # one long line never completes


def test_unknown_rule_and_samples_without_one():
    with pytest.raises(ValueError, match="unknown answer-stop rule 'line'"):
        AnswerStop("line", ())
    assert AnswerStop.of(Sample("s", "p", ["x"])) is None
    assert AnswerStop.of(Sample("s", "p", ["X"], stop="all_answers")) == AnswerStop("all_answers", ("x",))


@pytest.mark.parametrize(
    "prediction",
    [
        ":\n\n1. 9630891\n2. 9630891\n3. 96308",  # right, in a list: stops after the value
        ":\n\n1. 963\n2. 963\n3. 963\n4. 963\n5.",  # wrong, in a list: stops after 3 lines
        ":\n\n* 413\n* 9630891\n* 413",  # right on its second line
        "\n\nThe grass is green. The sky is blue. The sun is yellow. 9630891",  # one line
    ],
)
def test_a_stopped_prediction_scores_as_the_whole(prediction):
    sample = Sample("s", "p", ["9630891"], stop="answer_lines")
    rule = AnswerStop.of(sample)
    cut = next((prediction[:k] for k in range(1, len(prediction) + 1) if rule.complete(prediction[:k])), prediction)
    assert string_match_all(cut, sample.answers) == string_match_all(prediction, sample.answers)


def test_ruler_samples_declare_their_rule():
    count = lambda text: len(text) // 4  # noqa: E731
    assert ruler.ruler_samples("niah_single_1", 1, 400, count)[0].stop == "answer_lines"
    assert ruler.ruler_samples("cwe", 1, 400, count)[0].stop == "answer_lines"


def numbers(ids):
    """A text reader for the tiny models: token ids as space-separated numbers."""
    return "".join(f" {t}" for t in ids)


@pytest.mark.parametrize("batch", [1, 4])
def test_stopped_tokens_are_the_prefix_of_unstopped_ones(batch):
    model = tiny_model("llama")
    ids = prompt_ids(70)
    engine = Engine(model, CONFIGS, text=numbers)
    whole = {o.config: o for o in engine.run(ids, 8, batch=batch)}
    # the full cache's answer is complete after its third token; other rows stop if they write it
    full = whole[CONFIGS[0]].token_ids
    answer = AnswerStop("all_answers", (numbers(full[:3]).strip(),))
    stopped = {o.config: o for o in engine.run(ids, 8, batch=batch, answer=answer)}
    assert stopped[CONFIGS[0]].token_ids == full[:3] and stopped[CONFIGS[0]].stopped == "answer"
    for config in CONFIGS:
        cut, rest = stopped[config].token_ids, whole[config].token_ids
        assert cut == rest[: len(cut)], config.label
        if stopped[config].stopped == "limit":
            assert cut == rest and len(cut) == 8
        else:
            assert answer.complete(numbers(cut)) and not answer.complete(numbers(cut[:-1]))
    assert whole[CONFIGS[0]].stopped == "limit"


def test_answer_stops_need_a_text_reader():
    engine = Engine(tiny_model("llama"), CONFIGS[:1])
    with pytest.raises(ValueError, match="text reader"):
        engine.run(prompt_ids(40), 4, answer=AnswerStop("all_answers", ("x",)))


def test_the_runner_stops_rows_and_keeps_their_scores(tmp_path):
    loaded = TinyLoaded()
    prompt = "abcdefghijklmnopqrstuvwxyz" * 3
    # first the whole answers, then answers taken from the full cache's text, with and without stops
    with ResultStore(tmp_path / "a.sqlite", writer=True) as store:
        run_sweep(loaded, "t", [Sample("s", prompt, ["zz"], 10)], CONFIGS, store, lambda p, s: 0.0, progress=False)
        full_text = next(r["prediction"] for r in store.rows(task="t") if r["method"] == "full")
    answers = [full_text[2:4]]
    score = lambda p, s: string_match_all(p, s.answers)  # noqa: E731
    rows = {}
    for rule in (None, "answer_lines"):
        sample = Sample("s", prompt, answers, 10, stop=rule)
        with ResultStore(tmp_path / f"{rule}.sqlite", writer=True) as store:
            run_sweep(loaded, "t", [sample], CONFIGS, store, score, progress=False, batch=2)
            rows[rule] = {(r["method"], r["budget"]): r for r in store.rows(task="t")}
    for key, row in rows["answer_lines"].items():
        whole = rows[None][key]
        assert row["score"] == whole["score"] and whole["prediction"].startswith(row["prediction"])
        assert row["extra"]["stopped"] in ("eos", "answer", "limit")
    assert rows["answer_lines"][("full", None)]["extra"]["stopped"] == "answer"
    assert len(rows["answer_lines"][("full", None)]["prediction"]) <= 4 < len(full_text)


def test_the_stop_rule_is_part_of_the_setting_only_when_set():
    loaded = TinyLoaded()
    plain, stopped = Sample("s", "p", ["x"]), Sample("s", "p", ["x"], stop="all_answers")
    assert setting_of(loaded, plain, {}) != setting_of(loaded, stopped, {})
    assert setting_of(loaded, plain, {}) == setting_of(loaded, Sample("s", "p", ["y"]), {})


def test_static_decoding_stops_rows_where_the_eager_loop_does():
    model, ids = tiny_model("llama"), prompt_ids(70)
    whole = Engine(model, CONFIGS[:1], text=numbers).run(ids, 8, batch=1)[0].token_ids
    answer = AnswerStop("all_answers", (numbers(whole[:3]).strip(),))
    eager = Engine(model, CONFIGS, text=numbers).run(ids, 8, batch=1, answer=answer)
    static = Engine(model, CONFIGS, text=numbers, compile="static").run(ids, 8, batch=1, answer=answer)
    assert static[0].token_ids == whole[:3] and static[0].stopped == "answer"
    for a, b in zip(eager, static):
        assert (a.token_ids, a.stopped) == (b.token_ids, b.stopped), a.config.label
        assert b.kl == pytest.approx(a.kl, abs=1e-5)
