"""Robustness, round three (issue 35), finding 14: another program's SQLite database is refused
exactly as it was found; restkv's own stores, old and new, still open."""

import sqlite3

import pytest

from restkv.eval.store import ResultStore, StoreError


def foreign(path, *statements: str) -> bytes:
    """A SQLite database made by "another program" at ``path`` (rollback journal, SQLite's
    default); its bytes."""
    db = sqlite3.connect(path)
    for statement in statements:
        db.execute(statement)
    db.commit()
    db.close()
    return path.read_bytes()


def journal_mode(path) -> str:
    db = sqlite3.connect(path)
    try:
        return db.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        db.close()


def assert_untouched(path, before: bytes) -> None:
    """The file is byte for byte as it was, and SQLite left nothing beside it."""
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir() if p.name.startswith(path.name)) == [path.name]


@pytest.mark.parametrize("writer", [False, True])
def test_a_foreign_results_table_is_refused_and_its_database_left_as_found(tmp_path, writer):
    """Finding 14: the refusal came after the database had been switched to write-ahead logging."""
    path = tmp_path / "results.sqlite"
    before = foreign(path, "CREATE TABLE results (a TEXT)", "INSERT INTO results VALUES ('theirs')")
    refusal = r"results\.sqlite is not a readable restkv results database \(its results table has no task, sample_id, "
    with pytest.raises(StoreError, match=refusal):
        ResultStore(path, writer=writer)
    if writer:
        (tmp_path / "results.sqlite.lock").unlink()  # restkv's own lock file, not SQLite's
    assert_untouched(path, before)
    assert journal_mode(path) == "delete"


def test_a_foreign_database_without_a_results_table_is_refused_not_given_one(tmp_path):
    """Finding 14: a database with other tables and no `results` got restkv's table added to it."""
    path = tmp_path / "results.sqlite"
    before = foreign(path, "CREATE TABLE accounts (id INTEGER PRIMARY KEY, name TEXT)",
                     "INSERT INTO accounts (name) VALUES ('theirs')")  # fmt: skip
    with pytest.raises(
        StoreError, match=r"not a readable restkv results database \(it holds other tables and no results"
    ):
        ResultStore(path)
    assert_untouched(path, before)
    assert journal_mode(path) == "delete"
    tables = sqlite3.connect(path).execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()
    assert tables == [("accounts",)]


def test_new_empty_and_existing_restkv_stores_still_open(tmp_path):
    """Finding 14's read-only check refuses only what is not restkv's."""
    row = {"task": "t", "sample_id": "s", "model": "m", "method": "full", "budget": None, "params": {}}
    odd = tmp_path / "a folder with spaces, % and #" / "results.sqlite"  # a path the read-only URI must quote
    with ResultStore(odd, writer=True) as store:  # a new path
        store.add([row])
    with ResultStore(odd, writer=True) as store:  # restkv's own store, reopened
        assert store.count() == 1
    assert journal_mode(odd) == "wal"
    empty = tmp_path / "empty" / "results.sqlite"
    empty.parent.mkdir()
    empty.touch()  # an empty file is an empty database
    with ResultStore(empty) as store:
        store.add([row])
        assert store.count() == 1
    bare = tmp_path / "bare" / "results.sqlite"
    bare.parent.mkdir()
    foreign(bare, "PRAGMA user_version = 1")  # a SQLite database with no tables yet
    with ResultStore(bare) as store:
        assert store.count() == 0


def test_a_store_from_before_settings_still_opens_and_gains_the_column(tmp_path):
    """Finding 14: the older schema, lacking only `setting`, is restkv's and is upgraded in place."""
    path = tmp_path / "results.sqlite"
    foreign(
        path,
        "CREATE TABLE results (task TEXT, sample_id TEXT, model TEXT, method TEXT, budget INTEGER, params TEXT, "
        "prediction TEXT, score REAL, prompt_tokens INTEGER, kept_entries INTEGER, kv_bytes INTEGER, "
        "prefill_s REAL, compress_s REAL, decode_ms_per_token REAL, kl REAL, top1 REAL, extra TEXT, "
        "code_version TEXT, created TEXT, PRIMARY KEY (task, sample_id, model, method, budget))",
        "INSERT INTO results (task, sample_id, model, method, budget, params) VALUES ('t', 's', 'm', 'full', -1, '{}')",
    )
    with ResultStore(path) as store:
        assert store.count() == 1 and store.rows()[0]["setting"] is None
    columns = [row[1] for row in sqlite3.connect(path).execute("PRAGMA table_info(results)")]
    assert "setting" in columns and journal_mode(path) == "wal"
