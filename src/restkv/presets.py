"""Named ReST-KV settings a user picks without knowing the knobs (``get_press("restkv", preset=...)``).

A preset is a fixed set of press and scorer parameters; parameters given explicitly next to it
win. ``paper`` is the paper's main setting (the scorer's defaults), kept available by name.
``agnostic`` compresses a context before its question is known: the observation window comes
from a reconstruction probe (:mod:`restkv.probes`), averaged over all the probe's queries
(``temporal="mean"``; the paper's EMA over thousands of probe queries weights only the last
few) and pooled with a fixed 15-wide kernel (these models write a number over several tokens;
adaptive pooling's drift would measure how the probe reads the context in order, not where a
question looks, and costs a top-k over every probe query).
Where each value was chosen, and on which task, is in ``docs/methods.md`` ("Presets").
"""

from __future__ import annotations

#: preset name -> the parameters it sets (press settings and scorer parameters together)
PRESETS: dict[str, dict] = {
    "paper": {},
    "agnostic": {"probe": "reconstruct", "temporal": "mean", "pooling": "avgpool", "kernel_size": 15},
}

#: the methods presets apply to
PRESET_METHODS = ("restkv",)


def preset_params(method: str, preset: str) -> dict:
    """The parameters ``preset`` sets for ``method`` (one sentence when either is not a preset's)."""
    if method not in PRESET_METHODS:
        raise ValueError(f"presets are ReST-KV settings; {method} takes no preset")
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; presets: {', '.join(sorted(PRESETS))}")
    return dict(PRESETS[preset])


def with_preset(method: str, settings: dict) -> dict:
    """``settings`` with its ``preset`` (if any) replaced by the preset's parameters; the
    parameters given explicitly in ``settings`` override the preset's."""
    settings = dict(settings)
    preset = settings.pop("preset", None)
    if preset is None:
        return settings
    return {**preset_params(method, preset), **settings}
