"""The one greedy loop and its stop rule, on fake step functions (no model)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from restkv.decoding import StopRule, greedy

VOCAB = 10


def onehot(tokens) -> torch.Tensor:
    """Logits ``[rows, VOCAB]`` whose argmax is ``tokens``."""
    logits = torch.zeros(len(tokens), VOCAB)
    logits[torch.arange(len(tokens)), torch.tensor(tokens)] = 1.0
    return logits


class Script:
    """A step function that makes row ``r`` write ``plans[r]`` in order: after feeding a row's
    k-th token it returns logits choosing the row's (k+1)-th. Records every call."""

    def __init__(self, plans, can_drop=True):
        self.plans = plans
        self.rows = list(range(len(plans)))  # original row of each batch row
        self.fed = [0] * len(plans)
        self.calls: list[list[int]] = []
        self.dropped: list[list[int]] = []
        self.can_drop = can_drop

    def first(self) -> torch.Tensor:
        return onehot([plan[0] for plan in self.plans])

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        assert tokens.shape == (len(self.rows), 1)
        self.calls.append(tokens[:, 0].tolist())
        nxt = []
        for i, r in enumerate(self.rows):
            assert int(tokens[i, 0]) == self.plans[r][self.fed[r]], "fed a token the row did not choose"
            self.fed[r] += 1
            nxt.append(self.plans[r][min(self.fed[r], len(self.plans[r]) - 1)])
        return onehot(nxt)

    def drop_rows(self, keep: list[int]) -> bool:
        if not self.can_drop:
            return False
        self.dropped.append([self.rows[i] for i in keep])
        self.rows = [self.rows[i] for i in keep]
        return True


def test_stops_at_an_end_token_and_keeps_it():
    step = Script([[4, 5, 2, 7, 7]])
    done = greedy(step, step.first(), StopRule(10, {2}))
    assert done.tokens == [[4, 5, 2]] and done.stopped == ["eos"]
    assert done.steps == 2 and len(step.calls) == 2  # the end token is never fed


def test_stops_at_the_limit():
    step = Script([[4, 5, 6, 7, 8, 9]])
    done = greedy(step, step.first(), StopRule(3, {2}))
    assert done.tokens == [[4, 5, 6]] and done.stopped == ["limit"] and done.steps == 2


class Contains:
    """An answer stop that is complete once the text holds ``needle``."""

    def __init__(self, needle):
        self.needle = needle

    def complete(self, text):
        return self.needle in text


def numbers(ids):
    return "".join(f" {t}" for t in ids)


def test_stops_when_the_answer_is_complete():
    step = Script([[4, 5, 6, 7, 8]])
    done = greedy(step, step.first(), StopRule(10, {2}, Contains(" 5 6"), numbers))
    assert done.tokens == [[4, 5, 6]] and done.stopped == ["answer"]


def test_an_end_token_wins_over_a_complete_answer():
    step = Script([[5, 2]])
    done = greedy(step, step.first(), StopRule(10, {2}, Contains(" 2"), numbers))
    assert done.stopped == ["eos"]


def test_max_new_tokens_of_one_feeds_nothing():
    step = Script([[4, 5, 6]])
    done = greedy(step, step.first(), StopRule(1))
    assert done.tokens == [[4]] and done.stopped == ["limit"] and step.calls == [] and done.steps == 0


def test_the_step_is_never_called_after_every_row_stopped():
    step = Script([[1, 2, 9, 9], [3, 3, 2, 9]])
    done = greedy(step, step.first(), StopRule(8, {2}), drop_rows=step.drop_rows)
    assert done.tokens == [[1, 2], [3, 3, 2]] and done.stopped == ["eos", "eos"]
    assert len(step.calls) == 2 == done.steps


def test_finished_rows_leave_the_batch_and_keep_their_results():
    plans = [[1, 2, 9, 9, 9, 9], [3, 4, 5, 6, 7, 8], [6, 6, 6, 2, 9, 9]]
    step = Script(plans)
    done = greedy(step, step.first(), StopRule(5, {2}), drop_rows=step.drop_rows)
    assert done.tokens == [[1, 2], [3, 4, 5, 6, 7], [6, 6, 6, 2]]
    assert done.stopped == ["eos", "limit", "eos"]
    assert step.dropped == [[1, 2], [1]]  # original rows kept after each drop
    assert step.calls == [[1, 3, 6], [4, 6], [5, 6], [6]]


def test_rows_that_cannot_leave_are_fed_but_their_tokens_ignored():
    plans = [[1, 2, 9, 9, 9], [3, 4, 5, 6, 7]]
    dropping, kept = Script(plans), Script(plans, can_drop=False)
    a = greedy(dropping, dropping.first(), StopRule(4, {2}), drop_rows=dropping.drop_rows, keep_logits=True)
    b = greedy(kept, kept.first(), StopRule(4, {2}), drop_rows=kept.drop_rows, keep_logits=True)
    assert a.tokens == b.tokens == [[1, 2], [3, 4, 5, 6]] and a.stopped == b.stopped
    assert [len(c) for c in kept.calls] == [2, 2, 2]  # the finished row still fed
    assert torch.equal(a.logits, b.logits)  # and its kept logits still its last ones


def test_kept_logits_have_one_entry_per_step_and_finished_rows_keep_their_last():
    plans = [[1, 2, 9, 9, 9], [3, 4, 5, 6, 7]]
    step = Script(plans)
    first = step.first()
    done = greedy(step, first, StopRule(4, {2}), drop_rows=step.drop_rows, keep_logits=True)
    assert done.logits.shape == (done.steps + 1, 2, VOCAB) == (4, 2, VOCAB)
    assert torch.equal(done.logits[0], first)
    # row 0 stopped at the logits of step 1 (which chose its end token): they stay its logits
    assert all(int(done.logits[s, 0].argmax()) == 2 for s in (1, 2, 3))
    assert [int(done.logits[s, 1].argmax()) for s in range(4)] == [3, 4, 5, 6]
    assert greedy(Script(plans), first, StopRule(4, {2})).logits is None


def test_kept_logits_keep_the_first_logits_dtype():
    step = Script([[1, 2, 3]])
    done = greedy(step, step.first().double(), StopRule(3), keep_logits=True)
    assert done.logits.dtype == torch.float64 and done.logits.shape == (3, 1, VOCAB)


def test_prefixes_lead_the_tokens_and_count_towards_the_limit():
    # the step side already holds each row's prefix; the loop goes on from the first logits
    step = Script([[5, 6, 7, 8, 9], [7, 2, 9, 9, 9]])
    done = greedy(step, step.first(), StopRule(4, {2}), prefixes=[[1, 1], [3]], drop_rows=step.drop_rows)
    assert done.tokens == [[1, 1, 5, 6], [3, 7, 2]] and done.stopped == ["limit", "eos"]


def test_prefixes_count_towards_the_answer():
    step = Script([[6, 7, 8]])
    done = greedy(step, step.first(), StopRule(10, (), Contains(" 4 6"), numbers), prefixes=[[4]])
    assert done.tokens == [[4, 6]] and done.stopped == ["answer"] and step.calls == []


def test_one_prefix_per_row():
    step = Script([[1], [2]])
    with pytest.raises(ValueError, match="one per row"):
        greedy(step, step.first(), StopRule(3), prefixes=[[1]])


def test_timing_counts_step_calls_and_can_start_earlier():
    import time

    step = Script([[1, 3, 4, 5]])
    earlier = time.perf_counter() - 1.0  # as if building the step had taken a second
    done = greedy(step, step.first(), StopRule(4), started=earlier)
    assert done.steps == 3 and done.ms_per_step >= 1000 / 3
    quick = Script([[1]])
    assert greedy(quick, quick.first(), StopRule(1), started=earlier).ms_per_step >= 1000  # no step: over 1


def test_first_stop_is_where_the_loop_would_stop():
    rule = StopRule(5, {2}, Contains(" 8 9"), numbers)
    assert rule.first_stop([1, 8, 9, 2]) == (2, "answer")
    assert rule.first_stop([1, 2, 8]) == (1, "eos")
    assert rule.first_stop([1, 3, 4, 5, 6, 7]) == (4, "limit")
    assert rule.first_stop([1, 3]) is None
    assert rule.reason([1, 3]) is None and rule.reason([1, 2]) == "eos"


def test_stop_rule_refusals():
    with pytest.raises(ValueError, match="text reader"):
        StopRule(4, (), Contains("x"))
    with pytest.raises(ValueError, match="max_new_tokens"):
        StopRule(-1)
    with pytest.raises(ValueError, match="max_new_tokens"):
        StopRule(2.0)


@pytest.mark.parametrize("relative", ["decoding.py", "eval/metrics.py"])
def test_the_loop_and_metrics_import_only_torch_and_the_standard_library(relative):
    # the kvpress peer (benchmarks/peers/run_kvpress.py) loads these files by path inside
    # kvpress's own environment, where restkv and its transformers are not installed
    import sys

    path = Path(__file__).resolve().parents[1] / "src" / "restkv" / relative
    tree = ast.parse(path.read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "a relative import"
            roots.add(node.module.split(".")[0])
    assert roots - {"torch", "__future__"} <= set(sys.stdlib_module_names)
