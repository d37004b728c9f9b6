"""benchmarks/compare_stores.py: equal stores compare equal; a changed prediction, a KL past the
tolerance and a missing row are each reported, and the script exits 1."""

import importlib.util
import sqlite3
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "compare_stores.py"
spec = importlib.util.spec_from_file_location("compare_stores", SCRIPT)
compare_stores = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare_stores)


def write(folder: Path, rows: list[tuple]) -> Path:
    folder.mkdir()
    db = sqlite3.connect(folder / "results.sqlite")
    db.execute(
        "CREATE TABLE results (task, sample_id, model, method, budget, prediction, score, kl, top1, kept_entries, prompt_tokens)"
    )
    db.executemany("INSERT INTO results VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)
    db.commit()
    db.close()
    return folder


ROWS = [
    ("t", "s0", "m", "full", -1, " 42", 1.0, 0.0, 1.0, 100, 100),
    ("t", "s0", "m", "restkv", 64, " 41", 0.0, 0.25, 0.5, 64, 100),
]


def test_equal_stores_have_no_differences(tmp_path):
    a, b = write(tmp_path / "a", ROWS), write(tmp_path / "b", ROWS)
    assert compare_stores.differences(compare_stores.rows(a), compare_stores.rows(b), 1e-6) == []
    done = subprocess.run([sys.executable, str(SCRIPT), str(a), str(b)], capture_output=True, text=True)
    assert done.returncode == 0 and "0 differences" in done.stdout


def test_changed_prediction_kl_and_missing_rows_are_reported(tmp_path):
    changed = [ROWS[0][:5] + (" 43",) + ROWS[0][6:], ROWS[1][:7] + (0.25 + 1e-5,) + ROWS[1][8:]]
    a, b = (
        write(tmp_path / "a", ROWS),
        write(tmp_path / "b", changed + [("t", "s1", "m", "full", -1, "", 0, 0, 1, 1, 1)]),
    )
    found = compare_stores.differences(compare_stores.rows(a), compare_stores.rows(b), 1e-6)
    assert any("prediction" in f for f in found) and any(": kl" in f for f in found)
    assert any(f.startswith("only in the second") for f in found) and len(found) == 3
    assert compare_stores.differences(compare_stores.rows(a), compare_stores.rows(b), 1e-3) != found  # KL within 1e-3
    done = subprocess.run([sys.executable, str(SCRIPT), str(a), str(b)], capture_output=True, text=True)
    assert done.returncode == 1
