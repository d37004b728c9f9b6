"""``restkv leaderboard``: its argument checks, its resumable round-robin run, and the table and plot it writes."""

import json
from types import SimpleNamespace

import pytest

from restkv.cli import main
from restkv.eval import protocol
from restkv.eval.store import ResultStore
from restkv.eval.tasks.base import Sample
from restkv.eval.tasks.registry import TaskGroup
from tiny_models import TinyLoaded


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--methods", "full,kvzip"], "kvzip's reconstruction passes"),
        (["--methods", "restkv[window_size=auto]"], "cannot run query-agnostic: window_size=\"auto\""),
        (["--methods", "full,keydiff", "--query-aware"], "--query-aware needs a window method"),
        (["--methods", "nosuch"], "unknown method 'nosuch'"),
        (["--methods", "restkv[preset=fast]"], "unknown preset 'fast'"),
    ],
)
def test_bad_settings_are_one_sentence_and_exit_2_before_a_model_loads(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("restkv.cli.leaderboard.load_from_args", lambda args: pytest.fail("loaded a model"))
    assert main(["leaderboard", "--out", str(tmp_path / "run"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_an_out_that_is_a_file_and_bad_ratios_are_refused(tmp_path, capsys):
    file = tmp_path / "f"
    file.write_text("")
    assert main(["leaderboard", "--out", str(file)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["leaderboard", "--out", str(tmp_path / "r"), "--ratios", "0.5,1.5"])
    assert exit_.value.code == 2


def test_configs_run_every_method_at_every_ratio_and_full_once():
    configs = protocol.configs_for(["full", "snapkv", "restkv[preset=agnostic]"], (0.5, 0.75))
    assert [c.label for c in configs] == [
        "full",
        "snapkv(compression_ratio=0.5)",
        "snapkv(compression_ratio=0.75)",
        "restkv(compression_ratio=0.5,preset=agnostic)",
        "restkv(compression_ratio=0.75,preset=agnostic)",
    ]


def test_window_methods_are_the_ones_that_read_the_prompts_last_queries():
    chosen = protocol.window_methods(list(protocol.AGNOSTIC_METHODS) + ["kvzip"])
    assert chosen == ["full", "restkv", "snapkv", "tova"]


def test_round_robin_takes_every_tasks_first_prompt_before_any_second():
    groups = [TaskGroup("a", [1, 2, 3], None), TaskGroup("b", [4], None), TaskGroup("c", [5, 6], None)]
    assert [(g.name, s) for g, s in protocol.round_robin(groups)] == [
        ("a", 1), ("b", 4), ("c", 5), ("a", 2), ("c", 6), ("a", 3)
    ]  # fmt: skip


def tiny_groups(count: int):
    """Two tasks of ``count`` short prompts, each marking where its question starts."""
    groups = []
    for task in ("ruler/t1", "ruler/t2"):
        samples = []
        for i in range(count):
            context = f"{task} record {i}: " + "the code is 42; " * 6
            sample = Sample(f"{task}-{i}", context + "What is the code?", ["42"], 3, {}, "Answer:")
            sample.question_at = len(context)
            samples.append(sample)
        groups.append(TaskGroup(task, samples, lambda prediction, sample: float("42" in prediction)))
    return groups


@pytest.fixture
def tiny_protocol(monkeypatch):
    """The command on a tiny random model and two tiny tasks (RULER's generators are not run)."""
    loaded = TinyLoaded()
    asked = []

    def groups(_loaded, options):
        asked.append(options)
        return tiny_groups(options.samples)

    monkeypatch.setattr("restkv.cli.leaderboard.load_from_args", lambda args: loaded)
    monkeypatch.setattr("restkv.eval.tasks.get_family", lambda name: SimpleNamespace(groups=groups))
    return asked


METHODS = ["--methods", "full,snapkv[window_size=8],streamingllm,restkv[preset=agnostic;window_size=8]"]


def test_a_run_fills_both_stores_round_robin_and_writes_the_table_and_plots(tiny_protocol, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["leaderboard", "--out", str(out), "--samples", "2", "--ratios", "0.5,0.75", "--query-aware", *METHODS]
    assert main(argv) == 0
    assert tiny_protocol[0].samples == protocol.POOL  # the pool is generated, then cut to --samples
    with ResultStore(out / "query-agnostic" / "results.sqlite") as store:
        agnostic = store.rows()
    with ResultStore(out / "query-aware" / "results.sqlite") as store:
        aware = store.rows()
    assert len(agnostic) == 2 * 2 * (1 + 3 * 2)  # tasks x prompts x (full + methods x ratios)
    assert len(aware) == 2 * 2 * (1 + 1 * 2)  # the window method is snapkv alone (the preset probes)
    assert {r["extra"].get("mode") for r in agnostic} == {"query-agnostic"}
    table = (out / "leaderboard.md").read_text()
    assert "## query-agnostic" in table and "## query-aware" in table and "2-2 prompts per task" in table
    assert protocol.SINGLE_PROMPT not in table
    assert "| restkv(preset=agnostic,window_size=8) | 0.75 |" in table and "vs full" in table
    for mode in protocol.MODES:
        assert (out / f"{mode}.png").stat().st_size > 1000
        log = [json.loads(line) for line in (out / mode / "runs.jsonl").read_text().splitlines()]
        assert log[0]["prompts_run"] == 4 and log[0]["wall_s"] > 0 and "load_start" in log[0]
    printed = capsys.readouterr().out  # the command prints the table it wrote, then its path
    assert table in printed and printed.rstrip().endswith(str(out / "leaderboard.md"))
    # a rerun finds every row and runs nothing
    assert main(argv) == 0
    assert "0 prompts x 7 configurations left" in capsys.readouterr().err


def test_a_stopped_run_continues_where_it_stopped(tiny_protocol, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    argv = ["leaderboard", "--out", str(out), "--samples", "2", "--ratios", "0.5", *METHODS]
    real, calls = protocol.run_sweep, []

    def stopping(loaded, task, samples, *args, **kwargs):
        if len(calls) == 3:
            raise KeyboardInterrupt  # as Ctrl-C during the fourth prompt
        calls.append((task, samples[0].id))
        return real(loaded, task, samples, *args, **kwargs)

    monkeypatch.setattr(protocol, "run_sweep", stopping)
    assert main(argv) == 130
    assert calls == [("ruler/t1", "ruler/t1-0"), ("ruler/t2", "ruler/t2-0"), ("ruler/t1", "ruler/t1-1")]
    stopped = (out / "leaderboard.md").read_text()
    assert "1-2 prompts per task" in stopped and protocol.SINGLE_PROMPT in stopped  # the table of what finished
    calls.clear()
    monkeypatch.setattr(protocol, "run_sweep", real)
    monkeypatch.setattr(protocol, "run_sweep", lambda *a, **k: calls.append(a[2][0].id) or real(*a, **k))
    assert main(argv) == 0
    assert calls == ["ruler/t2-1"]  # only the prompt not finished before
    assert "1 prompts x 4 configurations left; about" in capsys.readouterr().err  # estimated from the first run
    with ResultStore(out / "query-agnostic" / "results.sqlite") as store:
        assert len(store.rows()) == 2 * 2 * 4
