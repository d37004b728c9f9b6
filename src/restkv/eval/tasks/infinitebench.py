"""InfiniteBench (Zhang et al., 2024, arXiv 2402.13718): its English tasks from local files.

Reads the official ``<task>.jsonl`` files (``context``, ``input``, ``answer``, ``options``,
``id``) from ``--data-dir``; nothing is downloaded. Prompts are our wording of the official
chat templates (``OpenBMB/InfiniteBench``, ``src/prompt.py``); scoring follows the official
``compute_scores.py`` rules: the first integer for passkey / number_string / math_find, the
key's value among the answer's words for kv_retrieval, the character name for
longdialogue_qa_eng, the option letter (or text) for the two choice tasks, token F1 for
longbook_qa_eng and ROUGE-L for longbook_sum_eng. Prompts longer than ``--length`` are cut in
the middle (the official truncation).

Origin and licence: the files are the user's own copy of InfiniteBench's data (``OpenBMB/
InfiniteBench``, published as ``xinrongzhang2022/InfiniteBench`` on the Hugging Face hub), under
that dataset's terms; this package neither ships nor fetches any of it.
"""

from __future__ import annotations

import re

from .. import metrics
from .base import Sample, local_task_file, read_records, register_local_family
from .longbench import truncate_middle

HIDDEN = "There is an important piece of information hidden inside a lot of irrelevant text. Find it and memorize it. I will quiz you about it.\n\n{context}\n\n{input}"
CHOICE = "\n\nOnly one of the following options is correct; answer with one single letter (A, B, C or D).\nA. {A}\nB. {B}\nC. {C}\nD. {D}"
TEMPLATES = {
    "passkey": (HIDDEN, 12),
    "number_string": (HIDDEN, 16),
    "kv_retrieval": (
        "Extract the value corresponding to the specified key in the JSON object below.\n\n{context}\n\n{input}",
        50,
    ),
    "longbook_qa_eng": (
        "Read the book below and answer a question.\n\n{context}\n\nQuestion: {input}\n\nBe very concise.",
        40,
    ),
    "longbook_choice_eng": ("Read the book and answer the question.\n\n{context}\n\nQuestion: {input}" + CHOICE, 40),
    "longbook_sum_eng": ("Summarize the following book.\n\n{context}", 1200),
    "longdialogue_qa_eng": (
        'Below is a dialogue script where one random occurrence of a character name is replaced with "$$MASK$$". '
        'Guess who that character is.\n\n{context}\n\nWhich character is most likely "$$MASK$$"? '
        "Answer with that one character's name as the script writes it, and nothing else.",
        40,
    ),
    "math_find": ("{context}\n\n{input}", 3),
    "code_debug": (
        "Exactly one function in the following project contains a deliberate, obvious error. Find it.\n\n{context}\n\n"
        "Which function has the deliberate error?" + CHOICE,
        5,
    ),
}
TASKS = tuple(TEMPLATES)
_SEPARATORS = re.compile(r"[\n:\"'.,?!{}]")


def _first_int(text: str) -> str | None:
    match = re.search(r"\d+", text)
    return match.group(0) if match else None


def _choice(prediction: str, answers: list[str]) -> float:
    prediction = prediction.strip()
    if not prediction:
        return 0.0
    if prediction[0] in "ABCD":
        return float(prediction[0] in answers)
    return float(any(a and a in prediction for a in answers))


def score_for(task: str):
    def score(prediction: str, sample: Sample) -> float:
        answers = sample.answers
        if task in ("passkey", "number_string"):
            return float(_first_int(prediction) == str(answers[0]))
        if task == "math_find":
            found = re.search(r"-?\d+(?:\.\d+)?", prediction)
            return float(found is not None and float(found.group(0)) == float(answers[0]))
        if task == "kv_retrieval":
            return float(str(answers[0]) in _SEPARATORS.sub(" ", prediction).split())
        if task == "longdialogue_qa_eng":
            return float(str(answers[0]).upper() in _SEPARATORS.sub(" ", prediction).upper().split())
        if task in ("longbook_choice_eng", "code_debug"):
            return _choice(prediction, answers)
        if task == "longbook_qa_eng":
            return metrics.best_of(metrics.qa_f1, prediction, [str(a) for a in answers])
        return metrics.best_of(metrics.rouge_l, prediction, [str(a) for a in answers])

    return score


def _answers(task: str, item: dict) -> list[str]:
    answer = item["answer"]
    answers = [str(a) for a in (answer if isinstance(answer, list) else [answer])]
    if task in ("longbook_choice_eng", "code_debug"):
        options = item.get("options") or []
        letters = ["ABCD"[options.index(a)] for a in answers if a in options]
        answers = answers + letters  # the option text or its letter
    return answers


def load(task: str, data_dir, limit=None, tokenizer=None, max_tokens=None) -> list[Sample]:
    path = local_task_file("InfiniteBench", task, TASKS, data_dir, "available")
    template, max_new = TEMPLATES[task]
    samples = []

    def parse(item):
        options = dict(zip("ABCD", item.get("options") or ["", "", "", ""]))
        return template.format(context=item["context"], input=item["input"], **options), _answers(task, item)

    for number, item, (prompt, answers) in read_records(path, "an InfiniteBench", limit, parse):
        if tokenizer is not None and max_tokens is not None:
            prompt = truncate_middle(tokenizer, prompt, max_tokens)
        samples.append(Sample(f"infinitebench-{task}-{item.get('id', number)}", prompt, answers, max_new, {}))
    return samples


#: ``build(options, tokenizer)``: the task groups of the files present in ``options.data_dir``
build = register_local_family("infinitebench", "InfiniteBench", TASKS, load, score_for)
