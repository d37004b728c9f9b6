"""The task families ``restkv eval`` knows, each registered by its own module.

Every family turns ``(loaded model, TaskOptions)`` into :class:`TaskGroup` s with one signature,
and says how its samples are run: ``"generate"`` (decode an answer and score it) or
``"teacher_forced"`` (feed a known continuation and compare distributions, as fidelity does).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

MODES = ("generate", "teacher_forced")


@dataclass
class TaskOptions:
    samples: int = 20
    length: int = 1024
    lengths: tuple = ()
    depths: tuple = (0.0, 0.25, 0.5, 0.75, 1.0)
    continuation: int = 64
    seed: int = 0
    data_dir: str | None = None
    subtasks: tuple = ()
    #: filler of needle tasks: "essays" (Paul Graham's essays) or "synthetic" (generated words)
    haystack: str = "essays"


class TaskGroup(NamedTuple):
    """One task's samples and their score function (None when the mode needs none)."""

    name: str
    samples: list
    score: Callable | None


@dataclass(frozen=True)
class TaskFamily:
    name: str
    mode: str
    groups: Callable[..., list[TaskGroup]]  # (loaded, options: TaskOptions) -> groups


#: family name -> family, in registration order (the order ``restkv eval`` lists them)
FAMILIES: dict[str, TaskFamily] = {}


def register_family(name: str, mode: str = "generate"):
    """Decorator: register ``groups(loaded, options)`` as the builder of family ``name``."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")

    def register(groups: Callable[..., list[TaskGroup]]):
        known = FAMILIES.get(name)
        if known is not None and known.groups.__module__ != groups.__module__:  # a reloaded module may re-register
            raise ValueError(f"task family {name!r} is registered twice")
        FAMILIES[name] = TaskFamily(name, mode, groups)
        return groups

    return register


def get_family(name: str) -> TaskFamily:
    """The registered family ``name``, or a one-sentence error listing the others."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; available: {', '.join(FAMILIES)}") from None
