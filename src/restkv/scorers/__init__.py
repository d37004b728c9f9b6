"""Scorers: one small file per method, one registry.

>>> from restkv.scorers import get_scorer
>>> scorer = get_scorer("restkv", window_size=32)
>>> # idx = scorer.select(queries, keys, values, budget=128, o_proj=W)
"""

from __future__ import annotations

import dataclasses

from .adakv import AdaKVScorer
from .base import Scorer, top_positions
from .cam import CaMScorer
from .expected_attention import ExpectedAttentionScorer
from .full import FullScorer
from .h2o import H2OScorer
from .keydiff import KeyDiffScorer
from .knorm import KnormScorer
from .lacache import LaCacheScorer
from .lagkv import LagKVScorer
from .pyramidkv import PyramidKVScorer
from .random import RandomScorer
from .restkv import RestKVScorer
from .snapkv import SnapKVScorer
from .streaming import StreamingLLMScorer
from .tova import TOVAScorer

SCORERS: dict[str, type[Scorer]] = {
    cls.name: cls
    for cls in (
        RestKVScorer,
        FullScorer,
        AdaKVScorer,
        CaMScorer,
        LaCacheScorer,
        SnapKVScorer,
        PyramidKVScorer,
        H2OScorer,
        TOVAScorer,
        StreamingLLMScorer,
        KnormScorer,
        KeyDiffScorer,
        ExpectedAttentionScorer,
        LagKVScorer,
        RandomScorer,
    )
}


def available() -> list[str]:
    """Names of every registered scorer."""
    return sorted(SCORERS)


def defaults(name: str) -> dict:
    """A scorer's parameters and their default values."""
    cls = scorer_class(name)
    return {f.name: f.default for f in dataclasses.fields(cls)}


def scorer_class(name: str) -> type[Scorer]:
    """The scorer class registered as ``name`` (one sentence listing the names when unknown)."""
    if name not in SCORERS:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(available())}")
    return SCORERS[name]


def get_scorer(name: str, **params) -> Scorer:
    """Build the scorer registered as ``name`` with ``params`` (unknown parameters are an error)."""
    cls = scorer_class(name)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(f"{name} has no parameter {', '.join(unknown)}; its parameters are {', '.join(sorted(known))}")
    return cls(**params)


__all__ = ["Scorer", "SCORERS", "available", "defaults", "get_scorer", "scorer_class", "top_positions"]
