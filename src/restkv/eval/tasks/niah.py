"""Needle-in-a-Haystack: one needle at each (length, depth) of a grid, scored per cell.

After Kamradt's "needle in a haystack" test (and RULER's niah tasks): a single fact is hidden at
a given depth (0 = start, 1 = end) of filler text of a given length in the model's tokens, and
the model is asked for it. The filler is real text, Paul Graham's essays (``haystack="essays"``,
see :mod:`.essays`; the default of ``restkv eval niah``), or the seeded pseudo-essay text of
:mod:`ruler` (``"synthetic"``, which results recorded before the essays became the default
used); the needle is a seven-digit code, scored by exact string match, so no judge model is
needed.
"""

from __future__ import annotations

import random

from .base import Sample, fit_to_length, string_match_all, token_counter
from .essays import essay_haystack
from .registry import TaskGroup, TaskOptions, register_family
from .ruler import _essay

#: haystack name -> ``(rng, sentences) -> list of sentences``
HAYSTACKS = {"synthetic": _essay, "essays": essay_haystack}


def by_count(sentences: list[str], depth: float) -> int:
    """Insertion index at ``depth`` of the sentence count (the synthetic haystack's sentences are alike)."""
    return round(depth * len(sentences))


def by_length(sentences: list[str], depth: float) -> int:
    """Insertion index at the sentence boundary nearest ``depth`` of the text's length (real
    sentences vary from a few words to a paragraph)."""
    target, total = depth * sum(len(x) + 1 for x in sentences), 0
    for index, sentence in enumerate(sentences):
        if total + (len(sentence) + 1) / 2 > target:
            return index
        total += len(sentence) + 1
    return len(sentences)


ANSWER_PREFIX = "The secret code for the vault is"


def niah_sample(
    sample_id: str, code: str, depth: float, filler_seed: float, length: int, count_tokens, haystack: str
) -> Sample:
    """One needle (``code`` at ``depth``) in ``haystack`` text filled to ``length`` tokens.

    The same code, depth and filler seed at several lengths give the same needle in a longer or
    shorter haystack (the haystack's start is the same; only its length changes).
    """
    if haystack not in HAYSTACKS:
        raise ValueError(f"haystack must be one of {', '.join(HAYSTACKS)}, got {haystack!r}")
    if not 0 <= depth <= 1:
        raise ValueError(f"depths must be between 0 and 1, got {depth}")
    filler, place = HAYSTACKS[haystack], by_count if haystack == "synthetic" else by_length

    def build(units: int) -> str:
        sentences = filler(random.Random(filler_seed), units)
        sentences.insert(place(sentences, depth), f"{ANSWER_PREFIX} {code}.")
        return (
            "Read the following text carefully; a secret code is hidden in it.\n\n"
            + " ".join(sentences)
            + "\n\nWhat is the secret code for the vault? Answer with the code only."
        )

    prompt = fit_to_length(build, length, count_tokens)
    meta = {"length": length, "depth": depth, "haystack": haystack}
    return Sample(sample_id, prompt, [code], 16, meta, ANSWER_PREFIX, prompt.rindex("\n\n") + 2, "all_answers")


def niah_samples(
    lengths, depths, per_cell: int, count_tokens, seed: int = 0, haystack: str = "synthetic"
) -> list[Sample]:
    """``per_cell`` samples for every (length, depth) pair, hidden in ``haystack`` text."""
    out = []
    for length in lengths:
        for depth in depths:
            for i in range(per_cell):
                rng = random.Random(f"niah-{seed}-{length}-{depth}-{i}")
                code = str(rng.randint(1_000_000, 9_999_999))
                suffix = "" if haystack == "synthetic" else f"-{haystack}"
                sample_id = f"niah-{length}-{depth:.3f}-{seed}-{i}{suffix}"
                out.append(niah_sample(sample_id, code, depth, rng.random(), length, count_tokens, haystack))
    return out


def score(prediction: str, sample: Sample) -> float:
    return string_match_all(prediction, sample.answers)


@register_family("niah")
def task_groups(loaded, options: TaskOptions) -> list[TaskGroup]:
    """One group holding the whole (length, depth) grid; ``--lengths`` defaults to ``--length``."""
    lengths = options.lengths or (options.length,)
    count = token_counter(loaded)
    samples = niah_samples(lengths, options.depths, options.samples, count, options.seed, options.haystack)
    return [TaskGroup("niah", samples, score)]


def code_positions(tokenizer, sample: Sample, chat: bool) -> list[int]:
    """Token positions of the needle's code in ``sample``'s prompt as the evaluation encodes it
    (with its answer prefix), found through the tokenizer's offsets."""
    code = sample.answers[0]
    if chat and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": sample.prompt}], add_generation_prompt=True, tokenize=False
        )
        encoded = tokenizer(text + sample.answer_prefix, add_special_tokens=False, return_offsets_mapping=True)
    else:
        text = sample.prompt
        encoded = tokenizer(text + sample.answer_prefix, return_offsets_mapping=True)
    start = text.index(code)
    end = start + len(code)
    return [i for i, (a, b) in enumerate(encoded["offset_mapping"]) if a < end and b > start]
