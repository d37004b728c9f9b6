"""RULER's synthetic tasks, hand-written: ``restkv eval ruler-handwritten``.

``restkv eval ruler`` runs RULER's own generators (:mod:`.ruler_official`). This module is kept
for what they cannot do: it needs no extra package and no sentence model, it fills any length
(RULER's scripts stop at the length of their essay file and start from a fixed minimum), and it
reproduces the results recorded before the switch (``benchmarks/results/ruler-1k*``); the two
are compared side by side in ``benchmarks/results/ruler-official-vs-handwritten``.

Follows Hsieh et al., "RULER: What's the Real Context Size of Your Long-Context Language
Models?" (2024, arXiv 2404.06654; ``NVIDIA/RULER``): the task families, their needle, key and
value types, and their metrics (``string_match_all``; ``string_match_part`` for QA). Prompts
are our own wording of the same instructions. Differences, because nothing may be downloaded
here: the "essay" haystack is seeded pseudo-text built from the built-in word list (RULER uses
Paul Graham's essays), and the coded words of ``fwe`` and the words of ``cwe`` come from the
same list. ``qa_1``/``qa_2`` read SQuAD v2 / HotpotQA JSON files from ``data_dir`` when given.

Every generator is seeded by (seed, task, sample index): the same command gives the same
samples.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable
from pathlib import Path

from ...window import question_start
from .base import Sample, fit_to_length, string_match_all, string_match_part, token_counter, words
from .registry import TaskGroup, TaskOptions, register_family

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."

#: task -> (haystack, key type, value type, needles, values per key, queries)
NIAH = {
    "niah_single_1": ("noise", "words", "numbers", 1, 1, 1),
    "niah_single_2": ("essay", "words", "numbers", 1, 1, 1),
    "niah_single_3": ("essay", "words", "uuids", 1, 1, 1),
    "niah_multikey_1": ("essay", "words", "numbers", 4, 1, 1),
    "niah_multikey_2": ("needle", "words", "numbers", 1, 1, 1),
    "niah_multikey_3": ("needle", "uuids", "uuids", 1, 1, 1),
    "niah_multivalue": ("essay", "words", "numbers", 1, 4, 1),
    "niah_multiquery": ("essay", "words", "numbers", 4, 1, 4),
}
SYNTHETIC = (*NIAH, "vt", "cwe", "fwe")
QA = ("qa_1", "qa_2")
TASKS = (*SYNTHETIC, *QA)
#: new tokens per task (RULER's are longer; answers here are short and decoding stops at EOS)
MAX_NEW_TOKENS = {"vt": 30, "cwe": 64, "fwe": 32, "qa_1": 32, "qa_2": 32, "niah_multivalue": 48, "niah_multiquery": 48}


def _value(rng: random.Random, kind: str) -> str:
    if kind == "numbers":
        return str(rng.randint(1_000_000, 9_999_999))
    if kind == "uuids":
        return str(uuid.UUID(int=rng.getrandbits(128)))
    return rng.choice(words())


def _essay(rng: random.Random, sentences: int) -> list[str]:
    vocabulary = words()
    out = []
    for _ in range(sentences):
        body = " ".join(rng.choice(vocabulary) for _ in range(rng.randint(6, 14)))
        out.append(body[0].upper() + body[1:] + ".")
    return out


def _niah(task: str, rng: random.Random, length: int, count_tokens) -> Sample:
    haystack, key_kind, value_kind, needles, values_per_key, queries = NIAH[task]
    keys = []
    while len(keys) < needles:
        key = _value(rng, key_kind)
        if key not in keys:
            keys.append(key)
    values = {k: [_value(rng, value_kind) for _ in range(values_per_key)] for k in keys}
    lines = [(k, v) for k in keys for v in values[k]]
    rng.shuffle(lines)
    depths = sorted(rng.random() for _ in lines)
    kind = "numbers" if value_kind == "numbers" else "UUIDs" if value_kind == "uuids" else "words"
    needle_text = [f"One of the special magic {kind} for {k} is: {v}." for k, v in lines]
    asked = keys[:queries]
    query = ", ".join(asked[:-1]) + (f", and {asked[-1]}" if len(asked) > 1 else asked[0])
    answers = [v for k in asked for v in values[k]]
    filler_seed = rng.random()

    def build(units: int) -> str:
        filler_rng = random.Random(filler_seed)
        if haystack == "noise":
            filler = [NOISE] * units
        elif haystack == "essay":
            filler = _essay(filler_rng, units)
        else:  # distractor needles with other keys
            filler = [
                f"One of the special magic {kind} for {_value(filler_rng, key_kind)} is: {_value(filler_rng, value_kind)}."
                for _ in range(units)
            ]
        for depth, text in zip(depths, needle_text):
            filler.insert(round(depth * len(filler)), text)
        context = " ".join(filler) if haystack != "needle" else "\n".join(filler)
        return (
            f"Some special magic {kind} are hidden within the following text. Make sure to memorize them. "
            f"I will quiz you about the {kind} afterwards.\n{context}\n"
            f"What are all the special magic {kind} for {query} mentioned in the provided text?"
        )

    prompt = fit_to_length(build, length, count_tokens)
    prefix = f"The special magic {kind} for {query} mentioned in the provided text are"
    return Sample("", prompt, answers, MAX_NEW_TOKENS.get(task, 32), {"depths": depths}, prefix)


def _vt(rng: random.Random, length: int, count_tokens, hops: int = 4) -> Sample:
    def name() -> str:
        return "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(5))

    names = [name() for _ in range(hops + 1)]
    value = str(rng.randint(10000, 99999))
    chain = [f"VAR {names[0]} = {value}"] + [f"VAR {names[i + 1]} = VAR {names[i]}" for i in range(hops)]
    depths = sorted(rng.random() for _ in chain)

    def build(units: int) -> str:
        filler = [NOISE] * units
        for depth, text in zip(depths, chain):
            filler.insert(round(depth * len(filler)), text + ".")
        return (
            "Memorize and track the chain of variable assignments hidden in the following text.\n\n"
            + " ".join(filler)
            + f"\nQuestion: Find all variables that are assigned the value {value} in the text above."
        )

    prompt = fit_to_length(build, length, count_tokens)
    prefix = f"Answer: According to the chain of variable assignments in the text above, {hops + 1} variables are assigned the value {value}, they are:"
    return Sample("", prompt, names, MAX_NEW_TOKENS["vt"], {}, prefix)


def _cwe(rng: random.Random, length: int, count_tokens, common: int = 10) -> Sample:
    # RULER repeats the common words 30 times and the others 3 times at 4K and beyond; short
    # contexts cannot hold that, so repeats shrink with the length (common stay 4x more frequent)
    repeats = max(4, min(30, length // 130))
    rare_repeats = max(1, repeats // 10)
    pool = rng.sample(words(), len(words()))
    top, rare = pool[:common], pool[common:]
    order_seed = rng.random()

    def build(units: int) -> str:
        listed = top * repeats + rare[: min(units, len(rare))] * rare_repeats
        random.Random(order_seed).shuffle(listed)
        numbered = " ".join(f"{i + 1}. {w}" for i, w in enumerate(listed))
        return (
            "Below is a numbered list of words. In these words, some appear more often than others. "
            f"Memorize the ones that appear most often.\n{numbered}\n"
            f"Question: What are the {common} most common words in the above list?"
        )

    prompt = fit_to_length(build, length, count_tokens)
    prefix = f"Answer: The top {common} words that appear most often in the list are:"
    return Sample("", prompt, top, MAX_NEW_TOKENS["cwe"], {}, prefix)


def _fwe(rng: random.Random, length: int, count_tokens, alpha: float = 2.0) -> Sample:
    vocabulary = rng.sample(words(), 200)
    weights = [1 / (rank + 1) ** alpha for rank in range(len(vocabulary))]
    text_seed = rng.random()

    def build(units: int) -> str:
        text_rng = random.Random(text_seed)
        coded = text_rng.choices(vocabulary, weights=weights, k=units * 10)
        return (
            "Read the following coded text and track the frequency of each coded word. Find the three most "
            f"frequently appearing coded words. {' ... '.join(coded)}\n"
            "Question: Do not provide any explanation. Please ignore the dots '...'. "
            "What are the three most frequently appearing words in the above coded text?"
        )

    prompt = fit_to_length(build, length, count_tokens)
    coded = prompt.split("coded words. ", 1)[1].split("\nQuestion:", 1)[0].split(" ... ")
    counts = {w: coded.count(w) for w in set(coded)}
    top3 = sorted(counts, key=lambda w: (-counts[w], w))[:3]
    prefix = "Answer: According to the coded text above, the three most frequently appearing words are:"
    return Sample("", prompt, top3, MAX_NEW_TOKENS["fwe"], {}, prefix)


def load_qa(task: str, data_dir: str | Path) -> list[tuple[str, list[str], list[str]]]:
    """(question, answers, gold documents) from SQuAD v2 (``qa_1``) or HotpotQA dev (``qa_2``) files."""
    folder = Path(data_dir)
    if task == "qa_1":
        path = folder / "squad.json"
        if not path.is_file():
            raise ValueError(f"qa_1 needs SQuAD v2's dev file at {path} (train-v2.0/dev-v2.0 format)")
        out = []
        for article in json.loads(path.read_text())["data"]:
            for paragraph in article["paragraphs"]:
                for qa in paragraph["qas"]:
                    answers = [a["text"] for a in qa.get("answers", [])]
                    if answers:
                        out.append((qa["question"], answers, [paragraph["context"]]))
        return out
    path = folder / "hotpotqa.json"
    if not path.is_file():
        raise ValueError(f"qa_2 needs HotpotQA's dev file at {path} (hotpot_dev_distractor format)")
    return [
        (item["question"], [item["answer"]], [f"{title}\n{''.join(sentences)}" for title, sentences in item["context"]])
        for item in json.loads(path.read_text())
    ]


def _qa(rng: random.Random, length: int, count_tokens, pool) -> Sample:
    question, answers, gold = pool[rng.randrange(len(pool))]
    distractor_seed = rng.random()

    def build(units: int) -> str:
        drng = random.Random(distractor_seed)
        docs = list(gold) + [d for _ in range(units) for d in pool[drng.randrange(len(pool))][2]]
        drng.shuffle(docs)
        body = "\n\n".join(f"Document {i + 1}:\n{d}" for i, d in enumerate(docs))
        instruction = "Answer the question based on the given documents. Only give me the answer and do not output any other words."
        return f"{instruction}\n\nThe following are given documents.\n\n{body}\n\n{instruction}\n\nQuestion: {question}"

    return Sample("", fit_to_length(build, length, count_tokens), answers, MAX_NEW_TOKENS["qa_1"], {}, "Answer:")


def ruler_samples(
    task: str, count: int, length: int, count_tokens: Callable[[str], int], seed: int = 0, data_dir=None
) -> list[Sample]:
    """``count`` seeded samples of ``task`` with prompts of at most ``length`` tokens."""
    if task not in TASKS:
        raise ValueError(f"unknown RULER task {task!r}; available: {', '.join(TASKS)}")
    pool = None
    if task in QA:
        if data_dir is None:
            raise ValueError(f"{task} reads local QA files: give --data-dir")
        pool = load_qa(task, data_dir)
    out = []
    for i in range(count):
        rng = random.Random(f"ruler-{task}-{seed}-{i}")
        if task in NIAH:
            sample = _niah(task, rng, length, count_tokens)
        elif task == "vt":
            sample = _vt(rng, length, count_tokens)
        elif task == "cwe":
            sample = _cwe(rng, length, count_tokens)
        elif task == "fwe":
            sample = _fwe(rng, length, count_tokens)
        else:
            sample = _qa(rng, length, count_tokens, pool)
        sample.id = f"{task}-{length}-{seed}-{i}"
        sample.question_at = question_start(sample.prompt)  # every generator ends on its question's line
        sample.stop = "any_answer" if task in QA else "answer_lines"  # see restkv.eval.tasks.stops
        sample.meta["length"] = length
        out.append(sample)
    return out


def score(task: str) -> Callable[[str, Sample], float]:
    """RULER's metric for ``task``: string_match_part for QA, string_match_all otherwise."""
    metric = string_match_part if task in QA else string_match_all
    return lambda prediction, sample: metric(prediction, sample.answers)


@register_family("ruler-handwritten")
def task_groups(loaded, options: TaskOptions) -> list[TaskGroup]:
    """One group per RULER task (``--tasks``, or every synthetic one)."""
    count = token_counter(loaded)

    def samples(task: str) -> list[Sample]:
        return ruler_samples(task, options.samples, options.length, count, options.seed, options.data_dir)

    return [TaskGroup(f"ruler-handwritten/{t}", samples(t), score(t)) for t in options.subtasks or SYNTHETIC]
