"""BIG-Bench Hard (Suzgun et al., 2022, arXiv 2210.09261): BBH's prompts on BIG-bench's questions.

Origins and licences:
- Questions: BIG-bench's own task data (``bigbench`` 1.0.0 sdist on PyPI, Apache-2.0). The
  358 MB archive is fetched once from PyPI's index (never installed: installing pulls
  TensorFlow) and only the needed files are kept under ``$RESTKV_HOME/bigbench``. 24 tasks are
  ``task.json`` files; ``boolean_expressions``, ``multistep_arithmetic`` and ``web_of_lies``
  are Python generators, run once when the data is prepared (:mod:`.bbh_generate`, 250 questions each).
- Prompts: BBH's own answer-only 3-shot prompts (``suzgunmirac/BIG-Bench-Hard``, MIT), as
  lm-evaluation-harness ships them (``lm_eval/tasks/bbh/fewshot/<task>.yaml``, MIT; the
  ``lm-eval`` extra). BBH's 250-question samples themselves live on a dataset hub this
  project cannot reach, so the questions are BIG-bench's, in BBH's layout: options as
  ``(A) ...`` where BBH answers with a letter, as ``- Yes``/``- No`` where BBH lists them,
  none where BBH answers with text; the answer words are BBH's (``yes`` for ``plausible``).

Scoring is BBH's exact match (:func:`extract_answer`): the text up to BBH's stop sequences,
the part after "the answer is" when the model reasons first, a letter answer on its own,
compared exactly with the target.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from .base import Sample
from .registry import TaskGroup, TaskOptions, register_family

BIGBENCH_VERSION = "1.0.0"
SIMPLE_INDEX = "https://pypi.org/simple/bigbench/"
#: BBH task -> BIG-bench task folder (with subtask)
TASKS = {
    "boolean_expressions": "boolean_expressions",
    "causal_judgement": "causal_judgment",
    "date_understanding": "date_understanding",
    "disambiguation_qa": "disambiguation_qa",
    "dyck_languages": "dyck_languages",
    "formal_fallacies": "formal_fallacies_syllogisms_negation",
    "geometric_shapes": "geometric_shapes",
    "hyperbaton": "hyperbaton",
    "logical_deduction_three_objects": "logical_deduction/three_objects",
    "logical_deduction_five_objects": "logical_deduction/five_objects",
    "logical_deduction_seven_objects": "logical_deduction/seven_objects",
    "movie_recommendation": "movie_recommendation",
    "multistep_arithmetic_two": "multistep_arithmetic",
    "navigate": "navigate",
    "object_counting": "object_counting",
    "penguins_in_a_table": "penguins_in_a_table",
    "reasoning_about_colored_objects": "reasoning_about_colored_objects",
    "ruin_names": "ruin_names",
    "salient_translation_error_detection": "salient_translation_error_detection",
    "snarks": "snarks",
    "sports_understanding": "sports_understanding",
    "temporal_sequences": "temporal_sequences",
    "tracking_shuffled_objects_three_objects": "tracking_shuffled_objects/three_objects",
    "tracking_shuffled_objects_five_objects": "tracking_shuffled_objects/five_objects",
    "tracking_shuffled_objects_seven_objects": "tracking_shuffled_objects/seven_objects",
    "web_of_lies": "web_of_lies",
    "word_sorting": "word_sorting",
}
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def data_root() -> Path:
    from ...models import restkv_home

    return restkv_home() / "bigbench" / "benchmark_tasks"


#: the BIG-bench tasks that are Python generators, and what their ``task.py`` imports from the archive
GENERATED = ("boolean_expressions", "multistep_arithmetic", "web_of_lies")
GENERATOR_FILES = (
    "api/__init__.py",
    "api/task.py",
    "api/model.py",
    *(f"benchmark_tasks/{t}/task.py" for t in GENERATED),
)
#: what ``.complete`` says once everything is in place (older caches lack the generated tasks)
COMPLETE = f"{BIGBENCH_VERSION}+generated"


def prepare(root: Path | None = None) -> Path:
    """Make sure the BBH task files are under ``root`` (fetch once, generate three tasks once)."""
    root = root or data_root()
    marker = root / ".complete"
    if marker.is_file() and marker.read_text() == COMPLETE:
        return root
    with tempfile.TemporaryDirectory() as tmp:
        print(f"restkv: fetching the bigbench {BIGBENCH_VERSION} sdist once (358 MB) for BBH's task data", flush=True)
        extract(download_sdist(Path(tmp)), root)
    return root


def download_sdist(folder: Path, index: str = SIMPLE_INDEX) -> Path:
    """The bigbench sdist from PyPI's simple index, checked against the index's sha256.

    Read straight from the index because ``pip download`` fails on it: preparing the sdist's
    metadata needs its ``bleurt @ file://...`` dependency.
    """
    name = f"bigbench-{BIGBENCH_VERSION}.tar.gz"
    try:
        with urllib.request.urlopen(index, timeout=60) as response:
            page = response.read().decode()
        link = next((h for h in re.findall(r'href="([^"]+)"', page) if h.split("#")[0].endswith("/" + name)), None)
        if link is None:
            raise ValueError(f"{index} lists no {name}")
        url, _, digest = html.unescape(link).partition("#sha256=")
        target = folder / name
        with urllib.request.urlopen(urllib.parse.urljoin(index, url), timeout=60) as response, target.open("wb") as f:
            shutil.copyfileobj(response, f)
    except (OSError, urllib.error.URLError) as err:
        raise ValueError(f"could not download the bigbench sdist for BBH from {index}: {err}") from err
    if digest and hashlib.sha256(target.read_bytes()).hexdigest() != digest:
        raise ValueError(f"the downloaded {name} does not match the sha256 PyPI lists for it")
    return target


def extract(archive: Path, root: Path) -> None:
    """Copy the BBH tasks' ``task.json`` files out of a bigbench sdist; generate the other three.

    The generators run in a subprocess (:mod:`.bbh_generate`) from a temporary copy of the few
    archive files they need; their questions are written as ``<task>/task.json`` beside the rest.
    """
    wanted = {f"benchmark_tasks/{folder}/task.json" for folder in TASKS.values()}
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, tarfile.open(archive) as tar:
        for member in tar:
            tail = member.name.split("/bigbench/", 1)[-1]
            if tail in wanted:
                target = root / tail.split("benchmark_tasks/", 1)[1]
            elif tail in GENERATOR_FILES:
                target = Path(tmp) / "bigbench" / tail
            else:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tar.extractfile(member).read())
        for folder in GENERATED:
            if (Path(tmp) / "bigbench" / "benchmark_tasks" / folder / "task.py").is_file():
                generate_task(Path(tmp), folder, root / folder / "task.json")
    (root / ".complete").write_text(COMPLETE)


def generate_task(source: Path, folder: str, out: Path) -> None:
    """Run BIG-bench's generator ``source/bigbench/benchmark_tasks/<folder>/task.py`` into ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "restkv.eval.tasks.bbh_generate", str(source), folder, str(out)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if run.returncode != 0:
        last = (run.stderr.strip().splitlines() or ["no output"])[-1]
        raise ValueError(f"BIG-bench's generator for {folder} failed: {last}")


#: BBH's answer words where BIG-bench words its options differently
ANSWER_WORDS = {
    "sports_understanding": {"plausible": "yes", "implausible": "no"},
    "navigate": {"True": "Yes", "False": "No"},
}
#: BBH's wording of questions that BIG-bench states bare (BIG-bench's task prefix is then dropped)
QUESTION_FORMS = {
    "sports_understanding": 'Is the following sentence plausible? "{input}."',
    "word_sorting": "Sort the following words alphabetically: List: {input}",
}
#: tasks whose BIG-bench input writes its options inline: (stem, option keys in order, option texts)
INLINE_OPTIONS = {
    "snarks": (re.compile(r"^(.*?)\s*\(a\)\s*(.*?)\s*\(b\)\s*(.*?)\s*$", re.DOTALL), ("(a)", "(b)")),
    "hyperbaton": (re.compile(r'^(.*?)\s*a " (.*?) " b " (.*?) " \?\s*$', re.DOTALL), ("a", "b")),
}
#: tasks whose answers run long (sorted word lists, closing brackets)
LONG_ANSWERS = {"word_sorting": 64, "dyck_languages": 64}


def bbh_prompt(task: str) -> tuple[str, list[dict]]:
    """BBH's 3-shot answer-only prompt for ``task``: its description and worked ``input``/``target`` pairs."""
    import importlib.util

    import yaml

    spec = importlib.util.find_spec("lm_eval")  # only its data files are read; nothing is imported
    if spec is None:
        raise ValueError("BBH's prompts come with lm-evaluation-harness: pip install 'restkv[lm-eval]'")
    path = Path(spec.submodule_search_locations[0]) / "tasks" / "bbh" / "fewshot" / f"{task}.yaml"
    config = yaml.safe_load(path.read_text())
    return config.get("description", ""), config["fewshot_config"]["samples"]


def _format(task: str, example: dict, task_prefix: str, shots: list[dict]) -> tuple[str, list[str]]:
    """(question, accepted answers) for one BIG-bench example, in BBH's layout for ``task``."""
    words = ANSWER_WORDS.get(task, {})
    prefix = task_prefix.strip()
    question = example["input"]
    if task in QUESTION_FORMS:
        question = QUESTION_FORMS[task].format(input=question.strip().removesuffix("."))
    elif prefix and shots[0]["input"].startswith(prefix):
        question = f"{prefix}\n{question}"
    scores = example.get("target_scores") or {}
    inline = INLINE_OPTIONS.get(task)
    match = inline[0].match(question) if inline else None
    if match and set(scores) == set(inline[1]):  # BBH lists them as (A), (B) under the stem
        question = match.group(1)
        scores = {text: scores[key] for key, text in zip(inline[1], match.groups()[1:])}
    if len(scores) > len(LETTERS):  # more options than letters: answered with the option's text
        scores = {} if "target" in example else {max(scores, key=scores.get): 1}
    if scores and (shots[0]["target"].startswith("(") or "target" not in example):
        options = list(scores)
        right = max(options, key=scores.get)
        if shots[0]["target"].startswith("("):
            listed = "\n".join(f"({LETTERS[i]}) {o}" for i, o in enumerate(options))
            return f"{question}\nOptions:\n{listed}", [f"({LETTERS[options.index(right)]})"]
        if "Options:\n- " in shots[0]["input"]:
            listed = "\n".join(f"- {words.get(o, o)}" for o in options)
            return f"{question}\nOptions:\n{listed}", [words.get(right, right)]
        return question, [words.get(right, right)]
    target = example["target"]
    return question, [str(t) for t in (target if isinstance(target, list) else [target])]


def load(task: str, root: Path, limit: int | None = None) -> list[Sample]:
    """BBH samples of one task: BBH's 3-shot prompt, then each BIG-bench question of ``root/<folder>/task.json``."""
    if task not in TASKS:
        raise ValueError(f"unknown BBH task {task!r}; available: {', '.join(TASKS)}")
    path = Path(root) / TASKS[task] / "task.json"
    if not path.is_file():
        raise FileNotFoundError(f"BBH task {task}: {TASKS[task]}/task.json is not in the bigbench data")
    description, shots = bbh_prompt(task)
    try:
        data = json.loads(path.read_text())
        formatted = [_format(task, e, data.get("task_prefix", ""), shots) for e in data["examples"]]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path} is not a BIG-bench task file ({err})") from err
    head = description + "".join(f"Q: {s['input']}\nA: {s['target']}\n\n" for s in shots)
    asked = {s["input"] for s in shots}  # a worked example is never also asked
    samples = []
    for i, (question, accepted) in enumerate(q for q in formatted if q[0] not in asked):
        if limit is not None and i >= limit:
            break
        prompt = f"{head}Q: {question}\nA:"
        tokens = LONG_ANSWERS.get(task, 32)
        samples.append(Sample(f"bbh-{task}-{i}", prompt, accepted, tokens, {"chat": False}, question_at=len(head)))
    return samples


def extract_answer(prediction: str) -> str:
    """BBH's answer from generated text.

    The text up to BBH's stop sequences (a blank line, the next ``Q:``); after the last "the
    answer is" when the model reasons first (BBH's chain-of-thought prompts end that way); a
    multiple-choice letter alone (``(B) 12/14/2026`` -> ``(B)``); surrounding spaces and a
    final period dropped.
    """
    text = re.split(r"\n\s*\n|\nQ:", prediction.lstrip(), maxsplit=1)[0]
    cue = text.lower().rfind("the answer is ")
    if cue >= 0:
        text = text[cue + len("the answer is ") :]
    text = text.strip()
    letter = re.match(r"\([A-Z]\)", text)
    if letter:
        return letter.group(0)
    return text.removesuffix(".").strip()


def score(prediction: str, sample: Sample) -> float:
    """BBH's exact match: the extracted answer equals a target exactly."""
    return float(extract_answer(prediction) in sample.answers)


def build(options: TaskOptions, root: Path | None = None) -> list[TaskGroup]:
    root = Path(options.data_dir) if options.data_dir else prepare(root)
    names = options.subtasks or tuple(TASKS)
    groups, missing = [], []
    for task in names:
        try:
            groups.append(TaskGroup(f"bbh/{task}", load(task, root, options.samples), score))
        except FileNotFoundError:
            missing.append(task)
    if missing:
        print(
            f"restkv: BBH tasks missing from the bigbench data (not evaluated): {', '.join(missing)}", file=sys.stderr
        )
    if not groups:
        raise ValueError(f"no BBH task data found under {root}")
    return groups


@register_family("bbh")
def task_groups(loaded, options: TaskOptions) -> list[TaskGroup]:
    return build(options)
