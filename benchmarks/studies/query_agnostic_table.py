"""Query-aware against query-agnostic, side by side, from two results stores of the same sweep.

    python benchmarks/studies/query_agnostic_table.py runs/query-agnostic/aware runs/query-agnostic/agnostic

Prints markdown: mean score per task family (the pass key; RULER's tasks averaged), prompt
length, budget and method in each mode, and ReST-KV's lead over the best other compressed
method at each cell, with and without the question.
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict

from restkv.eval.store import ResultStore


def family(task: str) -> str:
    return "ruler (mean of tasks)" if task.startswith(("ruler/", "ruler-handwritten/")) else task


def length_of(sample_id: str) -> int:
    """Sample ids end with ``<length>-<seed>-<index>``."""
    return int(sample_id.split("-")[-3])


def cells(folder: str) -> dict:
    """(family, length, budget, method) -> mean score; RULER's tasks are averaged per task first."""
    by_task = defaultdict(list)
    with ResultStore(f"{folder}/results.sqlite") as store:
        for row in store.rows():
            budget = -1 if row["budget"] is None else row["budget"]
            key = (family(row["task"]), length_of(row["sample_id"]), budget, row["method"], row["task"])
            by_task[key].append(row["score"])
    grouped = defaultdict(list)
    for (fam, length, budget, method, _), scores in by_task.items():
        grouped[(fam, length, budget, method)].append(statistics.mean(scores))
    return {key: statistics.mean(means) for key, means in grouped.items()}


def lead(table: dict, cell: tuple) -> float | None:
    """ReST-KV's score minus the best other compressed method's, in ``cell`` (family, length, budget)."""
    ours = table.get((*cell, "restkv"))
    others = [v for key, v in table.items() if key[:3] == cell and key[3] != "restkv"]
    return None if ours is None or not others else ours - max(others)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("aware")
    parser.add_argument("agnostic")
    args = parser.parse_args()
    aware, agnostic = cells(args.aware), cells(args.agnostic)
    shared = sorted(set(aware) & set(agnostic), key=lambda k: (k[0], k[1], k[2], k[3] != "full", k[3]))
    print("| task | length | budget | method | query-aware | query-agnostic | change |")
    print("|---|---|---|---|---|---|---|")
    for fam, length, budget, method in shared:
        a, g = aware[(fam, length, budget, method)], agnostic[(fam, length, budget, method)]
        shown = "full cache" if budget == -1 else budget
        print(f"| {fam} | {length} | {shown} | {method} | {a:.3f} | {g:.3f} | {g - a:+.3f} |")
    print()
    print("ReST-KV's lead over the best other compressed method in the same cell:")
    print()
    print("| task | length | budget | lead, query-aware | lead, query-agnostic |")
    print("|---|---|---|---|---|")
    for cell in sorted({k[:3] for k in shared if k[2] != -1}):
        a, g = lead(aware, cell), lead(agnostic, cell)
        if a is not None and g is not None:
            print(f"| {' | '.join(map(str, cell))} | {a:+.3f} | {g:+.3f} |")


if __name__ == "__main__":
    main()
