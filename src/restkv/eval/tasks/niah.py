"""Needle-in-a-Haystack: one needle at each (length, depth) of a grid, scored per cell.

After Kamradt's "needle in a haystack" test (and RULER's niah tasks): a single fact is hidden at
a given depth (0 = start, 1 = end) of filler text of a given length in the model's tokens, and
the model is asked for it. The filler is the seeded pseudo-essay text of :mod:`ruler`; the
needle is a seven-digit code, scored by exact string match, so no judge model is needed.
"""

from __future__ import annotations

import random

from .base import Sample, fit_to_length, string_match_all, token_counter
from .registry import TaskGroup, TaskOptions, register_family
from .ruler import _essay


def niah_samples(lengths, depths, per_cell: int, count_tokens, seed: int = 0) -> list[Sample]:
    """``per_cell`` samples for every (length, depth) pair."""
    out = []
    for length in lengths:
        for depth in depths:
            if not 0 <= depth <= 1:
                raise ValueError(f"depths must be between 0 and 1, got {depth}")
            for i in range(per_cell):
                rng = random.Random(f"niah-{seed}-{length}-{depth}-{i}")
                code = str(rng.randint(1_000_000, 9_999_999))
                filler_seed = rng.random()

                def build(units: int, code=code, depth=depth, filler_seed=filler_seed) -> str:
                    sentences = _essay(random.Random(filler_seed), units)
                    sentences.insert(round(depth * len(sentences)), f"The secret code for the vault is {code}.")
                    return (
                        "Read the following text carefully; a secret code is hidden in it.\n\n"
                        + " ".join(sentences)
                        + "\n\nWhat is the secret code for the vault? Answer with the code only."
                    )

                prompt = fit_to_length(build, length, count_tokens)
                out.append(
                    Sample(
                        f"niah-{length}-{depth:.3f}-{seed}-{i}",
                        prompt,
                        [code],
                        16,
                        {"length": length, "depth": depth},
                        "The secret code for the vault is",
                    )
                )
    return out


def score(prediction: str, sample: Sample) -> float:
    return string_match_all(prediction, sample.answers)


@register_family("niah")
def task_groups(loaded, options: TaskOptions) -> list[TaskGroup]:
    """One group holding the whole (length, depth) grid; ``--lengths`` defaults to ``--length``."""
    lengths = options.lengths or (options.length,)
    samples = niah_samples(lengths, options.depths, options.samples, token_counter(loaded), options.seed)
    return [TaskGroup("niah", samples, score)]
