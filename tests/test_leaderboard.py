"""The leaderboard table: means over tasks per ratio with intervals, paired differences against
the best other method and the full cache, ties marked; ``restkv report --leaderboard`` writes it."""

from pathlib import Path

import pytest

from restkv.cli import main
from restkv.eval.leaderboard import leaderboard_markdown, scores_by_config
from restkv.eval.store import ResultStore


def row(task: str, sample: str, method: str, score: float) -> dict:
    return {
        "task": task, "sample_id": sample, "model": "m", "method": method, "budget": None, "params": {},
        "prediction": "x", "score": score, "kl": 0.0, "top1": 1.0, "kept_entries": 10, "prompt_tokens": 100,
    }  # fmt: skip


def rows() -> list[dict]:
    out = []
    for task in ("a", "b"):
        for i in range(4):
            sample = f"{task}{i}"
            out.append(row(task, sample, "full", 1.0))
            out.append(row(task, sample, "good(compression_ratio=0.5)", 1.0 if task == "a" else float(i % 2)))
            out.append(row(task, sample, "same(compression_ratio=0.5)", 1.0 if task == "a" else float(i % 2)))
            out.append(row(task, sample, "bad(compression_ratio=0.5)", 0.0))
    return out


def test_configs_split_method_and_ratio():
    configs = scores_by_config(rows())
    assert set(configs) == {("full", None), ("good", 0.5), ("same", 0.5), ("bad", 0.5)}
    assert configs[("bad", 0.5)]["a"] == {f"a{i}": 0.0 for i in range(4)}


def test_table_has_means_over_tasks_ties_and_losses():
    table = leaderboard_markdown(rows())
    lines = {line.split(" | ")[0].strip("| "): line for line in table.splitlines()[2:]}
    assert "| full | - | 100.0 [100.0, 100.0] | 8 |" in lines["full"]
    assert "| 75.0 [" in lines["good"]  # task a 100, task b 50: equal weight per task
    assert "tie vs same" in lines["good"]  # identical scores: a paired difference of exactly 0
    assert "-75.0 [" in lines["bad"] and "tie" not in lines["bad"].split(" | ")[4]
    assert leaderboard_markdown(rows()) == table  # seeded: the same intervals every time


def test_empty_store_is_one_sentence():
    with pytest.raises(ValueError, match="no scored rows"):
        leaderboard_markdown([])


def test_report_writes_the_leaderboard(tmp_path: Path, capsys):
    with ResultStore(tmp_path / "results.sqlite", writer=True) as store:
        store.add(rows())
    assert main(["report", str(tmp_path), "--leaderboard"]) == 0
    text = (tmp_path / "leaderboard.md").read_text()
    assert text == leaderboard_markdown(rows())


def test_a_method_with_fewer_prompts_is_listed_last_and_never_the_best_other():
    partial = [row("a", "a0", "lucky(compression_ratio=0.5)", 1.0), row("b", "b0", "lucky(compression_ratio=0.5)", 1.0)]
    table = leaderboard_markdown(rows() + partial)
    lines = [line for line in table.splitlines()[3:] if "| 0.5 |" in line]
    assert [line.split(" | ")[0].strip("| ") for line in lines] == ["good", "same", "bad", "lucky"]
    assert "vs lucky" not in table and "tie vs same" in lines[0]
    assert lines[-1].split(" | ")[3] == "2" and "vs good" in lines[-1]
