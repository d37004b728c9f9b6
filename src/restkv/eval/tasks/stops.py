"""When a task's answer is complete, so decoding can stop before the token limit.

RULER caps the tokens it generates per task; a row still decodes to that cap unless it meets an
end token, and small or compressed models rarely write one. A task may declare a rule under
which its answer is *complete*: the engine then stops that row as soon as the text decoded so
far satisfies it (:class:`AnswerStop`), for every configuration, the full cache included.

A rule must never change a row's score, only shorten its prediction. The rules here hold that
for metrics that are monotone under extension and saturate: ``string_match_all`` (the share of
the expected answers found, case-insensitive) cannot fall once every answer is found, and
``string_match_part`` (1 if any is found) cannot fall once one is. So:

* ``all_answers``: every expected answer is in the text (the pass key; our NIAH) -- the score
  is then 1 whatever follows;
* ``any_answer``: one of them is (RULER's QA) -- the score is then 1 whatever follows.

These two stop only rows that answer right. Rows that answer wrong decode to the cap, and in
a sweep most compressed rows do: on the 4,180 recorded rows of ``benchmarks/results/ruler-1k``
they would skip 3% of the decoded tokens. So RULER's list-shaped tasks (NIAH, VT, CWE, FWE)
use a third rule, on the answer's shape:

* ``answer_lines``: ``all_answers``, or the text holds :data:`LINE_MARGIN` more complete lines
  (ended by a newline, holding a letter or a digit) than there are expected answers. RULER's
  answers are lists, one item per line when the model breaks lines at all
  (``":\\n\\n1. 9630891\\n2. 9630891\\n..."``); once it has written every item and two more,
  it is repeating or rambling.

Unlike the first two, ``answer_lines`` is not a proof, it is a measurement:
``benchmarks/studies/stop_rules.py`` replays every recorded RULER, NIAH and pass-key prediction
(12,335 rows of SmolLM2 and Gemma 3, handwritten and RULER's own generators, 1K and 4K) token
by token; with a margin of 2 no score changes and 13% of the tokens are skipped (a margin of 1
changes 4 scores, of 0 changes 59, and stopping at the first complete line changes 1,627: most
right answers start with the line ``":"``).
Tasks with other metrics (BBH's exact match of the extracted answer, LongBench's F1 and ROUGE,
InfiniteBench's first number) declare no rule: a longer text can change their score.

The rule reads the expected answers, which a deployed system would not know: it is an
evaluation shortcut that skips tokens whose text cannot change the result, not a decoding
strategy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


def _all_found(text: str, answers: tuple[str, ...]) -> bool:
    return bool(answers) and all(a in text for a in answers)


def _any_found(text: str, answers: tuple[str, ...]) -> bool:
    return any(a in text for a in answers)


#: complete lines beyond one per expected answer after which a list answer is finished
LINE_MARGIN = 2


def complete_lines(text: str) -> int:
    """Lines of ``text`` ended by a newline that hold a letter or a digit (``":"`` does not)."""
    return sum(any(c.isalnum() for c in line) for line in text.split("\n")[:-1])


def _lines_done(text: str, answers: tuple[str, ...]) -> bool:
    return _all_found(text, answers) or complete_lines(text) >= len(answers) + LINE_MARGIN


#: rule name -> test on the lower-cased text and the lower-cased answers
RULES: dict[str, Callable[[str, tuple[str, ...]], bool]] = {
    "all_answers": _all_found,
    "any_answer": _any_found,
    "answer_lines": _lines_done,
}


@dataclass(frozen=True)
class AnswerStop:
    """A row's answer is complete once ``rule`` holds on its text (see the module's doc).

    Plain values only, so a job carrying it can be shipped to another process.
    """

    rule: str
    answers: tuple[str, ...]

    def __post_init__(self):
        if self.rule not in RULES:
            raise ValueError(f"unknown answer-stop rule {self.rule!r}; known: {', '.join(RULES)}")

    @classmethod
    def of(cls, sample) -> AnswerStop | None:
        """The stop of a :class:`~restkv.eval.tasks.base.Sample` (None when its task declares none)."""
        if sample.stop is None:
            return None
        return cls(sample.stop, tuple(str(a).lower() for a in sample.answers))

    def complete(self, text: str) -> bool:
        """Whether ``text`` (the prediction so far, as it will be scored) holds a complete answer."""
        return RULES[self.rule](text.lower(), self.answers)


def prediction_reader(tokenizer, stop_ids) -> Callable[[list[int]], str]:
    """The text a row's token ids are scored as: end tokens dropped, special tokens skipped.

    The runner scores predictions through this reader and the engine checks answer stops through
    it, so a stop is decided on exactly the text that is scored.
    """
    stop_ids = set(stop_ids)

    def read(token_ids) -> str:
        return tokenizer.decode([t for t in token_ids if t not in stop_ids], skip_special_tokens=True)

    return read
