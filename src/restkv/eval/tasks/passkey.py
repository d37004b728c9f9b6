"""The built-in pass-key retrieval set: a five-digit key hidden at a random depth in noise.

The haystack is the classic repeated noise ("The grass is green. The sky is blue. ...") used
by Mohtashami & Jaggi's pass-key test and RULER's ``niah`` noise haystack. Samples are seeded:
the same seed and length give the same prompts. Origin: generated here; no data is read.
"""

from __future__ import annotations

import random

from .base import Sample, fit_to_length, string_match_all, token_counter
from .registry import TaskGroup, TaskOptions, register_family

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
INTRO = "There is an important piece of information hidden inside a lot of irrelevant text. Find it and memorize it."
QUESTION = "What is the pass key? Answer with the number only."


def passkey_prompt(key: int, units: int, depth: float) -> str:
    parts = [NOISE] * units
    parts.insert(round(depth * units), f"The pass key is {key}. Remember it. {key} is the pass key. ")
    return f"{INTRO}\n\n{''.join(parts)}\n{QUESTION}"


def passkey_samples(count: int, length: int, count_tokens, seed: int = 0) -> list[Sample]:
    """``count`` prompts of at most ``length`` tokens (as counted by ``count_tokens``)."""
    samples = []
    for i in range(count):
        rng = random.Random(f"passkey-{seed}-{i}")
        key, depth = rng.randint(10000, 99999), rng.random()
        prompt = fit_to_length(lambda k, key=key, depth=depth: passkey_prompt(key, k, depth), length, count_tokens)
        samples.append(
            Sample(
                f"passkey-{length}-{seed}-{i}",
                prompt,
                [str(key)],
                max_new_tokens=12,
                meta={"depth": depth},
                question_at=prompt.rindex(QUESTION),
                stop="all_answers",  # the score is 1 once the key is written, whatever follows
            )  # fmt: skip
        )
    return samples


def score(prediction: str, sample: Sample) -> float:
    """1 when the key appears in the answer, else 0."""
    return string_match_all(prediction, sample.answers)


@register_family("passkey")
def task_groups(loaded, options: TaskOptions) -> list[TaskGroup]:
    samples = passkey_samples(options.samples, options.length, token_counter(loaded), options.seed)
    return [TaskGroup("passkey", samples, score)]
