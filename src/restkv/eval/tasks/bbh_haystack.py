"""BBH at length: a BBH task's few-shot exemplars, then a long stretch of real essays, then the question.

The quality measure at lengths where no full cache fits: the model must carry the exemplars'
format (and, for some tasks, their content) across the haystack to answer. Each long sample
carries its no-haystack twin in ``meta["reference_prompt"]`` (same exemplars, same question,
no essays), so the model's own short-prompt answer is the reference:
``benchmarks/studies/long_context.py`` scores agreement with it and the KL divergence of the first
answer token's distribution from it; ``restkv eval bbh-haystack`` scores accuracy.

The final question is written on one line (its option list included), so the question-aware
window (``window_size="auto"``, the prompt's last line) is the whole question; the answer
prefix ``A:`` follows on its own line. The exemplars keep BBH's own layout.
"""

from __future__ import annotations

import random

from . import bbh
from .base import Sample, fit_to_length, token_counter
from .essays import essay_haystack
from .registry import TaskGroup, TaskOptions, register_family

#: BBH tasks whose questions are short enough for the auto window (at most about 64 tokens)
DEFAULT_TASKS = ("sports_understanding", "object_counting", "navigate", "hyperbaton")
ANSWER_PREFIX = "\nA:"


def split_prompt(prompt: str) -> tuple[str, str]:
    """``(exemplars, question)`` of a BBH few-shot prompt ``"<shots>Q: <question>\\nA:"``."""
    head, found, tail = prompt.rpartition("Q: ")
    if not found or not tail.endswith("\nA:"):
        raise ValueError("not a BBH few-shot prompt (expected it to end with 'Q: ...' and 'A:')")
    return head, " ".join(tail[: -len("\nA:")].split())


def haystack_pair(base: Sample, length: int, count_tokens, seed: int) -> Sample:
    """``base`` (a BBH sample) with ``length`` tokens of essays between exemplars and question."""
    shots, question = split_prompt(base.prompt)
    reference = f"{shots}Q: {question}"

    def build(units: int) -> str:
        essays = " ".join(essay_haystack(random.Random(seed), units))
        return f"{shots}{essays}\n\nQ: {question}"

    prompt = fit_to_length(build, length, count_tokens)
    meta = {**base.meta, "length": length, "reference_prompt": reference}
    question_at = prompt.rindex("Q: ")
    return Sample(f"{base.id}-{length}", prompt, base.answers, base.max_new_tokens, meta, ANSWER_PREFIX, question_at)


def samples(task: str, lengths, count: int, count_tokens, root, seed: int = 0) -> list[Sample]:
    """``count`` samples of BBH ``task`` at each length, each with its own essay start."""
    out = []
    for base in bbh.load(task, root, count):
        for length in lengths:
            essay_seed = random.Random(f"bbh-haystack-{seed}-{base.id}").random()
            out.append(haystack_pair(base, length, count_tokens, essay_seed))
    return out


def score(prediction: str, sample: Sample) -> float:
    return bbh.score(prediction, sample)


@register_family("bbh-haystack")
def task_groups(loaded, options: TaskOptions) -> list[TaskGroup]:
    """One group per BBH task (``--subtasks``, default :data:`DEFAULT_TASKS`) at ``--lengths``."""
    root = options.data_dir or bbh.prepare()
    lengths = options.lengths or (options.length,)
    count = token_counter(loaded)
    return [
        TaskGroup(f"bbh-haystack/{task}", samples(task, lengths, options.samples, count, root, options.seed), score)
        for task in options.subtasks or DEFAULT_TASKS
    ]
