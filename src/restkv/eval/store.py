"""The results store: one SQLite row per sample x method x budget, written atomically.

All the rows of one sample go in one transaction, so a run killed at any moment (SIGKILL
included) loses at most the sample in flight, and re-running the same command skips every
finished row. The database runs in write-ahead-log mode, so a reader (``restkv report``) never
sees a half-written sample.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

from ..version import __version__

COLUMNS = {
    "task": "TEXT NOT NULL",
    "sample_id": "TEXT NOT NULL",
    "model": "TEXT NOT NULL",
    "method": "TEXT NOT NULL",  # the method's label (name, allocator, non-default params)
    "budget": "INTEGER NOT NULL",  # -1 for the full cache
    "params": "TEXT NOT NULL",  # JSON: every method parameter
    "setting": "TEXT",  # hash of everything else that changes the numbers (see restkv.eval.runner.setting_of)
    "prediction": "TEXT",
    "score": "REAL",
    "prompt_tokens": "INTEGER",
    "kept_entries": "INTEGER",
    "kv_bytes": "INTEGER",
    "prefill_s": "REAL",
    "compress_s": "REAL",
    "decode_ms_per_token": "REAL",
    "kl": "REAL",
    "top1": "REAL",
    "extra": "TEXT",  # JSON: task-specific fields (depth, length, ...)
    "code_version": "TEXT",
    "created": "TEXT DEFAULT CURRENT_TIMESTAMP",
}
KEY = ("task", "sample_id", "model", "method", "budget")


class StoreError(ValueError):
    """A results database that cannot be opened or read."""


def _lock(path: Path):
    """An exclusive lock on ``<database>.lock``, holding this process's id; one sentence if taken."""
    try:
        import fcntl
    except ImportError:  # no advisory locks on this platform: single-writer by convention
        return None
    handle = open(path.with_name(path.name + ".lock"), "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise StoreError(
            f"another restkv run (pid {holder}) is writing to {path.parent}; wait for it to finish or pick another --out"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def _columns(db: sqlite3.Connection) -> set[str]:
    """The columns of ``db``'s ``results`` table (none when it has no such table)."""
    return {row[1] for row in db.execute("PRAGMA table_info(results)")}


def _check_ours(path: Path) -> None:
    """Raise ``sqlite3.DatabaseError`` unless the file at ``path`` is absent, empty, or a SQLite
    database that restkv may write to: one with no tables yet, or with a ``results`` table of
    restkv's columns (an older one may lack ``setting``). The file is opened read-only, so
    another program's database is refused exactly as it was found."""
    if not path.exists() or path.stat().st_size == 0:
        return
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    try:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        tables = {name for name in tables if not name.startswith("sqlite_")}  # SQLite's own bookkeeping
        if not tables:  # a new database: restkv's to fill
            return
        if "results" not in tables:
            raise sqlite3.DatabaseError("it holds other tables and no results table")
        present = _columns(db)
        missing = [c for c in COLUMNS if c not in present and c != "setting"]
        if missing:  # another program's table of the same name
            raise sqlite3.DatabaseError(f"its results table has no {', '.join(missing)} column")
    finally:
        db.close()


class ResultStore:
    """Append-only results of evaluations and benchmarks, keyed by task, sample, model, method and budget."""

    def __init__(self, path: str | Path, writer: bool = False):
        """Open (or create) the database at ``path``. A ``writer`` holds the folder's lock for
        as long as the store is open, so a second run on the same ``--out`` stops with one
        sentence instead of racing the first for the same rows (readers never wait)."""
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreError(
                f"cannot write results to {self.path.parent} ({err.strerror or err}); pick another --out"
            ) from err
        if not os.access(self.path.parent, os.W_OK):  # SQLite writes lock files beside the database, even to read
            raise StoreError(
                f"{self.path.parent} is not writable, and SQLite needs to write beside {self.path.name} even to "
                "read it; copy the folder somewhere writable or pick another --out"
            )
        self.lock = _lock(self.path) if writer else None
        try:
            _check_ours(self.path)  # read-only: another program's database is refused before anything is written
            self.db = sqlite3.connect(self.path, timeout=30)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            columns = ", ".join(f"{name} {kind}" for name, kind in COLUMNS.items())
            self.db.execute(f"CREATE TABLE IF NOT EXISTS results ({columns}, PRIMARY KEY ({', '.join(KEY)}))")
            if "setting" not in _columns(self.db):  # a database from before settings were recorded: its rows match none
                self.db.execute("ALTER TABLE results ADD COLUMN setting TEXT")
            self.db.commit()
        except sqlite3.DatabaseError as err:
            self._unlock()
            raise StoreError(
                f"{self.path} is not a readable restkv results database ({err}); move it aside or pick another --out"
            ) from err

    def close(self) -> None:
        """Close the database and release the writer's lock on ``--out``."""
        self.db.close()
        self._unlock()

    def _unlock(self) -> None:
        if self.lock is not None:
            self.lock.close()  # closing the file releases the lock (the kernel does it for a killed process too)
            self.lock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def has(
        self, task: str, sample_id: str, model: str, method: str, budget: int | None, setting: str | None = None
    ) -> bool:
        """Whether the row is there (with ``setting``, only when it was computed with that setting)."""
        query = "SELECT 1 FROM results WHERE task=? AND sample_id=? AND model=? AND method=? AND budget=?"
        values = (task, sample_id, model, method, -1 if budget is None else budget)
        if setting is not None:
            query, values = query + " AND setting IS ?", (*values, setting)
        return self.db.execute(query, values).fetchone() is not None

    def modes(self, task: str) -> set[str]:
        """The evaluation modes of ``task``'s rows: ``query-aware`` (rows that name none) and/or
        ``query-agnostic``."""
        found = self.db.execute("SELECT DISTINCT json_extract(extra, '$.mode') FROM results WHERE task=?", (task,))
        return {mode or "query-aware" for (mode,) in found}

    def add(self, rows: list[dict]) -> None:
        """Insert ``rows`` in one transaction (all or nothing). A row of the same key computed
        with another ``setting`` is stale and replaced; one with the same setting is an error."""
        names = list(COLUMNS)[:-1]
        values = []
        for row in rows:
            unknown = set(row) - set(names)
            if unknown:
                raise ValueError(f"unknown result fields: {', '.join(sorted(unknown))}")
            record = {**row, "code_version": __version__}
            record["budget"] = -1 if record.get("budget") is None else record["budget"]
            for key in ("params", "extra"):
                record[key] = json.dumps(record.get(key) or {}, sort_keys=True, default=str)
            values.append(tuple(record.get(name) for name in names))
        marks = ", ".join("?" for _ in names)
        stale = [(*(r[names.index(k)] for k in KEY), r[names.index("setting")]) for r in values]
        try:
            with self.db:  # one transaction
                where = " AND ".join(f"{k}=?" for k in KEY)
                self.db.executemany(f"DELETE FROM results WHERE {where} AND setting IS NOT ?", stale)
                self.db.executemany(f"INSERT INTO results ({', '.join(names)}) VALUES ({marks})", values)
        except sqlite3.IntegrityError:
            raise  # the same row twice: a bug in the caller, not the database
        except sqlite3.DatabaseError as err:
            raise StoreError(f"cannot write to {self.path}: {err}; move it aside or pick another --out") from err

    def rows(self, **where) -> list[dict]:
        """The rows whose columns equal ``where`` (all rows without it), in insertion order, with
        ``params`` and ``extra`` decoded from JSON and a missing budget as None."""
        clause = " AND ".join(f"{k}=?" for k in where) or "1=1"
        try:
            cursor = self.db.execute(f"SELECT * FROM results WHERE {clause} ORDER BY rowid", tuple(where.values()))
        except sqlite3.DatabaseError as err:
            raise StoreError(f"cannot read {self.path}: {err}") from err
        names = [d[0] for d in cursor.description]
        out = []
        for values in cursor.fetchall():
            row = dict(zip(names, values))
            row["params"] = json.loads(row["params"])
            row["extra"] = json.loads(row["extra"]) if row["extra"] else {}
            row["budget"] = None if row["budget"] == -1 else row["budget"]
            out.append(row)
        return out

    def count(self) -> int:
        """The number of rows in the store."""
        return self.db.execute("SELECT COUNT(*) FROM results").fetchone()[0]
