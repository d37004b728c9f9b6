"""BIG-Bench Hard (Suzgun et al., 2022, arXiv 2210.09261), built from BIG-bench's own task data.

BBH's 27 tasks are BIG-bench tasks (some are subtasks, e.g. ``logical_deduction/three_objects``).
Their data comes from the ``bigbench`` source distribution on PyPI (``benchmark_tasks/*/task.json``):
the 358 MB archive is fetched once from PyPI's index (never installed: installing pulls
TensorFlow) and only the needed ``task.json`` files are kept under ``$RESTKV_HOME/bigbench``.
A task whose ``task.json`` the archive does not hold (BIG-bench generates some programmatically,
such as ``boolean_expressions``, ``multistep_arithmetic`` and ``web_of_lies``) is reported as
missing, not invented.

Prompts are few-shot from the task's own examples: the first ``SHOTS`` examples become worked
``Q:``/``A:`` pairs, the following ones are evaluated. Multiple-choice tasks list their options
as ``(A) ...`` and are answered with the letter; scoring is exact match of the answer's first
line (letter or option text for multiple choice).
"""

from __future__ import annotations

import hashlib
import html
import json
import re
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from .base import Sample
from .registry import TaskGroup, TaskOptions, register_family

SHOTS = 3
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


def prepare(root: Path | None = None) -> Path:
    """Make sure the BBH ``task.json`` files are extracted under ``root`` (fetch once)."""
    root = root or data_root()
    if (root / ".complete").is_file():
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
    """Copy the BBH tasks' ``task.json`` files out of a bigbench sdist."""
    wanted = {f"benchmark_tasks/{folder}/task.json" for folder in TASKS.values()}
    root.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        for member in tar:
            tail = member.name.split("/bigbench/", 1)[-1]
            if tail in wanted:
                target = root / tail.split("benchmark_tasks/", 1)[1]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(tar.extractfile(member).read())
    (root / ".complete").write_text(BIGBENCH_VERSION)


def _format(example: dict, task_prefix: str) -> tuple[str, str, list[str]]:
    """(question, answer, accepted answers) for one BIG-bench example."""
    question = example["input"]
    if "target" not in example and len(example.get("target_scores", {})) > len(LETTERS):
        example = {**example, "target": max(example["target_scores"], key=example["target_scores"].get)}
    if "target" not in example:
        options = list(example["target_scores"])
        right = max(options, key=lambda o: example["target_scores"][o])
        listed = "\n".join(f"({LETTERS[i]}) {o}" for i, o in enumerate(options))
        letter = f"({LETTERS[options.index(right)]})"
        return f"{task_prefix}{question}\nOptions:\n{listed}", letter, [letter, right]
    target = example["target"]
    targets = target if isinstance(target, list) else [target]
    return f"{task_prefix}{question}", str(targets[0]), [str(t) for t in targets]


def load(task: str, root: Path, limit: int | None = None) -> list[Sample]:
    """Few-shot samples of one BBH task from ``root/<bigbench folder>/task.json``."""
    if task not in TASKS:
        raise ValueError(f"unknown BBH task {task!r}; available: {', '.join(TASKS)}")
    path = Path(root) / TASKS[task] / "task.json"
    if not path.is_file():
        raise FileNotFoundError(f"BBH task {task}: {TASKS[task]}/task.json is not in the bigbench data")
    try:
        data = json.loads(path.read_text())
        prefix = data.get("task_prefix", "")
        prefix = prefix.strip() + "\n\n" if prefix.strip() else ""
        formatted = [_format(e, prefix) for e in data["examples"]]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path} is not a BIG-bench task file ({err})") from err
    shots = "".join(f"Q: {q}\nA: {a}\n\n" for q, a, _ in formatted[:SHOTS])
    samples = []
    for i, (question, _, accepted) in enumerate(formatted[SHOTS:]):
        if limit is not None and i >= limit:
            break
        prompt = f"{shots}Q: {question}\nA:"
        samples.append(Sample(f"bbh-{task}-{i}", prompt, accepted, 32, {"chat": False}, question_at=len(shots)))
    return samples


def score(prediction: str, sample: Sample) -> float:
    """Exact match of the answer's first line with the target (letter or option text)."""
    answer = prediction.strip().split("\n")[0].strip().rstrip(".")
    return float(any(answer == a or answer.lower() == a.lower() for a in sample.answers))


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
