"""Tasks as small declarative units: samples, how to prompt, how to score."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Sample:
    """One prompt and what counts as a right answer.

    ``prompt`` is the user's text for chat models, or the whole completion prompt otherwise.
    """

    id: str
    prompt: str
    answers: list[str]
    max_new_tokens: int = 16
    meta: dict = field(default_factory=dict)


def fit_to_length(build, length: int, count_tokens, limit: int = 100_000):
    """The smallest ``build(k)`` (k filler units) whose token count reaches ``length``.

    ``build(k)`` returns a prompt string, ``count_tokens(prompt)`` its length in the model's own
    tokens; searched by doubling then bisection so long prompts cost few tokenizations.
    """
    low, high = 0, 1
    while count_tokens(build(high)) < length:
        low, high = high, high * 2
        if high > limit:
            raise ValueError(f"cannot reach {length} tokens with at most {limit} filler units")
    while high - low > 1:
        mid = (low + high) // 2
        if count_tokens(build(mid)) < length:
            low = mid
        else:
            high = mid
    return build(high)


def contains_all(prediction: str, answers: list[str]) -> float:
    """Share of ``answers`` found in ``prediction`` (case-insensitive): RULER's string-match-all."""
    if not answers:
        return 0.0
    text = prediction.lower()
    return sum(a.lower() in text for a in answers) / len(answers)
