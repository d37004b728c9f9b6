"""restkv.eval.compare and ``restkv compare-stores``: equal stores compare equal; a changed
prediction, a KL past the tolerance and a missing row are each reported (exit 1); bad input is
one sentence and exit 2."""

from pathlib import Path

import pytest

from restkv.cli import main
from restkv.eval.compare import compare_stores, differences, store_rows
from restkv.eval.store import ResultStore


def row(method: str, budget, prediction: str, kl: float, sample: str = "s0") -> dict:
    return {
        "task": "t", "sample_id": sample, "model": "m", "method": method, "budget": budget, "params": {},
        "prediction": prediction, "score": float(prediction == " 42"), "kl": kl, "top1": 0.5,
        "kept_entries": budget or 100, "prompt_tokens": 100,
    }  # fmt: skip


def write(folder: Path, rows: list[dict]) -> Path:
    with ResultStore(folder / "results.sqlite", writer=True) as store:
        store.add(rows)
    return folder


ROWS = [row("full", None, " 42", 0.0), row("restkv", 64, " 41", 0.25)]


def test_equal_stores_have_no_differences(tmp_path, capsys):
    a, b = write(tmp_path / "a", ROWS), write(tmp_path / "b", ROWS)
    assert differences(store_rows(a), store_rows(b), 1e-6) == []
    comparison = compare_stores(a, b)
    assert comparison.equal and (comparison.first_rows, comparison.shared_rows) == (2, 2)
    assert main(["compare-stores", str(a), str(b)]) == 0
    assert "2 and 2 rows; 2 shared; 0 differences" in capsys.readouterr().out
    renamed = a / "results.sqlite"  # a database file under its own name, as benchmarks/results/ keeps them
    assert compare_stores(renamed.rename(tmp_path / "local.sqlite"), b).equal


def test_changed_prediction_kl_and_missing_rows_are_reported(tmp_path, capsys):
    changed = [row("full", None, " 43", 0.0), row("restkv", 64, " 41", 0.25 + 1e-5), row("full", None, "", 0.0, "s1")]
    a, b = write(tmp_path / "a", ROWS), write(tmp_path / "b", changed)
    found = differences(store_rows(a), store_rows(b), 1e-6)
    assert any("prediction ' 42' vs ' 43'" in f for f in found) and any(": kl" in f for f in found)
    assert any("score" in f for f in found)  # the changed prediction scores 0 instead of 1
    assert [f for f in found if f.startswith("only in the second")] == ["only in the second: ('t', 's1', 'm', 'full', None)"]
    assert len(found) == 4
    assert not any(": kl" in f for f in differences(store_rows(a), store_rows(b), 1e-3))  # KL within 1e-3
    comparison = compare_stores(a, b)
    assert not comparison.equal and comparison.largest_kl_difference == pytest.approx(1e-5)
    assert main(["compare-stores", str(a), str(b)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[:-1] == found and out[-1].startswith("2 and 3 rows; 2 shared; 4 differences")


def test_a_folder_without_a_store_is_one_sentence_and_exit_2(tmp_path, capsys):
    a = write(tmp_path / "a", ROWS)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="is neither a results database nor a run folder"):
        store_rows(tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("not a database")
    with pytest.raises(ValueError, match="not a readable restkv results database"):
        store_rows(tmp_path / "notes.txt")
    assert main(["compare-stores", str(a), str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("restkv: error: ") and "is neither a results database nor a run folder" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "empty" / "results.sqlite").exists(), "comparing creates no store"
    with pytest.raises(SystemExit) as exit_:
        main(["compare-stores", str(a), str(a), "--kl-tol", "-1"])
    assert exit_.value.code == 2
    with pytest.raises(ValueError, match="at least 0"):
        differences({}, {}, -1.0)
