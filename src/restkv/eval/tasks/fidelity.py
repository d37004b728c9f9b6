"""Fidelity: how far a compressed cache moves the model's next-token distributions.

On a long natural-language text, the first ``length`` tokens are the prompt (prefilled and
compressed) and the next ``continuation`` tokens are fed to the model (teacher forcing). For
every continuation token we compare the compressed model's next-token distribution with the
full cache's: KL divergence, top-1 agreement, and the perplexity of the continuation under
both. This measures quality even where a small model cannot solve a task.

The text is the English documentation of the Python standard library (docstrings of a fixed
list of modules, read from the running interpreter, so nothing is downloaded; the PSF License's
text); results record the Python version, as the text can differ between versions.
"""

from __future__ import annotations

import importlib
import inspect
import platform

from .base import Sample
from .registry import TaskGroup, TaskOptions, register_family

MODULES = (
    "argparse", "asyncio", "collections", "concurrent.futures", "configparser", "contextlib", "csv",
    "dataclasses", "datetime", "decimal", "difflib", "email", "enum", "fractions", "functools", "heapq",
    "http.client", "http.server", "inspect", "io", "ipaddress", "itertools", "json", "logging", "mailbox",
    "multiprocessing", "os", "pathlib", "pickle", "pprint", "queue", "random", "re", "sched", "selectors",
    "shutil", "smtplib", "socket", "sqlite3", "statistics", "string", "subprocess", "tarfile", "tempfile",
    "textwrap", "threading", "tkinter", "turtle", "typing", "unittest", "urllib.request", "uuid", "wave",
    "xml.dom.minidom", "zipfile",
)  # fmt: skip


def corpus() -> str:
    """The documentation text, deterministic for a given Python version."""
    parts = []
    for name in MODULES:
        try:
            module = importlib.import_module(name)
        except Exception:  # e.g. tkinter missing: skip it, the text stays long enough
            continue
        docs = [inspect.getdoc(module) or ""]
        for attr in sorted(vars(module)):
            obj = getattr(module, attr)
            if not attr.startswith("_") and getattr(obj, "__module__", None) == module.__name__:
                docs.append(inspect.getdoc(obj) or "")
        parts.append("\n\n".join(d for d in docs if len(d) > 80))
    return "\n\n".join(parts)


def fidelity_samples(tokenizer, count: int, length: int, continuation: int = 64, seed: int = 0) -> list[Sample]:
    """``count`` windows of ``length + continuation`` tokens taken at evenly spread offsets."""
    ids = tokenizer(corpus(), add_special_tokens=False)["input_ids"]
    span = length + continuation
    if len(ids) < span:
        raise ValueError(f"the fidelity text has {len(ids)} tokens, fewer than {span}; ask for a shorter --length")
    room = len(ids) - span
    out = []
    for i in range(count):
        offset = (room * (i + seed * 7919)) // max(count, 1) % (room + 1)
        window = ids[offset : offset + span]
        out.append(
            Sample(
                f"fidelity-{length}-{continuation}-{seed}-{i}",
                "",
                [],
                0,
                {"length": length, "offset": offset, "python": platform.python_version(),
                 "prompt_ids": window[:length], "continuation_ids": window[length:]},
            )
        )  # fmt: skip
    return out


@register_family("fidelity", mode="teacher_forced")
def task_groups(loaded, options: TaskOptions) -> list[TaskGroup]:
    """One group; no score function, as teacher forcing scores by top-1 agreement."""
    samples = fidelity_samples(loaded.tokenizer, options.samples, options.length, options.continuation, options.seed)
    return [TaskGroup(f"fidelity/{options.length}", samples, None)]
