"""Two results stores side by side: the same rows, the same predictions, KL within a tolerance.

Made to check that a sweep run one way (on Ray, batched, after a refactor) writes what it writes
run another way; ``restkv compare-stores FIRST SECOND`` prints :func:`compare_stores`'s lines.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .store import KEY, ResultStore

#: the fields of a row that must be equal (``kl`` within the tolerance)
FIELDS = ("prediction", "score", "kl", "top1", "kept_entries", "prompt_tokens")


def store_rows(path: str | Path) -> dict[tuple, dict]:
    """Every row of a results database, by its key (task, sample, model, method, budget).

    ``path`` is a run folder (its ``results.sqlite``) or a database file itself (as the stores
    kept under ``benchmarks/results/`` are, under other names)."""
    path = Path(path)
    database = path / "results.sqlite" if path.is_dir() else path
    if not database.is_file():
        raise ValueError(f"{path} is neither a results database nor a run folder holding one (results.sqlite)")
    with ResultStore(database) as store:
        return {tuple(row[k] for k in KEY): row for row in store.rows()}


def _order(key: tuple) -> tuple:
    """A row key sortable as it is stored (the full cache's budget None as -1)."""
    return (*key[:-1], -1 if key[-1] is None else key[-1])


def differences(first: dict[tuple, dict], second: dict[tuple, dict], kl_tol: float = 1e-6) -> list[str]:
    """One line per row found in one store only and per field of a shared row that differs
    (``kl`` only when both are set and further apart than ``kl_tol``)."""
    if not kl_tol >= 0:
        raise ValueError(f"the KL tolerance must be a number of at least 0, got {kl_tol!r}")
    found = [f"only in the first: {k}" for k in sorted(first.keys() - second.keys(), key=_order)]
    found += [f"only in the second: {k}" for k in sorted(second.keys() - first.keys(), key=_order)]
    for key in sorted(first.keys() & second.keys(), key=_order):
        for field in FIELDS:
            x, y = first[key][field], second[key][field]
            if field == "kl" and x is not None and y is not None:
                if abs(x - y) > kl_tol:
                    found.append(f"{key}: kl {x!r} vs {y!r}")
            elif x != y:
                found.append(f"{key}: {field} {x!r} vs {y!r}")
    return found


@dataclass
class StoreComparison:
    """What :func:`compare_stores` found."""

    first_rows: int
    second_rows: int
    shared_rows: int
    differences: list[str]
    largest_kl_difference: float

    @property
    def equal(self) -> bool:
        return not self.differences

    def summary(self) -> str:
        return (
            f"{self.first_rows} and {self.second_rows} rows; {self.shared_rows} shared; "
            f"{len(self.differences)} differences; largest KL difference {self.largest_kl_difference:.3g}"
        )


def compare_stores(first: str | Path, second: str | Path, kl_tol: float = 1e-6) -> StoreComparison:
    """Compare two results stores (run folders or database files, see :func:`store_rows`) row by row."""
    a, b = store_rows(first), store_rows(second)
    shared = a.keys() & b.keys()
    kls = [abs(a[k]["kl"] - b[k]["kl"]) for k in shared if a[k]["kl"] is not None and b[k]["kl"] is not None]
    return StoreComparison(len(a), len(b), len(shared), differences(a, b, kl_tol), max(kls, default=0.0))
