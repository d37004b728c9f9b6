"""Optional features and the extra that installs each: one sentence when a package is missing.

``pip install restkv`` gives what the main job needs (the press, the evaluation engine, the
embedded models' conversion); everything else is an extra. A feature imports its packages
through :func:`require`, so a missing one is reported the same way everywhere: what needs it and
the command that installs it.
"""

from __future__ import annotations

import importlib

#: extra -> the modules it provides (the import names, not the PyPI names)
EXTRAS = {
    "plots": ("matplotlib",),
    "serve": ("fastapi", "uvicorn", "openai"),
    "lm-eval": ("lm_eval",),
    "ray": ("ray",),
    "ruler": ("wonderwords", "tenacity", "nltk", "scipy", "yaml"),
    "quantization": ("optimum.quanto", "hqq"),
}


class MissingExtra(ValueError):
    """A package of an optional feature is not installed; the message names the extra."""


def install_hint(extra: str) -> str:
    return f"pip install 'restkv[{extra}]'"


def require(extra: str, feature: str, modules: tuple[str, ...] | None = None) -> None:
    """Import ``modules`` (default: all of ``extra``'s), or raise :class:`MissingExtra` saying
    that ``feature`` needs them and how to install them."""
    if extra not in EXTRAS:
        raise KeyError(f"no extra named {extra!r}")
    for module in modules or EXTRAS[extra]:
        try:
            importlib.import_module(module)
        except ImportError as err:
            name = err.name or module
            raise MissingExtra(f"{feature} needs {name}, which is not installed: {install_hint(extra)}") from None


def available(extra: str) -> bool:
    """Whether every module of ``extra`` imports."""
    try:
        require(extra, extra)
    except MissingExtra:
        return False
    return True
