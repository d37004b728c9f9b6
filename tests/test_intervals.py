"""95% intervals: Wilson for rates, bootstrap for means, paired bootstrap for differences."""

import pytest

from restkv.eval.intervals import bootstrap_mean, paired_difference, wilson


def test_wilson_matches_hand_computed_values():
    three = wilson(3, 3)
    assert three.value == 1.0 and three.high == 1.0
    assert three.low == pytest.approx(0.4385, abs=1e-4)  # the 44-100% quoted for 3/3
    half = wilson(5, 10)
    assert (half.low, half.high) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
    assert wilson(0, 6).low == 0.0 and wilson(0, 6).high == pytest.approx(0.3903, abs=1e-4)


@pytest.mark.parametrize("successes,n", [(1, 0), (-1, 3), (4, 3)])
def test_wilson_refuses_impossible_counts(successes, n):
    with pytest.raises(ValueError):
        wilson(successes, n)


def test_bootstrap_of_a_constant_has_zero_width():
    interval = bootstrap_mean([0.5] * 7)
    assert (interval.value, interval.low, interval.high, interval.n) == (0.5, 0.5, 0.5, 7)


def test_bootstrap_contains_the_mean_and_is_reproducible():
    values = [0, 1, 1, 0, 1, 1, 1, 0, 1, 1]
    first, again = bootstrap_mean(values, seed=3), bootstrap_mean(values, seed=3)
    assert first == again
    assert first.low < first.value == 0.7 < first.high
    spread = [0.1 * i + 0.013 * i * i for i in range(12)]  # distinct values: another seed, other draws
    assert bootstrap_mean(spread, seed=1) != bootstrap_mean(spread, seed=2)
    assert bootstrap_mean(spread, seed=1) == bootstrap_mean(spread, seed=1)


def test_stratified_mean_weighs_tasks_equally():
    interval = bootstrap_mean({"a": [1.0, 1.0, 1.0, 1.0], "b": [0.0]})
    assert interval.value == 0.5  # not 0.8, the mean over the five prompts
    assert interval.low == interval.high == 0.5  # each task is constant
    with pytest.raises(ValueError):
        bootstrap_mean({"a": [1.0], "b": []})


def test_paired_difference_of_a_method_with_itself_is_exactly_zero():
    scores = {"t1": {"p1": 1.0, "p2": 0.0}, "t2": {"p3": 0.5}}
    paired = paired_difference(scores, scores)
    assert (paired.difference.value, paired.difference.low, paired.difference.high) == (0.0, 0.0, 0.0)
    assert paired.tie and paired.unpaired == 0


def test_paired_difference_drops_and_counts_unpaired_prompts():
    a = {"p1": 1.0, "p2": 1.0, "p3": 1.0, "only_a": 0.0}
    b = {"p1": 0.0, "p2": 0.0, "p3": 0.0, "only_b": 1.0}
    paired = paired_difference(a, b)
    assert paired.unpaired == 2 and paired.difference.n == 3
    assert paired.difference.value == 1.0 and not paired.tie
    with pytest.raises(ValueError, match="share no prompt"):
        paired_difference({"x": 1.0}, {"y": 1.0})
