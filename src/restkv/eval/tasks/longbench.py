"""LongBench (Bai et al., 2023, arXiv 2308.14508): the 16 English tasks of the paper's table.

Reads the official data files, ``<task>.jsonl`` (one JSON object per line with ``input``,
``context``, ``answers``, ``all_classes``, ``length`` and ``_id``), from ``--data-dir``;
nothing is downloaded. Prompts use the official templates and generation lengths
(``data/longbench.json``, taken from LongBench's config, MIT License); prompts longer than the
model's window are truncated in the middle, as the official ``pred.py`` does; answers of trec,
triviaqa and samsum are cut at their first line before scoring, as in ``eval.py``. Chat models
get the chat template except for the few-shot and code tasks (trec, triviaqa, samsum,
passage-free code completion), again as the official script does.

Origin and licence of the data: the user's own copy of LongBench's files (``THUDM/LongBench`` on
the Hugging Face hub), under that dataset's terms; this package neither ships nor fetches it.
"""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

from .. import metrics
from .base import Sample, local_task_file, read_records, register_local_family

CONFIG = json.loads(files("restkv.eval.data").joinpath("longbench.json").read_text())
TASKS = tuple(CONFIG["tasks"])
METRIC = {
    "narrativeqa": metrics.qa_f1, "qasper": metrics.qa_f1, "multifieldqa_en": metrics.qa_f1,
    "hotpotqa": metrics.qa_f1, "2wikimqa": metrics.qa_f1, "musique": metrics.qa_f1,
    "gov_report": metrics.rouge_l, "qmsum": metrics.rouge_l, "multi_news": metrics.rouge_l,
    "trec": metrics.classification, "triviaqa": metrics.qa_f1, "samsum": metrics.rouge_l,
    "passage_count": metrics.count, "passage_retrieval_en": metrics.retrieval,
    "lcc": metrics.code_similarity, "repobench-p": metrics.code_similarity,
}  # fmt: skip
NO_CHAT = {"trec", "triviaqa", "samsum", "lcc", "repobench-p"}
FIRST_LINE = {"trec", "triviaqa", "samsum"}


def truncate_middle(tokenizer, text: str, max_tokens: int) -> str:
    """Keep the first and last ``max_tokens / 2`` tokens of ``text`` (official LongBench rule)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= max_tokens:
        return text
    half = max_tokens // 2
    return tokenizer.decode(ids[:half], skip_special_tokens=True) + tokenizer.decode(
        ids[-half:], skip_special_tokens=True
    )


def load(
    task: str, data_dir: str | Path, limit: int | None = None, tokenizer=None, max_tokens: int | None = None
) -> list[Sample]:
    """Samples of one task from ``data_dir/<task>.jsonl``."""
    path = local_task_file("LongBench", task, TASKS, data_dir, "the paper's 16")
    template, max_new = CONFIG["tasks"][task]["prompt"], CONFIG["tasks"][task]["max_new_tokens"]
    samples = []

    def parse(item):
        return template.format(context=item["context"], input=item["input"]), list(item["answers"])

    for number, item, (prompt, answers) in read_records(path, "a LongBench", limit, parse):
        if tokenizer is not None and max_tokens is not None:
            prompt = truncate_middle(tokenizer, prompt, max_tokens)
        meta = {"all_classes": item.get("all_classes") or [], "length": item.get("length"), "chat": task not in NO_CHAT}
        samples.append(Sample(f"longbench-{task}-{item.get('_id', number)}", prompt, answers, max_new, meta))
    return samples


def score_for(task: str):
    metric = METRIC[task]

    def score(prediction: str, sample: Sample) -> float:
        if task in FIRST_LINE:
            prediction = prediction.lstrip("\n").split("\n")[0]
        return metrics.best_of(metric, prediction, sample.answers, all_classes=sample.meta.get("all_classes", []))

    return score


#: ``build(options, tokenizer)``: the task groups of the files present in ``options.data_dir``
build = register_local_family("longbench", "LongBench", TASKS, load, score_for)
