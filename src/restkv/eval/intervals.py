"""95% intervals for the numbers a results table reports.

A rate over a few prompts says little without its interval (3 of 3 is 44-100%), and two methods
run on the same prompts are compared on their paired differences, which is much tighter than
comparing two separate intervals. Everything here is plain Python and seeded, so a report
renders the same intervals every time it is rebuilt from the same store.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


@dataclass(frozen=True)
class Interval:
    """A point estimate with its 95% interval and the number of prompts behind it."""

    value: float
    low: float
    high: float
    n: int

    def contains(self, x: float) -> bool:
        """Whether ``x`` lies inside the interval (its ends included)."""
        return self.low <= x <= self.high


def wilson(successes: int, n: int) -> Interval:
    """Wilson score interval for ``successes`` out of ``n``, as fractions."""
    if n <= 0:
        raise ValueError(f"a rate needs at least one trial, got n={n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be between 0 and n={n}, got {successes}")
    p = successes / n
    z2 = Z95 * Z95
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    # the ends are exact at 0 and n (the formula gives them up to rounding)
    low = 0.0 if successes == 0 else centre - half
    high = 1.0 if successes == n else centre + half
    return Interval(p, low, high, n)


def _percentiles(samples: list[float]) -> tuple[float, float]:
    samples = sorted(samples)
    last = len(samples) - 1
    return samples[round(0.025 * last)], samples[round(0.975 * last)]


def _strata(values: Sequence[float] | Mapping[str, Sequence[float]]) -> dict[str, list[float]]:
    strata = {"": list(values)} if not isinstance(values, Mapping) else {k: list(v) for k, v in values.items()}
    empty = [k for k, v in strata.items() if not v]
    if empty or not strata:
        raise ValueError(f"every stratum needs at least one value, empty: {empty or 'all'}")
    return strata


def _mean_of_means(strata: dict[str, list[float]]) -> float:
    return sum(sum(v) / len(v) for v in strata.values()) / len(strata)


def bootstrap_mean(
    values: Sequence[float] | Mapping[str, Sequence[float]], *, resamples: int = 2000, seed: int = 0
) -> Interval:
    """Percentile bootstrap 95% interval of a mean over prompts.

    ``values``: one score per prompt, or, for a mean over tasks, ``{task: scores}``; then the
    estimate is the mean of the task means (each task weighs the same, as RULER's average does)
    and prompts are resampled within their own task (a stratified bootstrap).
    """
    strata = _strata(values)
    rng = random.Random(seed)
    draws = []
    for _ in range(resamples):
        resampled = {k: [v[rng.randrange(len(v))] for _ in v] for k, v in strata.items()}
        draws.append(_mean_of_means(resampled))
    low, high = _percentiles(draws)
    return Interval(_mean_of_means(strata), low, high, sum(len(v) for v in strata.values()))


@dataclass(frozen=True)
class PairedDifference:
    """``a - b`` over the prompts both methods ran, with how many prompts only one of them had."""

    difference: Interval
    unpaired: int

    @property
    def tie(self) -> bool:
        """The interval contains 0: the data do not separate the two methods."""
        return self.difference.contains(0.0)


def paired_difference(
    a: Mapping[str, Mapping[str, float]] | Mapping[str, float],
    b: Mapping[str, Mapping[str, float]] | Mapping[str, float],
    *,
    resamples: int = 2000,
    seed: int = 0,
) -> PairedDifference:
    """Bootstrap 95% interval of the mean of ``a - b`` on the same prompts.

    ``a`` and ``b``: ``{prompt_id: score}``, or ``{task: {prompt_id: score}}`` for a mean over
    tasks (stratified as in :func:`bootstrap_mean`). Prompts only one side has are dropped and
    counted in ``unpaired``; a task with no shared prompt is dropped with its prompts.
    """
    nested = any(isinstance(v, Mapping) for v in a.values()) or any(isinstance(v, Mapping) for v in b.values())
    a_tasks = a if nested else {"": a}
    b_tasks = b if nested else {"": b}
    differences, unpaired = {}, 0
    for task in sorted(set(a_tasks) | set(b_tasks)):  # sorted: the same draws in every process
        left, right = a_tasks.get(task, {}), b_tasks.get(task, {})
        shared = sorted(set(left) & set(right))
        unpaired += len(set(left) ^ set(right))
        if shared:
            differences[task] = [left[p] - right[p] for p in shared]
    if not differences:
        raise ValueError("the two methods share no prompt: nothing to pair")
    return PairedDifference(bootstrap_mean(differences, resamples=resamples, seed=seed), unpaired)
