"""Tuned ReST-KV settings saved as JSON profiles (written by ``restkv tune``, read by presses).

No evaluation code is imported here: loading a profile is part of building a press.
"""

from __future__ import annotations

import json
from pathlib import Path

from .scorers import defaults

#: the knobs a profile sets (and ``restkv tune`` searches)
KNOBS = ("window_size", "alpha", "temporal", "pooling", "kernel_size", "gqa_reduce")


def paper_setting() -> dict:
    """The paper's main setting of every knob: the ReST-KV scorer's own defaults."""
    scorer_defaults = defaults("restkv")
    return {knob: scorer_defaults[knob] for knob in KNOBS}


def load_profile(path: str | Path) -> dict:
    """The tuned parameters of a profile written by :func:`save_profile`."""
    try:
        profile = json.loads(Path(path).read_text())
        params = dict(profile["params"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a restkv tuning profile ({err})") from err
    if profile.get("method", "restkv") != "restkv":
        raise ValueError(f"{path} is a profile for {profile.get('method')!r}, not restkv")
    return params


def save_profile(profile: dict, path: str | Path) -> Path:
    """Write ``profile`` (as :func:`restkv.tune.tune` returns it) to ``path`` as JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(profile, indent=1))
    return path
