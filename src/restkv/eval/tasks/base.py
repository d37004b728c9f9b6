"""Tasks as small declarative units: samples, how to prompt, how to score."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .registry import TaskGroup, register_family


@dataclass
class Sample:
    """One prompt and what counts as a right answer.

    ``prompt`` is the user's text for chat models, or the whole completion prompt otherwise.
    """

    id: str
    prompt: str
    answers: list[str]
    max_new_tokens: int = 16
    meta: dict = field(default_factory=dict)
    #: text the answer starts with (RULER's answer prefix), placed after the chat template's
    #: generation prompt so the model continues it
    answer_prefix: str = ""
    #: where in ``prompt`` the question starts (character index), for query-agnostic evaluation:
    #: the context before it is compressed without it; None when the task does not say
    question_at: int | None = None
    #: when the answer is complete, so decoding stops early: a rule of
    #: :mod:`restkv.eval.tasks.stops` (``"all_answers"``, ``"any_answer"``) that cannot change
    #: the task's score; None decodes to an end token or ``max_new_tokens``
    stop: str | None = None


def token_counter(loaded):
    """A prompt's length in ``loaded``'s tokens, encoded as the evaluation encodes it."""
    from ...generation import encode_prompt  # torch: imported only when a model is in use

    def count(text: str) -> int:
        return encode_prompt(loaded.tokenizer, text, chat=loaded.chat).shape[1]

    return count


def fit_to_length(build, length: int, count_tokens, limit: int = 1_000_000):
    """The largest ``build(k)`` (k filler units) of at most ``length`` tokens.

    ``build(k)`` returns a prompt, ``count_tokens(prompt)`` its length in the model's own
    tokens; searched by doubling then bisection, so long prompts cost few tokenizations.
    """
    if count_tokens(build(1)) > length:
        raise ValueError(f"a prompt of {length} tokens is too short for this task; ask for a longer --length")
    low, high = 1, 2
    while count_tokens(build(high)) <= length:
        low, high = high, high * 2
        if high > limit:
            raise ValueError(f"cannot fill {length} tokens with at most {limit} filler units")
    while high - low > 1:
        mid = (low + high) // 2
        if count_tokens(build(mid)) <= length:
            low = mid
        else:
            high = mid
    return build(low)


def words(count: int | None = None) -> list[str]:
    """The built-in list of plain English words (from the Python standard library's docstrings)."""
    from importlib.resources import files

    vocabulary = files("restkv.eval.data").joinpath("words.txt").read_text().split()
    return vocabulary if count is None else vocabulary[:count]


def string_match_all(prediction: str, answers: list[str]) -> float:
    """Share of ``answers`` found in ``prediction`` (case-insensitive): RULER's string_match_all."""
    if not answers:
        return 0.0
    text = prediction.lower()
    return sum(a.lower() in text for a in answers) / len(answers)


def string_match_part(prediction: str, answers: list[str]) -> float:
    """1 if any of ``answers`` is in ``prediction`` (case-insensitive): RULER's string_match_part."""
    text = prediction.lower()
    return float(any(a.lower() in text for a in answers))


def local_task_file(label: str, task: str, tasks, data_dir, known: str) -> Path:
    """``data_dir/<task>.jsonl`` of a local benchmark, or a one-sentence error."""
    if task not in tasks:
        raise ValueError(f"unknown {label} task {task!r}; {known}: {', '.join(tasks)}")
    path = Path(data_dir) / f"{task}.jsonl"
    if not path.is_file():
        raise ValueError(f"{label} task {task} needs {path} (the official data file)")
    return path


def read_records(path: Path, label: str, limit: int | None, parse):
    """``(line number, record, parse(record))`` for the first ``limit`` lines of a JSONL file.

    A line that is not JSON, or a record ``parse`` cannot read, is one sentence naming the line.
    """
    with path.open() as lines:
        for number, line in enumerate(lines):
            if limit is not None and number >= limit:
                break
            try:
                item = json.loads(line)
                parsed = parse(item)
            except (json.JSONDecodeError, KeyError, TypeError, IndexError) as err:
                raise ValueError(f"{path} line {number + 1} is not {label} record ({err})") from err
            yield number, item, parsed


def build_local(family: str, label: str, tasks, load, score_for, options, tokenizer) -> list[TaskGroup]:
    """``(task, samples, score)`` groups of a benchmark read from ``--data-dir/<task>.jsonl``.

    Without ``--tasks``, every task whose file is present is evaluated.
    """
    if options.data_dir is None:
        raise ValueError(f"{family} reads the official data files: give --data-dir with <task>.jsonl files")
    names = options.subtasks or [t for t in tasks if (Path(options.data_dir) / f"{t}.jsonl").is_file()]
    if not names:
        raise ValueError(f"{options.data_dir} holds none of {label}'s <task>.jsonl files")
    return [
        TaskGroup(f"{family}/{t}", load(t, options.data_dir, options.samples, tokenizer, options.length), score_for(t))
        for t in names
    ]


def register_local_family(family: str, label: str, tasks, load, score_for):
    """Register a benchmark read from local files; returns its ``build(options, tokenizer)``."""

    def build(options, tokenizer) -> list[TaskGroup]:
        return build_local(family, label, tasks, load, score_for, options, tokenizer)

    register_family(family)(lambda loaded, options: build(options, loaded.tokenizer))
    return build
