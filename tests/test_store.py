"""The results store: atomic per sample, resumable, never a duplicate or half-written row."""

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from restkv.eval.report import render_report
from restkv.eval.runner import run_sweep
from restkv.eval.store import ResultStore, StoreError
from restkv.eval.tasks.base import Sample
from restkv.specs import MethodConfig
from tiny_models import TinyLoaded

CONFIGS = [
    MethodConfig.make("full"),
    MethodConfig.make("restkv", 24, window_size=8),
    MethodConfig.make("tova", 24, window_size=8),
]


def samples(count):
    return [Sample(f"s{i}", "x" * 60 + f" sample {i} " + "y" * 40, [f"{i}"], 4) for i in range(count)]


def test_sweep_writes_one_row_per_sample_and_config_and_resumes(tmp_path):
    loaded = TinyLoaded()
    with ResultStore(tmp_path / "results.sqlite") as store:
        first = run_sweep(
            loaded, "toy", samples(3), CONFIGS, store, lambda p, s: float(s.answers[0] in p), progress=False
        )
        assert first["samples_run"] == 3 and store.count() == 9
        again = run_sweep(loaded, "toy", samples(4), CONFIGS, store, lambda p, s: 0.0, progress=False)
        assert again["samples_run"] == 1 and again["samples_skipped"] == 3 and store.count() == 12
        rows = store.rows(method="restkv(window_size=8)")
        assert len(rows) == 4 and rows[0]["params"]["alpha"] == 0.3 and rows[0]["params"]["budget"] == 24
        assert rows[0]["kept_entries"] == 24 * 2 * 3 and rows[0]["code_version"]
        full = store.rows(method="full")[0]
        assert full["budget"] is None and full["kl"] == 0.0


def test_adding_an_existing_row_fails_whole(tmp_path):
    with ResultStore(tmp_path / "r.sqlite") as store:
        row = {"task": "t", "sample_id": "a", "model": "m", "method": "x", "budget": 1, "params": {}}
        store.add([row])
        with pytest.raises(sqlite3.IntegrityError):
            store.add([{**row, "sample_id": "b"}, row])  # the new row must not land either
        assert store.count() == 1


def test_corrupt_database_is_a_clear_error(tmp_path):
    path = tmp_path / "results.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a readable restkv results database"):
        ResultStore(path)


SCRIPT = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {tests!r})
    from tiny_models import TinyLoaded
    from restkv.specs import MethodConfig
    from restkv.eval.runner import run_sweep
    from restkv.eval.store import ResultStore
    from restkv.eval.tasks.base import Sample

    configs = [MethodConfig.make("full"), MethodConfig.make("restkv", 24, window_size=8), MethodConfig.make("snapkv", 24, window_size=8)]
    samples = [Sample(f"s{{i}}", "x" * 60 + f" sample {{i}} " + "y" * 40, ["1"], 4) for i in range(12)]

    def slow_score(prediction, sample):
        time.sleep(0.3)  # slow enough to be killed mid-sample
        return 0.0

    with ResultStore({db!r}) as store:
        run_sweep(TinyLoaded(), "toy", samples, configs, store, slow_score, progress=False)
    print("finished")
    """
)


def test_sigkill_mid_run_loses_at_most_the_sample_in_flight(tmp_path):
    db = tmp_path / "results.sqlite"
    script = tmp_path / "run.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parent), db=str(db)))
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline:
        time.sleep(0.2)
        if db.exists():
            try:
                done = sqlite3.connect(db).execute("SELECT COUNT(*) FROM results").fetchone()[0]
            except sqlite3.OperationalError:
                continue
            if done >= 6:
                break
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    with ResultStore(db) as store:
        killed_at = store.count()
        assert 6 <= killed_at < 36 and killed_at % 3 == 0, "only whole samples are stored"
    finished = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert "finished" in finished.stdout, finished.stderr[-2000:]
    connection = sqlite3.connect(db)
    assert connection.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 36
    keys = connection.execute("SELECT COUNT(DISTINCT task || sample_id || method || budget) FROM results").fetchone()[0]
    assert keys == 36
    per_sample = connection.execute("SELECT sample_id, COUNT(*) FROM results GROUP BY sample_id").fetchall()
    assert len(per_sample) == 12 and {n for _, n in per_sample} == {3}


def test_report_renders_tables_and_plots(tmp_path):
    loaded = TinyLoaded()
    with ResultStore(tmp_path / "results.sqlite") as store:
        built = samples(2)
        built[0].meta["generator"] = "nvidia-long-context-eval 26.3"  # as RULER's samples carry it
        run_sweep(loaded, "toy", built, CONFIGS, store, lambda p, s: 1.0, progress=False)
    report = render_report(tmp_path)
    text = report.read_text()
    assert "Prompts built by: nvidia-long-context-eval 26.3." in text
    assert text.index("| full (no eviction) |") < text.index("| restkv(window_size=8) |")
    assert "**100.0**" in text  # best per budget column is marked
    assert (tmp_path / "toy.png").stat().st_size > 1000


def test_report_averages_task_families():
    from restkv.eval.report import family_means

    agg = [
        {"task": f"ruler/{t}", "model": "m", "method": "x", "budget": 8, "n": 2, "score": s, "kl": 0.1, "top1": 1.0,
         "prompt_tokens": 10, "kept_entries": 5, "kv_mib": 1.0, "prefill_s": 0.1, "compress_s": 0.0, "decode_ms_per_token": 1.0}
        for t, s in (("a", 20.0), ("b", 40.0))
    ]  # fmt: skip
    means = family_means(agg)
    assert len(means) == 1 and means[0]["task"] == "ruler (mean of 2 tasks)" and means[0]["score"] == 30.0
    assert family_means(agg[:1]) == []


def test_plot_files_have_plain_names():
    from restkv.eval.report import file_stem

    assert file_stem("ruler/niah_single_1") == "ruler_niah_single_1"
    assert file_stem("ruler (mean of 11 tasks)") == "ruler_mean_of_11_tasks"


def test_niah_report_has_a_grid_per_method_and_a_heatmap(tmp_path):
    from restkv.eval.report import niah_cells, niah_grid_table

    def row(method, budget, length, depth, score, i):
        return {"task": "niah", "sample_id": f"{length}-{depth}-{i}", "model": "m", "method": method, "budget": budget,
                "params": {}, "prediction": "", "score": score, "prompt_tokens": length, "kept_entries": 1, "kv_bytes": 1,
                "prefill_s": 0.1, "compress_s": 0.0, "decode_ms_per_token": None, "kl": 0.0, "top1": 1.0,
                "extra": {"length": length, "depth": depth}}  # fmt: skip

    rows = [row("full", None, n, d, 1.0, i) for n in (64, 128) for d in (0.0, 1.0) for i in range(2)]
    rows += [
        row("snapkv", 8, n, d, float(d == 1.0 and i == 0), i) for n in (64, 128) for d in (0.0, 1.0) for i in range(2)
    ]
    cells = niah_cells(rows)
    assert list(cells) == [("full", None), ("snapkv", 8)]
    assert cells[("snapkv", 8)] == {(64, 0.0): 0.0, (64, 1.0): 50.0, (128, 0.0): 0.0, (128, 1.0): 50.0}
    assert "| 128 | 0 | 50 |" in niah_grid_table(cells[("snapkv", 8)])
    with ResultStore(tmp_path / "results.sqlite") as store:
        store.add(rows)
    text = render_report(tmp_path).read_text()
    assert "## Needle-in-a-Haystack grid" in text and "**snapkv @ 8**" in text
    assert (tmp_path / "niah_heatmap.png").stat().st_size > 1000


def test_fresh_discards_only_what_restkv_wrote(tmp_path):
    from restkv.eval.report import discard_results

    for name in ("results.sqlite", "results.sqlite-wal", "runs.jsonl", "passkey.png", "notes.txt", "mine.png"):
        (tmp_path / name).write_text("x")
    (tmp_path / "data").mkdir()
    (tmp_path / "report.md").write_text("# r\n\n![passkey](passkey.png)\n\nsee ![elsewhere](../mine.png)\n")
    removed = discard_results(tmp_path)
    assert sorted(p.name for p in removed) == [
        "passkey.png",
        "report.md",
        "results.sqlite",
        "results.sqlite-wal",
        "runs.jsonl",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "mine.png", "notes.txt"]
    assert discard_results(tmp_path / "absent") == []


def test_demo_fresh_keeps_the_folder_when_the_model_fails_to_load(tmp_path):
    from restkv.demo import run_demo
    from restkv.models import ModelLoadError

    (tmp_path / "results.sqlite").write_text("earlier results")
    with pytest.raises(ModelLoadError):
        run_demo(model=str(tmp_path / "no-such-model"), out=tmp_path, fresh=True)
    assert (tmp_path / "results.sqlite").read_text() == "earlier results"


def test_rows_of_another_setting_are_recomputed_not_reused(tmp_path):
    """dtype, the prompt (task options such as a truncation length) and a profile's values are part of a row."""
    import json

    import torch

    loaded = TinyLoaded()
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps({"params": {"alpha": 0.3}}))
    configs = [MethodConfig.make("full"), MethodConfig.make("restkv", 24, window_size=8, profile=str(profile))]
    score = lambda p, s: 0.0  # noqa: E731
    with ResultStore(tmp_path / "results.sqlite") as store:
        assert run_sweep(loaded, "toy", samples(2), configs, store, score, progress=False)["samples_run"] == 2
        assert run_sweep(loaded, "toy", samples(2), configs, store, score, progress=False)["samples_skipped"] == 2
        profile.write_text(json.dumps({"params": {"alpha": 0.9}}))  # same path, other values
        again = run_sweep(loaded, "toy", samples(2), configs, store, score, progress=False)
        assert again["samples_run"] == 2 and store.count() == 4  # the stale rows are replaced, not doubled
        assert {r["params"]["alpha"] for r in store.rows(method=configs[1].label)} == {0.9}
        longer = [Sample(s.id, s.prompt + " more", s.answers, 4) for s in samples(2)]  # e.g. another --length
        assert run_sweep(loaded, "toy", longer, configs, store, score, progress=False)["samples_run"] == 2
        loaded.model.to(torch.bfloat16)
        assert run_sweep(loaded, "toy", longer, configs, store, score, progress=False)["samples_run"] == 2
        assert store.count() == 4


def test_a_database_from_before_settings_is_read_and_its_rows_recomputed(tmp_path):
    path = tmp_path / "results.sqlite"
    old = sqlite3.connect(path)
    old.execute(
        "CREATE TABLE results (task TEXT, sample_id TEXT, model TEXT, method TEXT, budget INTEGER, params TEXT, "
        "prediction TEXT, score REAL, prompt_tokens INTEGER, kept_entries INTEGER, kv_bytes INTEGER, "
        "prefill_s REAL, compress_s REAL, decode_ms_per_token REAL, kl REAL, top1 REAL, extra TEXT, "
        "code_version TEXT, created TEXT, PRIMARY KEY (task, sample_id, model, method, budget))"
    )
    old.execute(
        "INSERT INTO results (task, sample_id, model, method, budget, params) VALUES ('toy', 's0', 'tiny-llama', 'full', -1, '{}')"
    )
    old.commit()
    old.close()
    with ResultStore(path) as store:
        assert store.count() == 1 and store.has("toy", "s0", "tiny-llama", "full", None)
        counters = run_sweep(TinyLoaded(), "toy", samples(1), CONFIGS[:1], store, lambda p, s: 0.0, progress=False)
        assert counters["samples_run"] == 1 and store.count() == 1 and store.rows()[0]["setting"]


def test_two_runs_on_one_out_one_killed_then_both_resumed_equal_an_uninterrupted_run(tmp_path):
    """Fault injection: the second writer is refused with one sentence, the first is SIGKILLed
    mid-run, both are run again, and the rows are exactly an uninterrupted run's."""
    script = tmp_path / "run.py"
    db = tmp_path / "shared" / "results.sqlite"
    text = SCRIPT.format(tests=str(Path(__file__).parent), db=str(db)).replace(
        "ResultStore(", "ResultStore(writer=True, path="
    )
    script.write_text(text)
    first = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and not (db.exists() and sqlite3.connect(db).execute(
        "SELECT COUNT(*) FROM sqlite_master WHERE name='results'").fetchone()[0]):  # fmt: skip
        time.sleep(0.2)
    second = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert second.returncode != 0 and "finished" not in second.stdout
    assert f"another restkv run (pid {first.pid}) is writing to {db.parent}" in second.stderr
    while time.time() < deadline:
        time.sleep(0.2)
        with ResultStore(db) as reader:  # readers never wait for the writer
            if reader.count() >= 6:
                break
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    for _ in range(2):  # resume both
        resumed = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
        assert "finished" in resumed.stdout, resumed.stderr[-2000:]
    reference = tmp_path / "alone" / "results.sqlite"
    alone = tmp_path / "alone.py"
    alone.write_text(text.replace(repr(str(db)), repr(str(reference))))
    subprocess.run([sys.executable, str(alone)], check=True, capture_output=True, timeout=300)

    def rows(path):
        query = "SELECT task, sample_id, method, budget, prediction, setting FROM results ORDER BY sample_id, method"
        return sqlite3.connect(path).execute(query).fetchall()

    assert len(rows(db)) == 36 and rows(db) == rows(reference)


def test_a_second_writer_is_refused_and_readers_are_not(tmp_path):
    path = tmp_path / "results.sqlite"
    with ResultStore(path, writer=True):
        with ResultStore(path) as reader:
            assert reader.count() == 0
        with pytest.raises(StoreError) as err:
            ResultStore(path, writer=True)
        assert str(err.value) == (
            f"another restkv run (pid {os.getpid()}) is writing to {tmp_path}; wait for it to finish or pick another --out"
        )
    with ResultStore(path, writer=True):  # released on close
        pass


def test_agreement_compares_each_answer_with_the_full_caches_answer_to_the_same_sample():
    from restkv.eval.report import aggregate, agreement_part

    def row(task, method, sample, prediction):
        return {"task": task, "model": "m", "method": method, "budget": None if method == "full" else 8,
                "sample_id": sample, "prediction": prediction, "score": 1.0, "kl": 0.0, "top1": 1.0,
                "prompt_tokens": 10, "kept_entries": 5, "kv_bytes": None, "prefill_s": 0.1, "compress_s": 0.0,
                "decode_ms_per_token": 1.0}  # fmt: skip

    rows = [
        row("bbh/snarks", "full", "s0", " (A)\n\nQ: next"),
        row("bbh/snarks", "full", "s1", "(B)"),
        row("bbh/snarks", "x", "s0", "(A) because it is ironic"),  # BBH's extraction: the same answer
        row("bbh/snarks", "x", "s1", "(A)"),
        row("ruler/vt", "full", "s0", " ABCDE "),
        row("ruler/vt", "x", "s0", "ABCDE and more"),
    ]
    agg = {(a["task"], a["method"]): a for a in aggregate(rows)}
    assert agg[("bbh/snarks", "x")]["agreement"] == 0.5 and agg[("bbh/snarks", "full")]["agreement"] == 1.0
    assert agg[("ruler/vt", "x")]["agreement"] == 0.0
    part = agreement_part(list(agg.values()), "bbh/snarks")
    assert part[0].startswith("Share of samples answered as the full cache") and "| x | **50.0** |" in part[2]
    no_predictions = [{**r, "prediction": None} for r in rows]
    assert agreement_part(aggregate(no_predictions), "bbh/snarks") == []


def test_eval_summary_is_the_macro_mean_over_a_familys_tasks(tmp_path):
    from restkv.eval.report import summary

    loaded = TinyLoaded()
    with ResultStore(tmp_path / "results.sqlite") as store:
        for task, right in (("fam/a", 1.0), ("fam/b", 0.0)):
            run_sweep(loaded, task, samples(2), CONFIGS, store, lambda p, s, right=right: right, progress=False)
        run_sweep(loaded, "other", samples(1), CONFIGS[:1], store, lambda p, s: 1.0, progress=False)
    lines = summary(tmp_path, "fam").splitlines()
    assert lines[0] == "fam (mean of 2 tasks):" and lines[1].startswith("| method | budget | n | score | agreement %")
    assert lines[3].startswith("| full | all | 4 | 50.0 | 100.0 | 0.0000 |")  # other's row is not in fam's mean
    assert [line.split(" | ")[0] for line in lines[4:]] == ["| restkv(window_size=8)", "| tova(window_size=8)"]


def test_a_run_by_compression_ratio_reports_ratio_columns_and_no_budget_plot(tmp_path):
    configs = [MethodConfig.make("full"), MethodConfig.make("restkv", None, compression_ratio=0.5, window_size=8)]
    with ResultStore(tmp_path / "results.sqlite") as store:
        run_sweep(TinyLoaded(), "toy", samples(2), configs, store, lambda p, s: 1.0, progress=False)
    text = render_report(tmp_path).read_text()
    assert "| method | ratio 0.5 |" in text and "| restkv(window_size=8) | **100.0** |" in text
    assert not list(tmp_path.glob("*.png")) and ".png" not in text


def test_format_cell_writes_missing_values_as_a_dash_and_floats_to_the_digits_asked():
    from restkv.eval.report import format_cell

    assert format_cell(None) == "-" and format_cell(float("nan"), 3) == "-"
    assert format_cell(0.12345, 3) == "0.123" and format_cell(2.0) == "2.0" and format_cell(1536.4, 0) == "1536"
    assert format_cell(7) == "7" and format_cell("restkv") == "restkv"  # not floats: as written
