"""Evaluation tasks: each builds seeded samples and scores predictions.

Every task module registers its family (see :mod:`.registry`); :func:`build` turns a family
name and the command's options into ``(task, samples, score)`` groups for the runner.
"""

from __future__ import annotations

from importlib import import_module

from .base import token_counter
from .registry import FAMILIES, TaskFamily, TaskGroup, TaskOptions, get_family, register_family

# importing a module registers its family; this order is the order families are listed in
for _module in (
    "ruler_official",
    "ruler",
    "niah",
    "fidelity",
    "passkey",
    "longbench",
    "infinitebench",
    "bbh",
    "bbh_haystack",
):
    import_module(f".{_module}", __name__)

TASK_FAMILIES = tuple(FAMILIES)

__all__ = [
    "FAMILIES", "TASK_FAMILIES", "TaskFamily", "TaskGroup", "TaskOptions",
    "build", "get_family", "register_family", "token_counter",
]  # fmt: skip


def build(family: str, loaded, options: TaskOptions) -> list[TaskGroup]:
    """``[(task name, samples, score function)]`` for a task family on a loaded model."""
    return get_family(family).groups(loaded, options)
